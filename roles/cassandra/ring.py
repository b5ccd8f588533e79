"""Ring operations: form, grow, replace, restart, clean up, decommission.

A Cassandra ring changes one node at a time, and only when every other node
is Up/Normal; otherwise the operation is refused with the reason. The
converge calls `converge_ring` after the roles have installed and configured
every node (the deploy never starts Cassandra), over the same connections;
`decommission` is the command an operator runs before removing a node.

`run(host, command, timeout)` runs a shell command as root on a host and
returns (ok, stdout, stderr); the converge and the CLI provide it.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from typing import Callable

from gevent.pool import Pool

from hastack.role import AfterRoles, AfterRolesError, holds_on_each

Run = Callable[[str, str, float], tuple[bool, str, str]]

STATE_DIR = "/var/lib/hastack/cassandra"
RESTART_MARK = f"{STATE_DIR}/restart-needed"
CLEANUP_MARK = f"{STATE_DIR}/cleanup-needed"
AUTH_DONE = f"{STATE_DIR}/auth-secured"
OTHER_PASSWORDS = f"{STATE_DIR}/admin-password-others"  # the admin's passwords while the seed rotates
AUTH_SCRIPT = "/opt/hastack/cassandra_auth.py"  # roles/cassandra/auth.py, put there by the deploy
CQL_TOOL = "/opt/hastack/cassandra_cql.py"  # roles/cassandra/cql_tool.py (restores), beside it
REPLACE_ENV = "/etc/cassandra/replace.env"
DATA_MARK = "/var/lib/cassandra/data/system"  # exists once a node has ever started
JOIN_TIMEOUT = 900.0

_STATUS_LINE = re.compile(r"^([UD][NLJM])\s+(\d+\.\d+\.\d+\.\d+)\s+.*\s([0-9a-f-]{36})\s+(\S+)\s*$")


class RingError(RuntimeError):
    """A ring operation refused or failed; the message says why and what to do."""


@dataclass(frozen=True)
class Member:
    state: str  # UN, DN, UJ, UL, ...
    address: str
    host_id: str
    rack: str


def parse_status(text: str) -> dict[str, Member]:
    """`nodetool status` -> address -> member."""
    members = {}
    for line in text.splitlines():
        m = _STATUS_LINE.match(line.strip())
        if m:
            members[m.group(2)] = Member(m.group(1), m.group(2), m.group(3), m.group(4))
    return members


def unhealthy(ring: dict[str, Member], ignore: set[str] = frozenset()) -> list[str]:
    return [f"{m.address} is {m.state}" for m in ring.values() if m.state != "UN" and m.address not in ignore]


@dataclass
class Ring:
    nodes: dict[str, str]  # name -> private address, in joining order (seeds first)
    run: Run
    log: Callable[[str], None] = lambda _m: None
    poll: float = 3.0
    native_port: int = 9042

    # -- facts
    def _ok(self, name: str, command: str, timeout: float = 120) -> str:
        ok, out, err = self.run(name, command, timeout)
        if not ok:
            raise RingError(f"{name}: `{command}` failed: {(err or out).strip()[-400:]}")
        return out

    def _test(self, name: str, condition: str) -> bool:
        return self.run(name, f"{condition} && echo yes || true", 30)[1].strip() == "yes"

    def active(self, name: str) -> bool:
        return self._test(name, "systemctl is-active --quiet cassandra.service")

    def status(self, via: str) -> dict[str, Member] | None:
        ok, out, _ = self.run(via, "nodetool status", 120)
        return parse_status(out) if ok else None

    def view(self, exclude: str | None = None) -> tuple[str | None, dict[str, Member]]:
        """The ring as the first running member (other than `exclude`) sees it."""
        for name in self.nodes:
            if name != exclude and self.active(name):
                ring = self.status(name)
                if ring is not None:
                    return name, ring
        return None, {}

    def wait_normal(self, name: str, timeout: float = JOIN_TIMEOUT) -> None:
        """Until `name` is Up/Normal in its own view and in every running member's, and serves CQL."""
        address = self.nodes[name]
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.active(name):
                journal = self.run(name, "journalctl -u cassandra.service -n 15 --no-pager", 30)[1]
                raise RingError(f"{name}: Cassandra stopped while joining; its journal:\n{journal}")
            # Cassandra listens for CQL once it has joined: until then, a cheap look at its sockets,
            # not `nodetool` (a JVM on every member at every poll, slowing the node that starts)
            if not self._test(name, f"ss -Htln 'sport = :{self.native_port}' | grep -q ."):
                last = "starting or joining (CQL not listening yet)"
                time.sleep(min(self.poll, 1.0))
                continue
            ring = self.status(name)
            if ring and ring.get(address) and ring[address].state == "UN":
                running = holds_on_each(self.run, [n for n in self.nodes if n != name],
                                        "systemctl is-active --quiet cassandra.service")
                others = [n for n, up in running.items() if up]
                views = Pool(len(others) or 1).map(self.status, others)  # a JVM each: all at once
                if all(v and v.get(address) and v[address].state == "UN" for v in views):
                    return
                last = "not yet Up/Normal for every member"
            elif ring:
                last = ring.get(address).state if ring.get(address) else "not in the ring yet"
            time.sleep(self.poll)
        raise RingError(f"{name}: not Up/Normal after {timeout:.0f} s ({last})")

    def _require_healthy(self, what: str, ring: dict[str, Member], ignore: set[str] = frozenset()) -> None:
        problems = unhealthy(ring, ignore)
        if problems:
            raise RingError(f"refusing to {what}: the ring is not healthy ({'; '.join(problems)}); "
                            "bring those nodes back (or replace them) first")

    # -- operations
    def start(self, name: str, replace: str | None = None) -> None:
        if replace:
            self._ok(name, f"printf 'CASSANDRA_REPLACE=-Dcassandra.replace_address_first_boot={replace}\\n' "
                           f"> {REPLACE_ENV}")
        self._ok(name, "systemctl start cassandra.service")
        try:
            self.wait_normal(name)
        finally:
            if replace:
                self.run(name, f"rm -f {REPLACE_ENV}", 30)

    def restart(self, name: str) -> None:
        """Flush, restart, wait until Up/Normal again."""
        self.run(name, "nodetool drain", 600)
        self._ok(name, "systemctl restart cassandra.service", 300)
        self.wait_normal(name)

    def converge(self, replication_factor: int, datacenter: str,
                 view: tuple[str, dict[str, Member]] | None = None) -> list[tuple[str, str]]:
        """Bring the ring to the topology; returns (node, what was done) for each change.
        ``view``: the ring as a running member saw it a moment ago (see ``look_ahead``)."""
        actions: list[tuple[str, str]] = []
        names = list(self.nodes)
        addresses = set(self.nodes.values())
        via, ring = view or self.view()

        # members the topology no longer has: a dead one is removed, a live one must be decommissioned first
        for member in list(ring.values()):
            if member.address in addresses:
                continue
            if member.state.startswith("U"):
                raise RingError(f"{member.address} is in the ring but not in the topology: decommission it first "
                                f"(hastack cassandra decommission), then remove it")
            self._require_healthy(f"remove the dead node {member.address}", ring, ignore={member.address})
            self._ok(via, f"nodetool removenode {member.host_id}", 3600)
            actions.append((via, f"removed dead node {member.address} from the ring"))
            via, ring = self.view()

        # starting one node does not start or stop another: which run is read once, for all
        active = holds_on_each(self.run, names, "systemctl is-active --quiet cassandra.service")
        for name in names:
            address = self.nodes[name]
            if active[name]:
                continue
            member = ring.get(address)
            has_data = self._test(name, f"test -d {DATA_MARK}")
            if member is not None and has_data:
                # a stopped member: starting it only heals the ring
                self.log(f"{name}: starting a stopped member")
                self.start(name)
                actions.append((name, "started (a stopped member)"))
            elif member is not None:
                # its address is in the ring but the node is new and empty: Cassandra's replace procedure
                if member.state.startswith("U"):
                    raise RingError(f"{name} is empty but {address} is Up in the ring: is another machine using it?")
                self._require_healthy(f"replace {name}", ring, ignore={address})
                self.log(f"{name}: replacing the dead node {address} (streaming its ranges)")
                self.start(name, replace=address)
                actions.append((name, f"replaced the dead node {address}"))
            else:
                if not ring and name != names[0]:
                    raise RingError(f"{name}: the ring has no running node; {names[0]} (a seed) must start first")
                self._require_healthy(f"add {name}", ring)
                if ring:
                    for other in names:
                        if self.nodes[other] in ring:
                            self.run(other, f"touch {CLEANUP_MARK}", 30)  # ranges move to the new node
                self.log(f"{name}: joining the ring")
                self.start(name)
                actions.append((name, "joined the ring"))
            via, ring = self.view()

        # the deploy marks nodes, this step only removes marks: read once, for all
        marked = holds_on_each(self.run, names, f"test -e {RESTART_MARK}")
        for name in names:
            if marked[name]:
                _, ring = self.view(exclude=name)
                self._require_healthy(f"restart {name}", ring, ignore={self.nodes[name]})
                self.log(f"{name}: rolling restart for a new configuration")
                self.restart(name)
                self.run(name, f"rm -f {RESTART_MARK}", 30)
                actions.append((name, "restarted for a new configuration"))

        if len(self.nodes) >= replication_factor and not self._test(names[0], f"test -e {AUTH_DONE}"):
            secure = (f"python3 {AUTH_SCRIPT} --address {shlex.quote(self.nodes[names[0]])} "
                      f"--ca /etc/cassandra/tls/ca.crt --password-file {STATE_DIR}/admin-password "
                      f"--other-passwords-file {OTHER_PASSWORDS} "
                      f"--datacenter {shlex.quote(datacenter)} --replication-factor {replication_factor}")
            ok, out, err = self.run(names[0], secure, 300)
            if not ok:
                # an earlier run may have replicated system_auth and stopped before its repair: the
                # roles are then missing on some replicas; copy them there and try once more
                self.log(f"{names[0]}: securing the ring failed ({(err or out).strip()[-200:]}); "
                         "repairing system_auth and trying again")
                self._repair_auth(names, replication_factor)
                out = self._ok(names[0], secure, 300)
            if out.strip():
                self._repair_auth(names, replication_factor)  # the auth data on every new replica
                actions.append((names[0], "secured: " + "; ".join(out.strip().splitlines())))
            self._ok(names[0], f"touch {AUTH_DONE}")

        cleanup = holds_on_each(self.run, names, f"test -e {CLEANUP_MARK}")
        for name in names:
            if cleanup[name]:
                self.log(f"{name}: nodetool cleanup (ranges moved)")
                self._ok(name, "nodetool cleanup", 3600)
                self.run(name, f"rm -f {CLEANUP_MARK}", 30)
                actions.append((name, "cleaned up ranges it no longer owns"))
        return actions

    def _repair_auth(self, names: list[str], replication_factor: int) -> None:
        # a full repair on one node syncs every range that node holds: with no more nodes than the
        # replication factor, each holds them all, so one repair covers the ring
        for name in names if len(names) > replication_factor else names[:1]:
            self._ok(name, "nodetool repair --full system_auth", 1800)

    def decommission(self, name: str, replication_factor: int) -> None:
        """Stream a node's data to the others and take it out of the ring; then it is stopped."""
        via, ring = self.view()
        address = self.nodes[name]
        if address not in ring:
            raise RingError(f"{name} ({address}) is not in the ring")
        self._require_healthy(f"decommission {name}", ring)
        if len(ring) - 1 < replication_factor:
            raise RingError(f"refusing to decommission {name}: {len(ring) - 1} nodes would remain, fewer than "
                            f"the replication factor {replication_factor}")
        self._ok(name, "nodetool decommission", 3600)
        self._ok(name, "systemctl disable --now cassandra.service")
        _, after = self.view(exclude=name)
        if address in after:
            raise RingError(f"{name} still in the ring after decommission: {after[address].state}")


def look_ahead(step: AfterRoles) -> tuple[str, dict[str, Member]] | None:
    """The ring as the first node sees it, taken while the roles run (`nodetool` starts a JVM: a
    second or two); the ring step starts from it when the converge changed nothing on the nodes."""
    first = next(iter(dict(next(iter(step.hosts.values()))["cassandra_nodes"])))
    ok, out, _ = step.run(first, "systemctl is-active --quiet cassandra.service && nodetool status", 120)
    ring = parse_status(out) if ok else {}
    return (first, ring) if ring else None


def after_roles(step: AfterRoles) -> list[tuple[str, str]]:
    """The converge's step after every host has its roles: the ring operations, one node at a time."""
    data = next(iter(step.hosts.values()))
    step.log("Cassandra ring: one node at a time")
    ring = Ring(dict(data["cassandra_nodes"]), step.run, log=step.log)
    try:
        return [(name, f"Cassandra ring: {action}")
                for name, action in ring.converge(int(data["cassandra_replication_factor"]), data["cassandra_datacenter"],
                                                  view=step.looked)]
    except RingError as e:
        raise AfterRolesError(f"Cassandra ring: {e}") from None
