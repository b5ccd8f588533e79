"""hastack-mariadb-writer: keeps exactly one master of the MariaDB pair writable.

Runs on both masters (systemd, as root). Both servers boot read-only; this
agent decides which one takes writes, and tells the application servers'
local HAProxy through an agent-check port, so the application always
connects to 127.0.0.1:3306 and reaches the writer.

Rules, checked every `interval` seconds:

* both up and read-only (a cold start): the preferred master promotes
  itself once it has applied everything the peer has written;
* the peer's agent answers but its MariaDB has been down for
  `failover_after` seconds: promote (when it returns it boots read-only and
  stays passive);
* the peer does not answer at all for `failover_after` seconds, and it was
  seen working before: fence it (power off through the Hetzner API, so a
  partitioned peer cannot keep taking writes), then promote. No fence, no
  promotion. A peer never seen working (the pair's first start) is waited
  for, never fenced;
* both writable (a stalled server came back): the one promoted earlier
  steps down, so writes go to one master again;
* a master that returns finds the other writable and stays passive: there
  is no automatic fail-back;
* while the hold file exists (a pair rebuilt for a restore, or a restore
  under way) neither master takes writes: nothing the application writes
  can land in a database that the restore then replaces.

Before taking writes a master applies every transaction it has received
from the peer (MASTER_GTID_WAIT); until it has, it does not promote (new
writes on top of unapplied ones would conflict with them). Replication is asynchronous: what the
failed master committed but had not sent is not lost, it is replicated
when that master returns (separate GTID domains and odd/even keys keep the
two streams from colliding).

  hastack-mariadb-writer run        the agent (systemd)
  hastack-mariadb-writer status     this node's view, as JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("hastack-mariadb-writer")

SOCKET = "/run/mysqld/mysqld.sock"
MAX_FENCE_BACKOFF = 60.0


@dataclass
class Config:
    name: str
    peer_name: str
    peer_ip: str
    preferred: str
    bind: str
    port: int
    peer_server_id: int | None
    api_endpoint: str
    token_file: str
    ca_file: str | None = None
    state_file: str = "/var/lib/hastack/mariadb/writer-state.json"
    # while this file exists neither master takes writes (a new pair waiting for its restore)
    hold_file: str = "/var/lib/hastack/mariadb/hold-writes"
    interval: float = 0.5
    failover_after: float = 2.0
    fence_retry: float = 5.0
    gtid_wait: float = 10.0
    # node exporter textfile: writes held, the peer fenced and not back (None: no metrics)
    metrics_file: str | None = None


def load_config(path: str) -> Config:
    with open(path) as f:
        raw = json.load(f)
    try:
        return Config(**raw)
    except TypeError as e:
        raise SystemExit(f"{path}: {e}") from None


def parse_gtid(pos: str) -> dict[tuple[int, int], int]:
    """'1-1-10,2-2-5' -> {(domain, server): seq}; MariaDB keeps one GTID per domain."""
    out: dict[tuple[int, int], int] = {}
    for part in filter(None, (p.strip() for p in (pos or "").split(","))):
        domain, server, seq = (int(x) for x in part.split("-"))
        out[(domain, server)] = seq
    return out


def contains(mine: str, theirs: str) -> bool:
    """Whether position `mine` includes everything of position `theirs`, domain by domain."""
    have: dict[int, int] = {}
    for (domain, _), seq in parse_gtid(mine).items():
        have[domain] = max(have.get(domain, 0), seq)
    return all(have.get(domain, 0) >= seq for (domain, _), seq in parse_gtid(theirs).items())


@dataclass
class Local:
    """This node's MariaDB, over the root-only local socket."""
    conn: Any = None

    def _cursor(self):
        import pymysql

        if self.conn is None:
            self.conn = pymysql.connect(unix_socket=SOCKET, user="root", connect_timeout=1, read_timeout=15,
                                        write_timeout=5, autocommit=True)
        return self.conn.cursor()

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            with self._cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    def status(self) -> dict[str, Any] | None:
        try:
            (ro, binlog, current), = self.query("SELECT @@read_only, @@gtid_binlog_pos, @@gtid_current_pos")
        except Exception:
            return None
        return {"writable": not ro, "gtid_binlog_pos": binlog, "gtid_current_pos": current}


@dataclass
class State:
    last_writer: str | None = None
    promoted_at: float = 0.0
    fenced_peer_at: float = 0.0  # when this node powered its peer off; 0 once the peer answers again

    @classmethod
    def load(cls, path: str) -> "State":
        try:
            with open(path) as f:
                return cls(**json.load(f))
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, path: str) -> None:
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump({"last_writer": self.last_writer, "promoted_at": self.promoted_at,
                       "fenced_peer_at": self.fenced_peer_at}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


@dataclass
class Agent:
    cfg: Config
    local: Local = field(default_factory=Local)
    state: State = field(default_factory=State)
    now: Any = time.monotonic
    status_now: dict[str, Any] = field(default_factory=dict)
    local_down_since: float | None = None
    peer_lost_since: float | None = None
    last_fence_try: float = -1e9
    fence_failures: int = 0
    metrics_written: tuple | None = None

    def __post_init__(self) -> None:
        self.state = State.load(self.cfg.state_file)
        self.lock = threading.Lock()

    # -- what this node tells others
    def report(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.status_now)

    def _publish(self, local: dict[str, Any] | None) -> None:
        down_for = 0.0 if self.local_down_since is None else self.now() - self.local_down_since
        with self.lock:
            self.status_now = {
                "name": self.cfg.name, "mysqld": local is not None, "mysqld_down_for": round(down_for, 2),
                "writable": bool(local and local["writable"]),
                "gtid_binlog_pos": local["gtid_binlog_pos"] if local else "",
                "last_writer": self.state.last_writer, "promoted_at": self.state.promoted_at,
            }

    # -- the peer
    def peer_status(self) -> dict[str, Any] | None:
        try:
            with socket.create_connection((self.cfg.peer_ip, self.cfg.port), timeout=0.4) as s:
                s.settimeout(0.6)
                s.sendall(b"status\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            return json.loads(data)
        except (OSError, ValueError):
            return None

    # -- actions
    def _remember(self, writer: str) -> None:
        if self.state.last_writer != writer:
            self.state.last_writer = writer
            self.state.save(self.cfg.state_file)

    def promote(self, why: str) -> bool:
        """Take writes, once everything received from the peer is applied; False: not yet."""
        log.warning("promoting %s to writer: %s", self.cfg.name, why)
        io_pos = self._io_pos()
        if io_pos:
            (res,), = self.local.query("SELECT MASTER_GTID_WAIT(%s, %s)", (io_pos, self.cfg.gtid_wait))
            if res != 0:
                # new writes on top of unapplied ones would conflict with them: wait, the next check tries again
                log.error("relay log not applied within %.0f s (received up to %s): not promoting yet",
                          self.cfg.gtid_wait, io_pos)
                return False
        self.local.query("SET GLOBAL read_only = OFF")
        self.state.promoted_at = time.time()
        self.state.last_writer = self.cfg.name
        self.state.save(self.cfg.state_file)
        log.warning("%s is the writer", self.cfg.name)
        return True

    def _io_pos(self) -> str:
        """Everything received from the peer (applied or not)."""
        with self.local._cursor() as cur:
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
            names = [d[0] for d in cur.description or ()]
        return dict(zip(names, row or ())).get("Gtid_IO_Pos") or ""

    def demote(self, why: str) -> None:
        log.warning("%s steps down: %s", self.cfg.name, why)
        self.local.query("SET GLOBAL read_only = ON")

    def fence(self) -> bool:
        """Power the peer off through the Hetzner API; True once it is off."""
        if self.cfg.peer_server_id is None:
            log.error("no server id for %s: cannot fence it, so no promotion", self.cfg.peer_name)
            return False
        from hcloud import Client
        from hcloud.servers import Server

        with open(self.cfg.token_file) as f:
            token = f.read().strip()
        client = Client(token=token, api_endpoint=self.cfg.api_endpoint, application_name="hastack-mariadb-writer",
                        poll_interval=0.5, timeout=10)
        if self.cfg.ca_file:
            # a private CA (the lab's API); hcloud 2.27 has no public setting for it. Without
            # trust_env, REQUESTS_CA_BUNDLE from the environment would win over it.
            session = client._client._session
            session.verify = self.cfg.ca_file
            session.trust_env = False
        try:
            server = client.servers.get_by_id(self.cfg.peer_server_id)
            if server.status == "off":
                log.warning("%s (server %d) is already off", self.cfg.peer_name, self.cfg.peer_server_id)
                return True
            log.warning("fencing %s: powering off server %d", self.cfg.peer_name, self.cfg.peer_server_id)
            action = client.servers.power_off(Server(id=self.cfg.peer_server_id))
            action.wait_until_finished(max_retries=60)
            return True
        except Exception as e:  # the API or the network: try again later, never promote unfenced
            log.error("fencing %s failed: %s", self.cfg.peer_name, e)
            return False

    # -- one decision
    def tick(self) -> None:
        local = self.local.status()
        t = self.now()
        if local is None:
            self.local_down_since = self.local_down_since or t
            # the peer's silence counts only while this node could act on it: after a long local
            # outage it gets the full grace again, not an instant fence
            self.peer_lost_since = None
            self._publish(None)
            return
        self.local_down_since = None
        peer = self.peer_status()
        if peer is None:
            self.peer_lost_since = self.peer_lost_since or t
        else:
            self.peer_lost_since = None
            if self.state.fenced_peer_at:
                log.warning("%s answers again after being fenced", self.cfg.peer_name)
                self.state.fenced_peer_at = 0.0
                self.state.save(self.cfg.state_file)
        self._decide(local, peer, t)
        self._publish(self.local.status() or local)
        try:
            self.write_metrics()
        except OSError as e:  # monitoring sees stale data; the pair's decisions do not wait for it
            log.warning("could not write %s: %s (tried again when the values change)", self.cfg.metrics_file, e)
            self.metrics_written = (int(os.path.exists(self.cfg.hold_file)), int(bool(self.state.fenced_peer_at)))

    def write_metrics(self) -> None:
        """What monitoring reads; written when it changes (a tick is half a second)."""
        values = (int(os.path.exists(self.cfg.hold_file)), int(bool(self.state.fenced_peer_at)))
        if not self.cfg.metrics_file or values == self.metrics_written:
            return
        held, fenced = values
        text = ("# HELP hastack_mariadb_writes_held 1 while writes are held on purpose (a restore).\n"
                "# TYPE hastack_mariadb_writes_held gauge\n"
                f"hastack_mariadb_writes_held {held}\n"
                "# HELP hastack_mariadb_peer_fenced 1 while this master has powered its peer off and it is not back.\n"
                "# TYPE hastack_mariadb_peer_fenced gauge\n"
                f'hastack_mariadb_peer_fenced{{peer="{self.cfg.peer_name}"}} {fenced}\n')
        os.makedirs(os.path.dirname(self.cfg.metrics_file), exist_ok=True)
        tmp = self.cfg.metrics_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.cfg.metrics_file)  # the collector never reads half a file
        self.metrics_written = values

    def _decide(self, local: dict[str, Any], peer: dict[str, Any] | None, t: float) -> None:
        cfg = self.cfg
        if os.path.exists(cfg.hold_file):
            if local["writable"]:
                self.demote(f"writes are held until a restore ends ({cfg.hold_file})")
            return
        if local["writable"]:
            self._remember(cfg.name)
            if peer and peer["writable"] and peer.get("promoted_at", 0) > self.state.promoted_at:
                self.demote(f"{cfg.peer_name} became the writer after this node did")
            return
        if peer and peer["writable"]:
            self._remember(cfg.peer_name)
            return
        if peer and peer["mysqld"]:
            if cfg.name == cfg.preferred and contains(local["gtid_current_pos"], peer["gtid_binlog_pos"]):
                self.promote("neither master was writable")
            return
        if peer and peer["mysqld_down_for"] >= cfg.failover_after:
            self.promote(f"MariaDB on {cfg.peer_name} is down ({peer['mysqld_down_for']:.1f} s)")
            return
        if peer is None and t - self.peer_lost_since >= cfg.failover_after:
            if self.state.last_writer is None:
                return  # the pair never worked: wait for the peer rather than fence it
            # failed fences are retried with backoff (5, 10, 20 ... 60 s): the API's rate limit is shared
            if t - self.last_fence_try < min(MAX_FENCE_BACKOFF, cfg.fence_retry * 2 ** max(0, self.fence_failures - 1)):
                return
            self.last_fence_try = t
            if not self.fence():
                self.fence_failures += 1
                return
            self.fence_failures = 0
            self.state.fenced_peer_at = time.time()
            self.promote(f"{cfg.peer_name} unreachable for {t - self.peer_lost_since:.1f} s and fenced")

    def run(self) -> None:
        serve(self)
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("check failed")
                self.local.close()
            time.sleep(self.cfg.interval)


class _Handler(socketserver.StreamRequestHandler):
    timeout = 1

    def handle(self) -> None:
        agent: Agent = self.server.agent  # type: ignore[attr-defined]
        try:
            line = self.rfile.readline(64).strip()
        except OSError:
            return
        report = agent.report()
        if line == b"status":
            self.wfile.write(json.dumps(report).encode() + b"\n")
        else:
            # HAProxy's agent-check: only the writer takes the application's connections
            self.wfile.write(b"up ready\n" if report.get("writable") else b"down\n")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # every app server's HAProxy checks this port twice a second: a backlog of 5 (the default)
    # overflows under a burst, and a dropped check looks like a dead agent to the peer
    request_queue_size = 512


def serve(agent: Agent) -> _Server:
    srv = _Server((agent.cfg.bind, agent.cfg.port), _Handler)
    srv.agent = agent  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hastack-mariadb-writer")
    p.add_argument("--config", default="/etc/hastack/mariadb-writer.json")
    p.add_argument("command", choices=["run", "status"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    cfg = load_config(args.config)
    if args.command == "status":
        agent = Agent(cfg)
        local = agent.local.status()
        print(json.dumps({"local": local, "peer": agent.peer_status(), "state": vars(agent.state)}, indent=2))
        return 0
    Agent(cfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
