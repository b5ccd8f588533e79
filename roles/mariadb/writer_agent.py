"""hastack-mariadb-writer: keeps exactly one master of the MariaDB pair writable.

Runs on both masters (systemd, as root). Both servers boot read-only; this
agent decides which one takes writes, and tells the application servers'
local HAProxy through a health port (`up ready` / `down`, nothing else), so
the application always connects to 127.0.0.1:3306 and reaches the writer.

Three votes decide: the two masters and the witness on the monitoring host
(roles/monitoring/witness_server.py). The witness holds the writer epoch, a
counter that grows at every promotion, and who holds it. Every half second
the agent asks its peer (mutual TLS, on a port only the peer can reach) and
sends the witness a heartbeat. Rules:

* a master takes writes only once the witness granted it the next epoch
  (without the witness there is no promotion; a writer already writable
  stays so while it sees its peer);
* the epoch's holder takes writes again after a restart of its MariaDB or
  of both masters; at the pair's first start the preferred master does,
  once it has applied everything the peer has written;
* the other master claims the epoch when the writer's MariaDB has been down
  for half of `failover_after` (it comes back read-only), or when the
  writer does not answer at all
  for that long. The witness grants it only if the writer is silent or down
  there too, and only if the claimant has caught up with the current epoch
  since its MariaDB started: a master that returns with stale data cannot
  take writes, even while the writer's agent stalls;
* a writer that answered neither its peer nor the witness for
  `isolation_after` seconds turns itself read-only: it has lost the
  majority, and the witness grants the epoch away only later (`dead_after`);
* a writer that did not answer is still fenced (powered off through the
  Hetzner API): a stalled agent cannot turn its MariaDB read-only. No
  promotion before the power-off is under way; it need not have finished, as
  a stalled agent's health answer goes stale and the app servers stop sending
  that master writes within a second. After `restart_fenced_after`
  seconds the new writer powers the fenced master on again; it returns
  read-only and catches up (it cannot claim the epoch until it has);
* a writable master that learns the epoch moved on steps down;
* while the hold file exists (a pair rebuilt for a restore, or a restore
  under way) neither master takes writes.

Before taking writes a master applies every transaction it has received
from the peer (MASTER_GTID_WAIT); until it has, it does not promote. What a
failed writer committed but had not sent is not lost: it is replicated when
that master returns (separate GTID domains and odd/even keys keep the two
streams from colliding).

  hastack-mariadb-writer run        the agent (systemd)
  hastack-mariadb-writer status     this node's view, the peer's and the witness's, as JSON
  hastack-mariadb-writer claim --force
                                    an operator's decision: this master holds the next epoch,
                                    whatever the rules say (a restore, with writes held on both)
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# imported here, not when first needed: the first fence comes at a failover, and importing hcloud
# there cost up to 0.5 s of the write outage on a busy machine
from hcloud import Client
from hcloud.servers import Server

log = logging.getLogger("hastack-mariadb-writer")

SOCKET = "/run/mysqld/mysqld.sock"
MAX_FENCE_BACKOFF = 60.0
# how old the last check may be for the health port to say `up`: two checks and their timeouts
FRESH_FOR = 1.5


@dataclass
class Config:
    name: str
    peer_name: str
    peer_ip: str
    preferred: str
    bind: str
    port: int  # the health answer for the application servers' HAProxy (plain: `up ready` / `down`)
    peer_port: int  # the peer's channel (mutual TLS)
    peer_server_id: int | None
    api_endpoint: str
    token_file: str
    # mutual TLS with the peer and the witness: this host's certificate (its name), the stack CA
    tls_cert: str
    tls_key: str
    tls_ca: str
    witness_name: str
    witness_ip: str
    witness_port: int
    ca_file: str | None = None
    state_file: str = "/var/lib/hastack/mariadb/writer-state.json"
    # while this file exists neither master takes writes (a new pair waiting for its restore)
    hold_file: str = "/var/lib/hastack/mariadb/hold-writes"
    interval: float = 0.5
    failover_after: float = 2.0
    isolation_after: float = 1.0
    fence_retry: float = 5.0
    gtid_wait: float = 10.0
    restart_fenced_after: float | None = 60.0
    # node exporter textfile: writes held, the peer fenced and not back (None: no metrics)
    metrics_file: str | None = None
    # what the health port answers from (tmpfs): written at every check, read by the health process
    health_file: str = "/run/hastack-mariadb-writer/health.json"


def load_config(path: str) -> Config:
    with open(path) as f:
        raw = json.load(f)
    try:
        cfg = Config(**raw)
    except TypeError as e:
        raise SystemExit(f"{path}: {e}") from None
    if not cfg.isolation_after < cfg.failover_after:
        raise SystemExit(f"{path}: isolation_after ({cfg.isolation_after}) must be below failover_after "
                         f"({cfg.failover_after}): an isolated writer steps down before the other side may act")
    return cfg


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
            except Exception:  # nosec B110  # a connection being dropped (often after query() failed on it): its own error adds nothing
                pass
            self.conn = None

    def status(self) -> dict[str, Any] | None:
        try:
            (ro, binlog, current), = self.query("SELECT @@read_only, @@gtid_binlog_pos, @@gtid_current_pos")
        except Exception:
            return None
        return {"writable": not ro, "gtid_binlog_pos": binlog, "gtid_current_pos": current}

    def io_pos(self) -> str:
        """Everything received from the peer (applied or not)."""
        with self._cursor() as cur:
            cur.execute("SHOW SLAVE STATUS")
            row = cur.fetchone()
            names = [d[0] for d in cur.description or ()]
        # not strict: no row when this server replicates from no one (an empty dict then)
        return dict(zip(names, row or (), strict=False)).get("Gtid_IO_Pos") or ""


@dataclass
class State:
    epoch: int = 0  # the newest writer epoch this node knows of
    last_writer: str | None = None
    promoted_at: float = 0.0
    fenced_peer_at: float = 0.0  # when this node powered its peer off; 0 once the peer answers again
    # this node claimed the epoch from a writer that did not answer: it powers that writer off before
    # taking writes, even after its own restart, unless the old writer answers read-only meanwhile
    must_fence: bool = False

    @classmethod
    def load(cls, path: str) -> "State":
        try:
            with open(path) as f:
                raw = json.load(f)
            return cls(**{k: v for k, v in raw.items() if k in cls.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            return cls()

    def save(self, path: str) -> None:
        started = time.monotonic()
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(vars(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if time.monotonic() - started > 0.5:  # a busy disk: every check waits for it
            log.warning("saving %s took %.2f s", path, time.monotonic() - started)


class TLSFiles:
    """A TLS context from the agent's certificate, key and CA files, made again when one of them changes: a
    new certificate or a new CA (the stack CA rotating) is taken without a restart, which would leave the
    health port stale and make the app servers drop the writer's connections. Until the new files make a
    context (the certificate and its key are written one after the other), the last good one serves."""

    def __init__(self, cfg: Config, purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH):
        self.cfg, self.purpose, self.seen, self.ctx = cfg, purpose, None, None
        self.context()
        if self.ctx is None:
            raise ssl.SSLError(f"cannot make a TLS context from {cfg.tls_cert}, {cfg.tls_key}, {cfg.tls_ca}")

    def context(self) -> ssl.SSLContext:
        paths = (self.cfg.tls_cert, self.cfg.tls_key, self.cfg.tls_ca)
        try:
            stamp = tuple(os.stat(p).st_mtime_ns for p in paths)
        except OSError:
            return self.ctx
        if stamp != self.seen:
            try:
                ctx = ssl.create_default_context(self.purpose, cafile=self.cfg.tls_ca)
                if self.purpose is ssl.Purpose.CLIENT_AUTH:
                    ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
            except (OSError, ssl.SSLError) as e:
                log.warning("new TLS files do not make a context yet (%s); keeping the last one", e)
                return self.ctx
            if self.ctx is not None:
                log.info("new TLS files taken")
            self.ctx, self.seen = ctx, stamp
        return self.ctx


class Channel:
    """One JSON line each way over mutual TLS: to the peer's agent and to the witness."""

    def __init__(self, cfg: Config):
        self.tls = TLSFiles(cfg)

    def ask(self, name: str, ip: str, port: int, request: dict[str, Any], timeout: float = 0.6) -> dict | None:
        # short timeouts: the private network answers in a millisecond, and a tick must stay short
        # for an isolated writer to notice in time
        try:
            with socket.create_connection((ip, port), timeout=0.3) as raw:
                raw.settimeout(timeout)
                with self.tls.context().wrap_socket(raw, server_hostname=name) as s:
                    s.sendall(json.dumps(request).encode() + b"\n")
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        data += chunk
            answer = json.loads(data)
            return answer if isinstance(answer, dict) and "error" not in answer else None
        except (OSError, ValueError):
            return None


@dataclass
class Agent:
    cfg: Config
    local: Local = field(default_factory=Local)
    state: State = field(default_factory=State)
    channel: Any = None
    now: Any = time.monotonic
    status_now: dict[str, Any] = field(default_factory=dict)
    local_down_since: float | None = None
    peer_lost_since: float | None = None
    peer_down_for: float | None = None  # the peer's MariaDB down for this long, as it said at peer_seen_at
    peer_seen_at: float = -1e9
    local_up_at: float | None = None  # when this node's MariaDB was last seen coming up (or the agent started)
    witness_seen_at: float = -1e9
    last_tick_at: float = 0.0
    published_at: float = -1e9
    refence: bool = False  # a power-off under way failed: ask for it again
    peer_could_take_over: bool = True  # as of the last check: the peer is unknown or caught up with this epoch
    # answers this node gave the peer in this epoch since it last saw the peer behind: catching up
    # takes two of them (at the agent's start: unknown, so the peer may have)
    served_peer: int = 2
    witness: dict[str, Any] | None = None  # the witness's last answer: epoch, writer, members
    # the epoch this node has caught up with since its MariaDB started (never from disk: a
    # restarted master has to catch up again before it may claim the next epoch)
    synced_epoch: int | None = None
    peer_pos_before: str | None = None
    last_fence_try: float = -1e9
    fence_failures: int = 0
    restart_peer_at: float | None = None
    metrics_written: tuple | None = None

    def __post_init__(self) -> None:
        self.state = State.load(self.cfg.state_file)
        self.lock = threading.Lock()
        if self.channel is None:
            self.channel = Channel(self.cfg)
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ask")

    # -- what this node tells others
    def report(self) -> dict[str, Any]:
        with self.lock:
            return dict(self.status_now)

    def _write_health(self) -> None:
        """What the health port answers from; the clock is the system's monotonic one, shared by processes."""
        with self.lock:
            data = {"at": self.published_at, "could_be_taken_over": self.peer_could_take_over,
                    "status": self.status_now}
        tmp = self.cfg.health_file + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.cfg.health_file)
        except OSError as e:  # the app servers see a stale answer, and drop this master if it writes
            log.error("could not write %s: %s", self.cfg.health_file, e)

    def _publish(self, local: dict[str, Any] | None) -> None:
        down_for = 0.0 if self.local_down_since is None else self.now() - self.local_down_since
        with self.lock:
            self.published_at = self.now()
            self.status_now = {
                "name": self.cfg.name, "mysqld": local is not None, "mysqld_down_for": round(down_for, 2),
                "writable": bool(local and local["writable"]),
                "gtid_binlog_pos": local["gtid_binlog_pos"] if local else "",
                "epoch": self.state.epoch, "synced_epoch": self.synced_epoch,
                "last_writer": self.state.last_writer, "promoted_at": self.state.promoted_at,
            }

    # -- the other two votes
    def peer_status(self) -> dict[str, Any] | None:
        return self.channel.ask(self.cfg.peer_name, self.cfg.peer_ip, self.cfg.peer_port, {"op": "status"})

    def ask_witness(self, request: dict[str, Any]) -> dict[str, Any] | None:
        return self.channel.ask(self.cfg.witness_name, self.cfg.witness_ip, self.cfg.witness_port,
                                {"group": "mariadb", "name": self.cfg.name, **request})

    def heartbeat(self, local: dict[str, Any] | None) -> dict[str, Any] | None:
        return self.ask_witness({"op": "heartbeat", "mysqld": local is not None,
                                 "writable": bool(local and local["writable"])})

    def claim(self) -> bool:
        """Ask the witness for the next epoch; True once it is this node's."""
        epoch = self.witness["epoch"] if self.witness else self.state.epoch
        answer = self.ask_witness({"op": "claim", "epoch": epoch, "synced_epoch": self.synced_epoch})
        if answer is None:
            log.error("claim for epoch %d: the witness did not answer; no promotion", epoch + 1)
            return False
        self.witness = answer
        self._learn_epoch(answer)
        if not answer.get("granted"):
            log.warning("claim for epoch %d refused: %s", epoch + 1, answer.get("reason"))
            return False
        log.warning("epoch %d is %s's: %s", answer["epoch"], self.cfg.name, answer.get("reason"))
        self.synced_epoch = answer["epoch"]
        return True

    def _learn_epoch(self, view: dict[str, Any]) -> None:
        if view["epoch"] != self.state.epoch:
            with self.lock:
                self.served_peer = 0  # nobody has caught up with a new epoch before hearing its writer
        if view["epoch"] != self.state.epoch or view.get("writer") != self.state.last_writer:
            self.state.epoch, self.state.last_writer = view["epoch"], view.get("writer")
            self.state.save(self.cfg.state_file)

    # -- actions
    def promote(self, why: str) -> bool:
        """Take writes, once everything received from the peer is applied; False: not yet."""
        log.warning("promoting %s to writer: %s", self.cfg.name, why)
        io_pos = self.local.io_pos()
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
        log.warning("%s is the writer (epoch %d)", self.cfg.name, self.state.epoch)
        return True

    def demote(self, why: str) -> None:
        log.warning("%s steps down: %s", self.cfg.name, why)
        self.local.query("SET GLOBAL read_only = ON")

    def _client(self):
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
        return client

    def fence(self) -> bool:
        """Power the peer off through the Hetzner API; True once it is off or its power-off is under way.

        Promotion need not wait for the machine to be off (seconds, on Hetzner): the old writer's agent,
        if it runs, turned its MariaDB read-only when it lost the majority, and if it is stalled the app
        servers already stopped sending it writes (its health answer went stale). The power-off makes
        that final; it is awaited beside the agent's checks, and retried if it fails."""
        if self.cfg.peer_server_id is None:
            log.error("no server id for %s: cannot fence it, so no promotion", self.cfg.peer_name)
            return False
        try:
            client = self._client()
            server = client.servers.get_by_id(self.cfg.peer_server_id)
            if server.status == "off":
                log.warning("%s (server %d) is already off", self.cfg.peer_name, self.cfg.peer_server_id)
                return True
            log.warning("fencing %s: powering off server %d", self.cfg.peer_name, self.cfg.peer_server_id)
            action = client.servers.power_off(Server(id=self.cfg.peer_server_id))
            threading.Thread(target=self._await_power_off, args=(action,), daemon=True).start()
            return True
        except Exception as e:  # the API or the network: try again later, never promote unfenced
            log.error("fencing %s failed: %s", self.cfg.peer_name, e)
            return False

    def _await_power_off(self, action) -> None:
        try:
            action.wait_until_finished(max_retries=120)
            log.warning("%s (server %d) is off", self.cfg.peer_name, self.cfg.peer_server_id)
        except Exception as e:
            # the old writer may still run: its agent steps down when it checks, and the app servers do
            # not send it writes; the power-off is asked for again at the next check
            log.error("powering %s off failed: %s; trying again", self.cfg.peer_name, e)
            with self.lock:
                self.refence = True

    def power_on_peer(self) -> None:
        """The fenced master comes back read-only and catches up: it cannot claim the epoch before it has."""
        try:
            client = self._client()
            if client.servers.get_by_id(self.cfg.peer_server_id).status == "off":
                log.warning("powering %s (server %d) on again after its fence", self.cfg.peer_name,
                            self.cfg.peer_server_id)
                client.servers.power_on(Server(id=self.cfg.peer_server_id)).wait_until_finished(max_retries=60)
            self.restart_peer_at = None
        except Exception as e:
            log.error("powering %s on failed: %s (tried again in a minute)", self.cfg.peer_name, e)
            self.restart_peer_at = self.now() + 60

    # -- one decision
    def tick(self) -> None:
        local = self.local.status()
        # the two other votes are asked at once: an unreachable one costs its timeout, not both
        asked_witness = self.pool.submit(self.heartbeat, local)
        asked_peer = self.pool.submit(self.peer_status) if local is not None else None
        view = asked_witness.result()
        peer = asked_peer.result() if asked_peer else None
        t = self.last_tick_at = self.now()
        if view is not None:
            self.witness_seen_at, self.witness = t, view
            self._learn_epoch(view)
        if local is None:
            self.local_down_since = self.local_down_since or t
            # the peer's silence counts only while this node could act on it: after a long local
            # outage it gets the full grace again, not an instant fence
            self.peer_lost_since = None
            self.synced_epoch = None  # what this node holds is unknown until it catches up again
            self._publish(None)
            self._write_health()
            return
        if self.local_down_since is not None or self.local_up_at is None:
            self.local_up_at = t
        self.local_down_since = None
        if peer is None:
            # silence counts from the last answer (not the first failed check: that comes up to a check
            # and a timeout later), but never from before this node's MariaDB (and agent) came up
            self.peer_lost_since = self.peer_lost_since or max(self.peer_seen_at, self.local_up_at)
        else:
            self.peer_seen_at, self.peer_lost_since = t, None
            self.peer_down_for = None if peer.get("mysqld", True) else peer.get("mysqld_down_for", 0.0)
            if self.state.must_fence and not peer["writable"]:
                log.warning("%s answers read-only: no fence needed", self.cfg.peer_name)
                self.state.must_fence = False
                self.state.save(self.cfg.state_file)
            if self.state.fenced_peer_at:
                log.warning("%s answers again after being fenced", self.cfg.peer_name)
                self.state.fenced_peer_at = 0.0
                self.state.save(self.cfg.state_file)
            self.restart_peer_at = None
        self._track_sync(local, peer)
        self._decide(local, peer, view, t)
        with self.lock:
            if peer is not None and peer.get("synced_epoch") != self.state.epoch:
                self.served_peer = 0
            self.peer_could_take_over = (peer.get("synced_epoch") == self.state.epoch if peer is not None
                                         else self.served_peer >= 2)
        if self.refence and peer is None and self._fence_peer(t):  # paced like any fence
            self.refence = False
        if self.restart_peer_at is not None and t >= self.restart_peer_at:
            self.power_on_peer()
        self._publish(self.local.status() or local)
        self._write_health()
        try:
            self.write_metrics()
        except OSError as e:  # monitoring sees stale data; the pair's decisions do not wait for it
            log.warning("could not write %s: %s (tried again when the values change)", self.cfg.metrics_file, e)
            self.metrics_written = self._metric_values()

    def _track_sync(self, local: dict[str, Any], peer: dict[str, Any] | None) -> None:
        """Caught up with the epoch: the writer of the current epoch is the peer, and this node has applied
        what the peer had written half a second ago (a moving target under writes is never reached)."""
        epoch = self.state.epoch
        if local["writable"] and self.state.last_writer == self.cfg.name:
            self.synced_epoch = epoch
        elif peer and peer["writable"] and peer.get("epoch") == epoch and self.state.last_writer == self.cfg.peer_name:
            if self.peer_pos_before is not None and contains(local["gtid_current_pos"], self.peer_pos_before):
                if self.synced_epoch != epoch:
                    log.info("caught up with epoch %d (%s)", epoch, self.cfg.peer_name)
                self.synced_epoch = epoch
        self.peer_pos_before = peer["gtid_binlog_pos"] if peer and peer["writable"] else None

    def _metric_values(self) -> tuple[int, int, int, int]:
        return (int(os.path.exists(self.cfg.hold_file)), int(bool(self.state.fenced_peer_at)),
                int(self.witness_seen_at == self.last_tick_at), self.state.epoch)

    def write_metrics(self) -> None:
        """What monitoring reads; written when it changes (a tick is half a second)."""
        values = self._metric_values()
        if not self.cfg.metrics_file or values == self.metrics_written:
            return
        held, fenced, witness_ok, epoch = values
        text = ("# HELP hastack_mariadb_writes_held 1 while writes are held on purpose (a restore).\n"
                "# TYPE hastack_mariadb_writes_held gauge\n"
                f"hastack_mariadb_writes_held {held}\n"
                "# HELP hastack_mariadb_peer_fenced 1 while this master has powered its peer off and it is not back.\n"
                "# TYPE hastack_mariadb_peer_fenced gauge\n"
                f'hastack_mariadb_peer_fenced{{peer="{self.cfg.peer_name}"}} {fenced}\n'
                "# HELP hastack_mariadb_witness_reachable 1 if the witness answered this master's last check.\n"
                "# TYPE hastack_mariadb_witness_reachable gauge\n"
                f"hastack_mariadb_witness_reachable {witness_ok}\n"
                "# HELP hastack_mariadb_writer_epoch The newest writer epoch this master knows of.\n"
                "# TYPE hastack_mariadb_writer_epoch gauge\n"
                f"hastack_mariadb_writer_epoch {epoch}\n")
        os.makedirs(os.path.dirname(self.cfg.metrics_file), exist_ok=True)
        tmp = self.cfg.metrics_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.cfg.metrics_file)  # the collector never reads half a file
        self.metrics_written = values

    def _decide(self, local: dict[str, Any], peer: dict[str, Any] | None, view: dict[str, Any] | None,
                t: float) -> None:
        cfg = self.cfg
        if os.path.exists(cfg.hold_file):
            if local["writable"]:
                self.demote(f"writes are held until a restore ends ({cfg.hold_file})")
            return
        if local["writable"]:
            self._decide_writable(peer, view, t)
            return
        if peer and peer["writable"]:
            return  # the peer writes; this node replicates
        if view is None:
            return  # no majority without the witness: never promote
        writer = view["writer"]
        if writer is None:
            # the pair's first start: the preferred master, once it holds everything the peer wrote
            if peer and peer["mysqld"] and cfg.name == cfg.preferred and contains(
                    local["gtid_current_pos"], peer["gtid_binlog_pos"]) and self.claim():
                self.promote("the pair's first writer")
            return
        if writer == cfg.name:
            # this node holds the epoch: its MariaDB restarted, or both did, or it claimed and must fence
            if self.state.must_fence and not self._fence_peer(t):
                return
            self.promote(f"it holds epoch {view['epoch']}")
            return
        # the peer holds the epoch: take it only if the peer's MariaDB is down, or the peer is gone
        seen = view["members"].get(cfg.peer_name, {})
        if peer is None and seen.get("mysqld") and seen.get("silent_for", 1e9) < self.witness_dead_after():
            return  # the witness hears the writer: only the link between the two is cut
        if peer is not None:
            # its own agent says MariaDB is down: no split brain to fear (it comes back read-only), so
            # half the wait
            if peer["mysqld"] or peer["mysqld_down_for"] < cfg.failover_after / 2:
                return
            why = f"MariaDB on {cfg.peer_name} is down ({peer['mysqld_down_for']:.1f} s)"
        else:
            if t - self.peer_lost_since < cfg.failover_after:
                return
            why = f"{cfg.peer_name} unreachable for {t - self.peer_lost_since:.1f} s"
        if self.synced_epoch != view["epoch"]:
            return  # stale: a promotion would hide the writes of the current epoch (the witness refuses too)
        if not self.claim():
            return
        if peer is None:  # an agent that answers and is read-only needs no fence
            self.state.must_fence = True
            self.state.save(self.cfg.state_file)
        if self.state.must_fence and not self._fence_peer(t):
            return
        self.promote(why)

    def _decide_writable(self, peer: dict[str, Any] | None, view: dict[str, Any] | None, t: float) -> None:
        cfg = self.cfg
        if view is not None:
            if view["writer"] is None and view["epoch"] == 0:
                self.claim()  # writable before the witness knew the pair: record this node as the writer
            elif view["writer"] != cfg.name:
                self.demote(f"epoch {view['epoch']} belongs to {view['writer']}")
            return
        if t - self.peer_seen_at >= cfg.isolation_after and t - self.witness_seen_at >= cfg.isolation_after:
            self.demote(f"neither {cfg.peer_name} nor the witness answered for {cfg.isolation_after:.1f} s: "
                        "no majority")
            return
        if peer and peer["writable"] and (peer.get("epoch", 0), peer.get("promoted_at", 0)) > (
                self.state.epoch, self.state.promoted_at):
            self.demote(f"{cfg.peer_name} holds a newer epoch")

    def witness_dead_after(self) -> float:
        """After how long a silent writer's epoch may be claimed: the witness's rule, as it says it."""
        return float((self.witness or {}).get("dead_after", 0.9 * self.cfg.failover_after))

    def next_check_at(self, started: float) -> float:
        """Checks run every `interval` from their start (a check that waited for a timeout does not
        push the next one back), and sooner when a grace ends before then: the moment a silent
        peer may be taken over, or a writer that hears nobody must step down."""
        at = started + self.cfg.interval
        status, view, t = self.status_now, self.witness, self.last_tick_at
        if not status.get("mysqld"):
            return at
        if status.get("writable"):
            if self.peer_seen_at < t and self.witness_seen_at < t:  # neither answered the last check
                at = min(at, max(self.peer_seen_at, self.witness_seen_at) + self.cfg.isolation_after)
        elif view and view.get("writer") == self.cfg.peer_name and self.synced_epoch == view.get("epoch"):
            seen = view["members"].get(self.cfg.peer_name, {})
            if self.peer_lost_since is not None:
                # (+ 20 ms: the witness rounds silent_for; a claim a hair early is refused and waits a check)
                witness_due = self.witness_seen_at + self.witness_dead_after() - seen.get("silent_for", 0.0) + 0.02
                at = min(at, max(self.peer_lost_since + self.cfg.failover_after, witness_due))
            elif self.peer_down_for is not None:
                at = min(at, self.peer_seen_at + self.cfg.failover_after / 2 - self.peer_down_for)
        return max(at, t + 0.02)  # never a busy loop

    def _fence_peer(self, t: float) -> bool:
        """Power the old writer off; failed attempts back off (5, 10, 20 ... 60 s): the API's rate limit is shared."""
        wait = min(MAX_FENCE_BACKOFF, self.cfg.fence_retry * 2 ** max(0, self.fence_failures - 1))
        if self.fence_failures and t - self.last_fence_try < wait:
            return False
        self.last_fence_try = t
        if not self.fence():
            self.fence_failures += 1
            return False
        self.fence_failures, self.state.must_fence = 0, False
        self.state.fenced_peer_at = time.time()
        self.state.save(self.cfg.state_file)
        if self.cfg.restart_fenced_after is not None:
            self.restart_peer_at = t + self.cfg.restart_fenced_after
        return True

    def run(self) -> None:
        os.makedirs(os.path.dirname(self.cfg.health_file), exist_ok=True)
        self._publish(None)  # `down` until the first check
        self._write_health()
        health = HealthProcess(self.cfg)
        serve_peer(self)
        while True:
            health.keep_running()
            started = self.now()
            try:
                self.tick()
            except Exception:
                log.exception("check failed")
                self.local.close()
            took = self.now() - started
            if took > FRESH_FOR - self.cfg.interval:
                # the health answer went stale meanwhile: the app servers may have dropped this master
                log.warning("a check took %.2f s (its answer is fresh for %.1f s)", took, FRESH_FOR)
            time.sleep(max(0.0, self.next_check_at(started) - self.now()))


def serving(health: dict[str, Any] | None, now: float) -> bool:
    """`up` for the app servers: writable as of a recent check. An agent that stops checking (stalled,
    hung) stops saying `up`, so the app servers drop this master before the witness lets the other take
    over from it; unless the other cannot take over (it has not caught up with this epoch, and cannot
    while this agent is silent): then dropping the writer would only be an outage."""
    if not health or not health["status"].get("writable"):
        return False
    return now - health["at"] <= FRESH_FOR or not health["could_be_taken_over"]


def read_health(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class _HealthHandler(socketserver.StreamRequestHandler):
    """The app servers' HAProxy check: only the writer takes the application's connections.

    Answered from the health file by a process of its own, so a stall of the agent's checks (a
    pause, a slow query) does not silence it; the file's age says how fresh the answer is.
    `status` gets the JSON that agents before the witness asked their peer for: a converge that
    upgrades the pair replaces one agent before the other, and an old agent that got no answer
    would take its upgraded peer for dead and fence it. Nothing this agent decides reads it."""
    timeout = 1

    def handle(self) -> None:
        cfg: Config = self.server.cfg  # type: ignore[attr-defined]
        try:
            line = self.rfile.readline(64).strip()
            health = read_health(cfg.health_file)
            if health is None:
                # unreadable for a moment (out of file descriptors under a flood): the last answer read,
                # whose age still decides whether it is fresh enough to say `up`
                health = self.server.last_health  # type: ignore[attr-defined]
            else:
                self.server.last_health = health  # type: ignore[attr-defined]
            if line == b"status" and health and health["status"]:
                self.wfile.write(json.dumps(health["status"]).encode() + b"\n")
            else:
                self.wfile.write(b"up ready\n" if serving(health, self.server.now()) else b"down\n")  # type: ignore[attr-defined]
        except OSError:
            pass


class _PeerHandler(socketserver.StreamRequestHandler):
    """The peer's question, over mutual TLS: only the peer's certificate is answered."""
    timeout = 1

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        self.request = self.server.tls.context().wrap_socket(self.request, server_side=True)  # type: ignore[attr-defined]
        super().setup()

    def handle(self) -> None:
        agent: Agent = self.server.agent  # type: ignore[attr-defined]
        cert = self.connection.getpeercert() or {}
        names = [v for kind, v in cert.get("subjectAltName", ()) if kind == "DNS"]
        try:
            request = json.loads(self.rfile.readline(256) or b"{}")
            if agent.cfg.peer_name not in names:
                self.wfile.write(b'{"error": "not the peer"}\n')
            elif not agent.report():
                self.wfile.write(b'{"error": "starting"}\n')  # no answer is better than an empty one
            elif isinstance(request, dict) and request.get("op") == "status":
                self.wfile.write(json.dumps(agent.report()).encode() + b"\n")
                with agent.lock:
                    agent.served_peer += 1
        except (OSError, ValueError):
            pass


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    # every app server's HAProxy checks the health port twice a second: a backlog of 5 (the default)
    # overflows under a burst
    request_queue_size = 512

    def handle_error(self, request, client_address) -> None:
        log.debug("connection from %s failed: %s", client_address[0], sys.exc_info()[1])


def health_server(cfg: Config, now=time.monotonic) -> _Server:
    srv = _Server((cfg.bind, cfg.port), _HealthHandler)
    srv.cfg, srv.now, srv.last_health = cfg, now, None  # type: ignore[attr-defined]
    return srv


class HealthProcess:
    """The health port in a child process, started again if it dies (systemd ends both together)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.server = health_server(cfg)  # bound before the fork: a port in use fails the agent at once
        self.pid = self._fork()

    def _fork(self) -> int:
        pid = os.fork()
        if pid == 0:
            try:
                self.server.serve_forever()
            finally:
                os._exit(1)
        return pid

    def keep_running(self) -> None:
        done, status = os.waitpid(self.pid, os.WNOHANG)
        if done:
            log.error("the health process ended (status %d); starting it again", status)
            self.pid = self._fork()


def serve_peer(agent: Agent) -> _Server:
    peer = _Server((agent.cfg.bind, agent.cfg.peer_port), _PeerHandler)
    peer.tls = TLSFiles(agent.cfg, ssl.Purpose.CLIENT_AUTH)  # type: ignore[attr-defined]
    peer.agent = agent  # type: ignore[attr-defined]
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    return peer


def serve(agent: Agent) -> tuple[_Server, _Server]:
    """Both ports in this process's threads (tests; `run` puts the health port in a process of its own)."""
    health = health_server(agent.cfg, agent.now)
    threading.Thread(target=health.serve_forever, daemon=True).start()
    return health, serve_peer(agent)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hastack-mariadb-writer")
    p.add_argument("--config", default="/etc/hastack/mariadb-writer.json")
    p.add_argument("command", choices=["run", "status", "claim"])
    p.add_argument("--force", action="store_true", help="claim: required; the rules are not checked")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    cfg = load_config(args.config)
    if args.command == "claim":
        if not args.force:
            p.error("claim takes the epoch whatever the rules say: pass --force if that is what you want")
        agent = Agent(cfg)
        view = agent.ask_witness({"op": "view"})
        if view is None:
            print(f"the witness ({cfg.witness_name}) did not answer", file=sys.stderr)
            return 1
        answer = agent.ask_witness({"op": "claim", "epoch": view["epoch"], "force": True})
        print(json.dumps(answer, indent=2))
        if not answer or not answer.get("granted"):
            return 1
        agent._learn_epoch(answer)
        return 0
    if args.command == "status":
        agent = Agent(cfg)
        print(json.dumps({"local": agent.local.status(), "peer": agent.peer_status(),
                          "witness": agent.ask_witness({"op": "view"}), "state": vars(agent.state)}, indent=2))
        return 0
    Agent(cfg).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
