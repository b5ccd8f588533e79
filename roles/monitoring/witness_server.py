"""hastack-witness: the third vote of the MariaDB pair and of the load balancers.

Runs on the monitoring host (systemd). Clients speak one JSON line each way
over mutual TLS (the stack CA); a client's certificate name is its identity,
and it may speak only for itself and only in a group it belongs to.

MariaDB group ("mariadb"): the witness holds the writer epoch, a counter
that only grows, and who holds it. Each master's agent sends a heartbeat
every half second and learns the epoch, the writer and how long ago the
witness last heard from each master. A master takes writes only after the
witness granted it the next epoch (`claim`), and the witness grants it only:

* to the current writer (it has everything it wrote), or, at the pair's
  first start, to anyone; and to anyone an operator forces it to (`claim
  --force` on a master, which a restore uses while writes are held);
* to the other master only if the writer has been silent here for
  `dead_after` seconds, or its MariaDB down for half that (a writer seeing neither its peer
  nor the witness turns read-only sooner) and the claimant has caught up with the
  current epoch since its MariaDB last started (`synced_epoch`): a master
  that returns with stale data cannot take writes, even if the writer stalls.

The epoch and writer are written to disk (fsync) before a grant is answered.

Any member may also ask for the stack's admins (`access`): a master's
access gate removes, at boot, an admin removed while it was off.

Load balancer group ("lb"): `alive` answers whether the witness can reach a
member's HAProxy on the private network: a load balancer takes the floating
IP away from its peer only when the witness cannot reach the peer either.

  hastack-witness --config /etc/hastack/witness.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import socketserver
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("hastack-witness")


@dataclass
class Config:
    bind: str
    port: int
    cert: str
    key: str
    ca: str
    # group -> member name -> [address, port] to probe (lb), or null (heartbeat members)
    groups: dict[str, dict[str, list | None]]
    state_file: str = "/var/lib/hastack/witness/state.json"
    dead_after: float = 1.8
    probe_timeout: float = 0.3  # twice: a live HAProxy on the private network answers in a millisecond
    # the stack's admins and their keys, as the last converge wrote them (read at each request: a converge
    # changes it without restarting the witness)
    access_file: str | None = None


def load_config(path: str) -> Config:
    with open(path) as f:
        raw = json.load(f)
    try:
        cfg = Config(**raw)
    except TypeError as e:
        raise SystemExit(f"{path}: {e}") from None
    # relative paths are beside the configuration (systemd's credentials directory)
    base = os.path.dirname(os.path.abspath(path))
    cfg.cert, cfg.key, cfg.ca = (os.path.join(base, p) for p in (cfg.cert, cfg.key, cfg.ca))
    return cfg


@dataclass
class Witness:
    cfg: Config
    now: Any = time.monotonic
    epochs: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> {"epoch": n, "writer": name}
    heard: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # group -> name -> last heartbeat

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.started = self.now()
        try:
            with open(self.cfg.state_file) as f:
                self.epochs = json.load(f)
        except FileNotFoundError:
            self.epochs = {}

    def _save(self) -> None:
        os.makedirs(os.path.dirname(self.cfg.state_file), exist_ok=True)
        tmp = self.cfg.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.epochs, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.cfg.state_file)
        dirfd = os.open(os.path.dirname(self.cfg.state_file), os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def _silent_for(self, group: str, name: str) -> float:
        """Seconds since a member was last heard; a restarted witness counts from its own start."""
        last = self.heard.get(group, {}).get(name, {}).get("at", self.started)
        return self.now() - last

    def view(self, group: str) -> dict[str, Any]:
        e = self.epochs.get(group, {"epoch": 0, "writer": None})
        members = {}
        for name in self.cfg.groups[group]:
            h = self.heard.get(group, {}).get(name) or {}
            members[name] = {"silent_for": round(self._silent_for(group, name), 2),
                             "mysqld": bool(h.get("mysqld")), "writable": bool(h.get("writable"))}
        return {"epoch": e["epoch"], "writer": e["writer"], "members": members, "dead_after": self.cfg.dead_after}

    # -- requests
    def handle(self, identity: str, req: dict[str, Any]) -> dict[str, Any]:
        op, group, name = req.get("op"), req.get("group"), req.get("name")
        if group not in self.cfg.groups:
            return {"error": f"unknown group {group!r}"}
        if name != identity or name not in self.cfg.groups[group]:
            return {"error": f"{identity!r} may not speak for {name!r} in {group!r}"}
        with self.lock:
            if op == "heartbeat":
                before = self.heard.setdefault(group, {}).get(name, {})
                up = bool(req.get("mysqld"))
                self.heard[group][name] = {
                    "at": self.now(), "mysqld": up, "writable": bool(req.get("writable")),
                    "down_since": None if up else (before.get("down_since") or self.now())}
                return self.view(group)
            if op == "view":
                return self.view(group)
            if op == "claim":
                return self.claim(group, name, req.get("epoch"), req.get("synced_epoch"), req.get("force") is True)
        if op == "alive":
            return {"alive": self.alive(group, req.get("member"))}
        if op == "access":
            return self.access()
        return {"error": f"unknown op {op!r}"}

    def claim(self, group: str, name: str, expected: Any, synced: Any, force: bool = False) -> dict[str, Any]:
        e = self.epochs.get(group, {"epoch": 0, "writer": None})
        epoch, writer = e["epoch"], e["writer"]

        def answer(granted: bool, reason: str) -> dict[str, Any]:
            log.log(logging.WARNING if granted else logging.INFO, "%s: claim by %s: %s (%s)", group, name,
                    "granted" if granted else "refused", reason)
            return {"granted": granted, "reason": reason, **self.view(group)}

        if expected != epoch:
            return answer(False, f"the epoch is {epoch}, not {expected}")
        if force:
            # an operator's decision (a restore, writes held on both): no liveness or catch-up rule
            self.epochs[group] = {"epoch": epoch + 1, "writer": name}
            self._save()
            return answer(True, f"epoch {epoch + 1}, forced by an operator, after {writer or 'no writer'}")
        if writer is not None and writer != name:
            silent = self._silent_for(group, writer)
            down_since = self.heard.get(group, {}).get(writer, {}).get("down_since")
            down_for = 0.0 if down_since is None else self.now() - down_since
            # a MariaDB its own agent reports down comes back read-only: half the wait
            if silent < self.cfg.dead_after and down_for < self.cfg.dead_after / 2:
                return answer(False, f"{writer} holds epoch {epoch}, was heard {silent:.1f} s ago "
                                     f"and its MariaDB is up")
            if synced != epoch:
                return answer(False, f"{name} has not caught up with epoch {epoch} since it started "
                                     f"(synced: {synced}); {writer} may hold writes it lacks")
        self.epochs[group] = {"epoch": epoch + 1, "writer": name}
        self._save()
        return answer(True, f"epoch {epoch + 1}, after {writer or 'no writer'}")

    def access(self) -> dict[str, Any]:
        """The stack's admins, for a member's access gate at its boot (roles/base/access_gate.py)."""
        try:
            with open(self.cfg.access_file or "") as f:
                admins = json.load(f)["admins"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return {"error": f"no admin list here ({e})"}
        return {"admins": admins}

    def alive(self, group: str, member: Any) -> bool:
        target = self.cfg.groups[group].get(member) if isinstance(member, str) else None
        if not target:
            return False
        for _ in range(2):
            try:
                with socket.create_connection(tuple(target), timeout=self.cfg.probe_timeout):
                    return True
            except OSError:
                continue
        return False


class _Handler(socketserver.StreamRequestHandler):
    timeout = 2

    def setup(self) -> None:
        # the handshake happens in the request's thread: a slow client never blocks the others
        self.request.settimeout(self.timeout)
        self.request = self.server.ctx.wrap_socket(self.request, server_side=True)  # type: ignore[attr-defined]
        super().setup()

    def handle(self) -> None:
        witness: Witness = self.server.witness  # type: ignore[attr-defined]
        try:
            cert = self.connection.getpeercert() or {}
            identity = next((v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), "")
            line = self.rfile.readline(4096)
            req = json.loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as e:
            log.debug("bad request: %s", e)
            return
        try:
            answer = witness.handle(identity, req)
        except Exception as e:  # a bug must not take the witness down
            log.exception("request %r failed", req)
            answer = {"error": str(e)}
        try:
            self.wfile.write(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, cfg: Config, witness: Witness):
        self.witness = witness
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cfg.ca)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_cert_chain(cfg.cert, cfg.key)
        super().__init__((cfg.bind, cfg.port), _Handler)

    def handle_error(self, request, client_address) -> None:
        # a client without a valid certificate, or one that hung up: not the witness's problem
        log.info("connection from %s failed: %s", client_address[0], sys.exc_info()[1])


def serve(cfg: Config, witness: Witness) -> _Server:
    srv = _Server(cfg, witness)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hastack-witness")
    p.add_argument("--config", default="/etc/hastack/witness.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    cfg = load_config(args.config)
    srv = _Server(cfg, Witness(cfg))
    log.info("witness on %s:%d for %s", cfg.bind, cfg.port, ", ".join(sorted(cfg.groups)))
    srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
