"""Floating IP failover agent for the hastack load balancers.

keepalived runs this file as its `notify` script on both load balancers; it
moves the shared Hetzner floating IP to the server whose keepalived became
MASTER, through the Hetzner Cloud API (hcloud library), and keeps the address
configured on the local interface only while this server is MASTER. It is
deployed as a single file, so it imports only the standard library and hcloud.

Commands:
  notify INSTANCE_TYPE NAME STATE [PRIORITY]  what keepalived passes to a notify script
  take [--force]                               move the floating IP here (idempotent)
  reconcile                                    compare keepalived's state with the API; repair or alert
  watch --every SECONDS                        reconcile every SECONDS, in one process (the reconcile service)
  status                                       print local state, API owner and the witness's view as JSON

Exit codes: 0 done, 1 mismatch alert, failed action or takeover withheld (see
the tie-break), 2 bad config or token file, 3 API unreachable or failing after
`max_attempts` attempts.

Tie-break through the witness: two load balancers that cannot see each other
both become MASTER. Each would take the floating IP from the other on every
reconcile, and a load balancer cut off from the private network (and so from
the app servers) could still take it through the public API. So the agent
takes the IP freely only when it is unassigned or already here; to take it
AWAY from the peer (the API names the peer as owner) it asks the witness on the
monitoring host (TCP, mutual TLS, one JSON line each way:
{"op": "alive", "group": "lb", "name": <us>, "member": <peer>} ->
{"alive": bool}; the witness tries the peer's HAProxy port on the private
network) and takes only when the witness answers that the peer is NOT alive.
Peer alive: a partition between the two load balancers while the peer still
serves; nothing moves, a warning is logged, exit 1. Witness unreachable or
failing: this side may be the isolated one and, without a majority, does not
act either (exit 1). Both publish `hastack_floating_ip_withheld 1`. On a
MASTER notify the peer may be dying just now: an "alive" answer is asked again
(`WITNESS_REASKS` times, `WITNESS_REASK_DELAY` apart, re-reading the owner
from the API each time) before giving up.

Release: because the MASTER does not take the IP from a peer the witness sees
alive, a load balancer that keepalived makes BACKUP, FAULT or STOP gives the IP
up itself when the API still names it as owner (on a notify after
`RELEASE_DELAY`, so that a new MASTER the witness lets take first does so). A
BACKUP hears the MASTER's adverts, so it assigns the IP to the peer directly;
FAULT or STOP unassign it, and the MASTER then takes the unassigned IP without
asking anyone. That is
what moves the IP after a partition heals to the other side or after
keepalived is restarted on the master.

Operator override: `take --force` takes the IP from the peer without asking
the witness (the witness is down and the operator knows the peer is gone, or
a planned move while the peer's HAProxy still answers).

Fencing: Hetzner routes a floating IP to exactly one server, so the assign
itself is the fence: once its action succeeds the old master receives no more
traffic for the IP, even if it still has the address configured. Powering off
the peer (`poweroff_peer_on_takeover`) is off by default: in a partition
between the two load balancers both become MASTER and would power off each
other. When enabled, the peer is powered off only after a takeover that moved
the IP away from it, and only if it is not already off.

Retries: hcloud 2.27 retries internally (up to 5 times, 1-60 s, on
rate_limit_exceeded, conflict, 502/504 and timeouts, but not on refused
connections) and its exceptions carry no response headers. The agent turns
that off and retries itself: bounded by `max_attempts`, exponential backoff
with jitter, and on rate_limit_exceeded at least as long as the RateLimit-*
headers say it takes to get one request back (Hetzner refills the budget
gradually, RateLimit-Reset is when it is full again: waiting for that would
take up to an hour).
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import logging
import logging.handlers
import os
import random
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

from hcloud import APIException, Client
from hcloud import __version__ as hcloud_version
from hcloud.floating_ips import FloatingIP
from hcloud.servers import Server

log = logging.getLogger("hastack-failover")

DEFAULT_CONFIG = "/etc/hastack/failover.json"
STATES = ("MASTER", "BACKUP", "FAULT", "STOP")
EXIT_OK, EXIT_MISMATCH, EXIT_CONFIG, EXIT_API = 0, 1, 2, 3

HTTP_TIMEOUT = (5, 20)  # connect, read: hcloud's default is no timeout at all
MAX_BACKOFF = 30.0
ACTION_TIMEOUT = 60.0
WITNESS_CONNECT_TIMEOUT = 1.0
WITNESS_TIMEOUT = 2.0      # the whole question: connect, TLS handshake, request, answer
WITNESS_MAX_ANSWER = 4096  # one JSON line
WITNESS_REASKS = 3         # on a MASTER notify: asked again this many times while the peer looks alive ...
WITNESS_REASK_DELAY = 1.0  # ... this far apart (keepalived notices a dead peer within 1-3 s)
RELEASE_DELAY = 1.0        # a notified BACKUP/FAULT/STOP owner waits this long before it unassigns
# Retried besides HTTP 5xx: transient by Hetzner's definition, or another action holds the lock.
RETRY_CODES = {"rate_limit_exceeded", "conflict", "locked", "timeout", "bad_gateway",
               "server_error", "service_error", "unavailable", "maintenance"}


class ConfigError(Exception):
    pass


class ApiError(Exception):
    pass


class WitnessError(Exception):
    """No usable answer from the witness: unreachable, TLS refused, timeout, an error or a garbled answer."""


# ------------------------------------------------------------------ config


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0


def _text(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _abs_path(v: Any) -> bool:
    return _text(v) and v.startswith("/")


def _ipv4(v: Any) -> bool:
    try:
        ipaddress.IPv4Address(v)
        return True
    except ValueError:
        return False


def _port(v: Any) -> bool:
    return _pos_int(v) and v <= 65535


def _hostname(v: Any) -> bool:
    return _text(v) and len(v) <= 253 and all(c.isalnum() or c in "-." for c in v)


REQUIRED = object()
# key: (check, what is valid, default)
SCHEMA: dict[str, tuple[Callable[[Any], bool], str, Any]] = {
    "api_endpoint": (lambda v: _text(v) and v.startswith(("https://", "http://")),
                     "an http(s) URL", "https://api.hetzner.cloud/v1"),
    "token_file": (_abs_path, "an absolute path", "/etc/hastack/hcloud-token"),
    "ca_file": (lambda v: v is None or _abs_path(v), "an absolute path to a PEM CA bundle, or null", None),
    "floating_ip_id": (_pos_int, "a positive integer (the Hetzner floating IP id)", REQUIRED),
    "floating_ip": (_ipv4, "an IPv4 address string", REQUIRED),
    "server_id": (_pos_int, "a positive integer (this server's Hetzner id)", REQUIRED),
    "server_name": (_text, "a non-empty string", REQUIRED),
    "peer_server_id": (_pos_int, "a positive integer (the other load balancer's Hetzner id)", REQUIRED),
    "peer_name": (_hostname, "a host name (the other load balancer's server name)", REQUIRED),
    "interface": (lambda v: _text(v) and len(v) <= 15 and not any(c in v for c in " /"),
                  "a network interface name such as eth0", REQUIRED),
    "state_file": (_abs_path, "an absolute path", "/run/hastack/failover-state.json"),
    "poweroff_peer_on_takeover": (lambda v: isinstance(v, bool), "true or false", False),
    "max_attempts": (_pos_int, "a positive integer", 6),
    "initial_backoff": (_number, "a number of seconds >= 0", 0.5),
    "min_interval": (_number, "a number of seconds >= 0", 0.25),
    # node exporter textfile: whether this load balancer has the floating IP configured (null: none)
    "metrics_file": (lambda v: v is None or (_abs_path(v) and v.endswith(".prom")),
                     "an absolute path ending in .prom, or null", None),
    # the witness (monitoring host): its certificate's name, private address and port; our client TLS files
    "witness_name": (_hostname, "a host name (the name in the witness's certificate)", REQUIRED),
    "witness_ip": (_ipv4, "an IPv4 address string (the witness's private address)", REQUIRED),
    "witness_port": (_port, "a TCP port number (1-65535)", 9107),
    "witness_cert": (_abs_path, "an absolute path (PEM client certificate chain)", "/etc/hastack/witness/client.crt"),
    "witness_key": (_abs_path, "an absolute path (PEM client key)", "/etc/hastack/witness/client.key"),
    "witness_ca": (_abs_path, "an absolute path (PEM CA that signed the witness's certificate)",
                   "/etc/hastack/witness/ca.crt"),
}


@dataclass(frozen=True)
class Config:
    api_endpoint: str
    token_file: str
    ca_file: str | None
    floating_ip_id: int
    floating_ip: str
    server_id: int
    server_name: str
    peer_server_id: int
    peer_name: str
    interface: str
    state_file: str
    poweroff_peer_on_takeover: bool
    max_attempts: int
    initial_backoff: float
    min_interval: float
    metrics_file: str | None
    witness_name: str
    witness_ip: str
    witness_port: int
    witness_cert: str
    witness_key: str
    witness_ca: str


def load_config(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config {path} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a JSON object")
    for key in raw:
        if key not in SCHEMA:
            raise ConfigError(f"config {path}: unknown key {key!r}; valid keys: {', '.join(SCHEMA)}")
    values = {}
    for key, (check, valid, default) in SCHEMA.items():
        if key not in raw:
            if default is REQUIRED:
                raise ConfigError(f"config {path}: missing required key {key!r} ({valid})")
            values[key] = default
        elif not check(raw[key]):
            raise ConfigError(f"config {path}: key {key!r} is {raw[key]!r}; it must be {valid}")
        else:
            values[key] = raw[key]
    if values["server_id"] == values["peer_server_id"]:
        raise ConfigError(f"config {path}: server_id and peer_server_id are both {values['server_id']}")
    if values["server_name"] == values["peer_name"]:
        raise ConfigError(f"config {path}: server_name and peer_name are both {values['server_name']!r}")
    if values["ca_file"] is not None and not os.path.isfile(values["ca_file"]):
        raise ConfigError(f"config {path}: ca_file {values['ca_file']} does not exist")
    return Config(**values)


def read_token(path: str) -> str:
    """The API token, only from a root-owned file nobody else can read."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(f"cannot read token file {path}: {e.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"token file {path} is not a regular file")
    if st.st_uid != 0:
        raise ConfigError(f"token file {path} is owned by uid {st.st_uid}; it must be owned by root "
                          f"(chown root:root {path})")
    if mode not in (0o600, 0o400):
        raise ConfigError(f"token file {path} has mode {mode:04o}; it must be 0600 or 0400, "
                          f"not readable by group or others (chmod 600 {path})")
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if not token:
        raise ConfigError(f"token file {path} is empty")
    # requests quotes a bad header value in its error, which would put the token in the log.
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise ConfigError(f"token file {path} holds whitespace or non-ASCII characters inside the token")
    return token


# ------------------------------------------------------------------ the witness


def ask_witness(cfg: Config, member: str, timeout: float = WITNESS_TIMEOUT) -> bool:
    """Whether the witness reaches ``member`` (mutual TLS, one JSON line each way); WitnessError otherwise.

    The TLS files are read on each question, not at config load: without them the
    agent still takes an unassigned IP, it only cannot outvote a live-looking peer.
    """
    where = f"witness {cfg.witness_name} ({cfg.witness_ip}:{cfg.witness_port})"
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.witness_ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(cfg.witness_cert, cfg.witness_key)
    except (OSError, ssl.SSLError) as e:
        raise WitnessError(f"cannot load the witness client TLS files ({cfg.witness_cert}, {cfg.witness_key}, "
                           f"{cfg.witness_ca}): {e}") from None
    request = {"op": "alive", "group": "lb", "name": cfg.server_name, "member": member}
    deadline = time.monotonic() + timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        return remaining

    try:
        raw = socket.create_connection((cfg.witness_ip, cfg.witness_port), timeout=min(WITNESS_CONNECT_TIMEOUT, left()))
        with raw:
            raw.settimeout(left())
            with ctx.wrap_socket(raw, server_hostname=cfg.witness_name) as conn:
                conn.settimeout(left())
                conn.sendall(json.dumps(request).encode() + b"\n")
                answer = b""
                while b"\n" not in answer:
                    conn.settimeout(left())
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    answer += chunk
                    if len(answer) > WITNESS_MAX_ANSWER:
                        raise WitnessError(f"{where}: answer longer than {WITNESS_MAX_ANSWER} bytes")
    except (OSError, ssl.SSLError) as e:  # refused, unreachable, timeouts, TLS verification
        raise WitnessError(f"{where}: {type(e).__name__}: {e}") from None
    line = answer.split(b"\n", 1)[0].strip()
    if not line:
        raise WitnessError(f"{where}: closed the connection without an answer")
    try:
        reply = json.loads(line)
    except ValueError:
        raise WitnessError(f"{where}: answer is not JSON: {line[:200]!r}") from None
    if isinstance(reply, dict) and isinstance(reply.get("alive"), bool):
        return reply["alive"]
    if isinstance(reply, dict) and "error" in reply:
        raise WitnessError(f"{where} answered an error: {str(reply['error'])[:200]}")
    raise WitnessError(f"{where}: unexpected answer {line[:200]!r}")


# ------------------------------------------------------------------ API access


class HetznerAPI:
    """hcloud calls, paced and retried by us (see the module docstring)."""

    def __init__(self, cfg: Config, token: str, sleep: Callable[[float], None] = time.sleep):
        self.cfg = cfg
        self.sleep = sleep
        self.client = Client(token=token, api_endpoint=cfg.api_endpoint,
                             application_name="hastack-failover", timeout=HTTP_TIMEOUT)
        # hcloud 2.27 has no public setting for these: its ClientBase holds them.
        base = self.client._client
        if not hasattr(base, "_retry_max_retries") or not hasattr(base, "_session"):
            raise ConfigError(f"hcloud {hcloud_version} is not supported: install hcloud==2.27.0")
        base._retry_max_retries = 0  # one place retries: here, bounded by max_attempts
        session = base._session
        if cfg.ca_file:
            session.verify = cfg.ca_file
            # Otherwise REQUESTS_CA_BUNDLE in the environment would win over the configured CA.
            session.trust_env = False
        session.hooks["response"].append(self._remember_rate_limit)
        self.last_call: float | None = None
        self.not_before = 0.0  # monotonic time when the API has a request for us again

    def _remember_rate_limit(self, response: Any, *args: Any, **kwargs: Any) -> None:
        try:
            limit = int(response.headers["RateLimit-Limit"])
            remaining = int(response.headers["RateLimit-Remaining"])
            reset = int(response.headers["RateLimit-Reset"])
        except (KeyError, ValueError):
            return
        if remaining > 0:
            self.not_before = 0.0
        else:
            # The budget refills evenly until RateLimit-Reset; one request comes back first.
            until_full = max(0.0, reset - time.time())
            self.not_before = time.monotonic() + until_full / max(1, limit - remaining)

    def refill_wait(self) -> float:
        """Seconds until the API gives back one request, from the last RateLimit-* headers."""
        return max(0.0, self.not_before - time.monotonic())

    def _pace(self) -> None:
        wait = self.refill_wait()
        if self.last_call is not None:
            wait = max(wait, self.last_call + self.cfg.min_interval - time.monotonic())
        if wait > 0:
            self.sleep(wait)
        self.last_call = time.monotonic()

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        reason = ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            self._pace()
            rate_limited = False
            try:
                return fn()
            except APIException as e:
                retryable = e.code in RETRY_CODES or (isinstance(e.code, int) and (e.code >= 500 or e.code == 429))
                if not retryable:
                    raise ApiError(f"{what}: API error {e.code}: {e.message}") from None
                rate_limited = e.code in ("rate_limit_exceeded", 429)
                reason = f"API error {e.code}: {e.message}"
            except OSError as e:  # requests' errors are OSErrors: refused, timeouts, TLS
                reason = f"{type(e).__name__}: {e}"
            if attempt == self.cfg.max_attempts:
                break
            delay = min(MAX_BACKOFF, self.cfg.initial_backoff * 2 ** (attempt - 1))
            delay += random.uniform(0, delay / 2)  # nosec B311  # retry jitter, not security
            if rate_limited:
                delay = max(delay, self.refill_wait())
            log.warning("%s failed (%s); attempt %d/%d, retrying in %.2fs",
                        what, reason, attempt, self.cfg.max_attempts, delay)
            self.sleep(delay)
        log.error("%s: giving up after %d attempts; last error: %s", what, self.cfg.max_attempts, reason)
        raise ApiError(f"{what}: API unreachable or failing after {self.cfg.max_attempts} attempts")

    def floating_ip_owner(self) -> int | None:
        fip = self.call(f"get floating IP {self.cfg.floating_ip_id}",
                        lambda: self.client.floating_ips.get_by_id(self.cfg.floating_ip_id))
        if fip.ip != self.cfg.floating_ip:
            raise ConfigError(f"floating IP id {self.cfg.floating_ip_id} is {fip.ip} in the API, "
                              f"the config says {self.cfg.floating_ip}")
        return fip.server.id if fip.server is not None else None

    def wait_action(self, what: str, action: Any, poll: float) -> None:
        deadline = time.monotonic() + ACTION_TIMEOUT
        while action.status == "running":
            if time.monotonic() > deadline:
                raise ApiError(f"{what}: action {action.id} still running after {ACTION_TIMEOUT:.0f}s")
            self.sleep(poll)
            # the id bound here, to say which action is polled (self.call runs it before `action` is rebound)
            action = self.call(f"poll action {action.id}",
                               lambda action_id=action.id: self.client.actions.get_by_id(action_id))
        if action.status != "success":
            err = action.error or {}
            raise ApiError(f"{what}: action {action.id} ended {action.status}: "
                           f"{err.get('code', '?')}: {err.get('message', '')}")


# ------------------------------------------------------------------ local state


Runner = Callable[[list[str]], tuple[int, str, str]]


def run_ip(args: list[str]) -> tuple[int, str, str]:
    """Run `ip ARGS`; keepalived's PATH may lack /usr/sbin."""
    ip = shutil.which("ip") or "/usr/sbin/ip"
    proc = subprocess.run([ip, *args], capture_output=True, text=True, timeout=10, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def read_state(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def notify_order() -> list[int]:
    """This process's place among keepalived's notifies: when it started (clock ticks since boot), then
    its pid. keepalived starts one notify per transition, in the transitions' order, and does not wait
    for them; on a busy host a later one can reach the state file first (BACKUP recorded, then the
    MASTER before it). The order they were started in is keepalived's."""
    with open("/proc/self/stat", encoding="ascii") as f:
        after_name = f.read().rsplit(")", 1)[1].split()  # the name, in parentheses, may hold spaces
    return [int(after_name[19]), os.getpid()]  # starttime is the stat file's 22nd field


def write_state(path: str, data: dict[str, Any]) -> None:
    """Atomically: readers see the old state or the new one, never half of it."""
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".failover-state.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ------------------------------------------------------------------ the agent


class FailoverAgent:
    def __init__(self, cfg: Config, token: str, runner: Runner = run_ip,
                 sleep: Callable[[float], None] = time.sleep, action_poll: float = 1.0):
        self.cfg = cfg
        self.api = HetznerAPI(cfg, token, sleep)
        self.runner = runner
        self.sleep = sleep
        self.action_poll = action_poll
        self.withheld = False  # this run refused to take the IP from the peer (published as a metric)

    @contextmanager
    def _lock(self, what: str = ""):
        # keepalived starts notify scripts without waiting; one agent acts at a time (and, with
        # what=".record", one records its state at a time, held only for that)
        os.makedirs(os.path.dirname(self.cfg.state_file), mode=0o755, exist_ok=True)
        with open(self.cfg.state_file + what + ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    # local address

    def ip_configured(self) -> bool:
        rc, out, err = self.runner(["-o", "addr", "show", "dev", self.cfg.interface])
        if rc != 0:
            raise RuntimeError(f"ip addr show dev {self.cfg.interface} failed: {err.strip()}")
        for line in out.splitlines():
            words = line.split()
            for i, w in enumerate(words[:-1]):
                if w == "inet" and words[i + 1].split("/")[0] == self.cfg.floating_ip:
                    return True
        return False

    def ensure_ip(self) -> None:
        if self.ip_configured():
            log.info("%s already configured on %s", self.cfg.floating_ip, self.cfg.interface)
            return
        rc, _, err = self.runner(["addr", "add", f"{self.cfg.floating_ip}/32", "dev", self.cfg.interface])
        if rc != 0:
            raise RuntimeError(f"ip addr add {self.cfg.floating_ip}/32 dev {self.cfg.interface} failed: {err.strip()}")
        log.info("added %s/32 to %s", self.cfg.floating_ip, self.cfg.interface)

    def remove_ip(self) -> None:
        if not self.ip_configured():
            log.info("%s not configured on %s, nothing to remove", self.cfg.floating_ip, self.cfg.interface)
            return
        rc, _, err = self.runner(["addr", "del", f"{self.cfg.floating_ip}/32", "dev", self.cfg.interface])
        if rc != 0 and "Cannot assign requested address" not in err:  # gone meanwhile: fine
            raise RuntimeError(f"ip addr del {self.cfg.floating_ip}/32 dev {self.cfg.interface} failed: {err.strip()}")
        log.info("removed %s/32 from %s", self.cfg.floating_ip, self.cfg.interface)

    # commands

    def take(self, force: bool = False) -> int:
        with self._lock():
            return self._take(force=force)

    def _take(self, force: bool = False, reasks: int = 0, still_master: Callable[[], bool] | None = None) -> int:
        cfg = self.cfg
        owner = self.api.floating_ip_owner()
        if owner == cfg.peer_server_id:
            if force:
                log.warning("take --force: taking floating IP %s from peer %s (id %d) without asking the witness",
                            cfg.floating_ip, cfg.peer_name, cfg.peer_server_id)
            else:
                owner, stop = self._witness_vote(reasks, still_master)
                if stop is not None:
                    return stop
        if owner == cfg.server_id:
            log.info("already holds floating IP %s (id %d); no assign", cfg.floating_ip, cfg.floating_ip_id)
        else:
            log.info("assigning floating IP %s (id %d) from server %s to this server %s (id %d)",
                     cfg.floating_ip, cfg.floating_ip_id, owner, cfg.server_name, cfg.server_id)
            action = self.api.call(
                f"assign floating IP {cfg.floating_ip_id} to server {cfg.server_id}",
                lambda: self.api.client.floating_ips.assign(FloatingIP(id=cfg.floating_ip_id), Server(id=cfg.server_id)))
            self.api.wait_action("assign", action, self.action_poll)
            log.info("floating IP %s now routed to this server (action %d succeeded)", cfg.floating_ip, action.id)
        self.ensure_ip()
        if owner == cfg.peer_server_id and cfg.poweroff_peer_on_takeover:
            return self._poweroff_peer()
        return EXIT_OK

    def _witness_vote(self, reasks: int, still_master: Callable[[], bool] | None) -> tuple[int | None, int | None]:
        """The API names the peer as owner: may this server take the IP from it?

        (owner, None) to go ahead, ``owner`` as last read from the API; (owner, exit code) to stop.
        While the witness still reaches the peer, it is asked again ``reasks`` times, the owner
        re-read before each (the peer may release the IP meanwhile), and ``still_master`` checked.
        """
        cfg = self.cfg
        peer = f"{cfg.peer_name} (id {cfg.peer_server_id})"
        owner: int | None = cfg.peer_server_id
        for attempt in range(reasks + 1):
            if attempt:
                self.sleep(WITNESS_REASK_DELAY)
                if still_master is not None and not still_master():
                    log.info("keepalived left MASTER while the witness was asked; not taking floating IP %s",
                             cfg.floating_ip)
                    return owner, EXIT_OK
                owner = self.api.floating_ip_owner()
                if owner != cfg.peer_server_id:
                    log.info("floating IP %s is now on server %s, no longer on peer %s; no witness needed",
                             cfg.floating_ip, owner, peer)
                    return owner, None
            try:
                alive = ask_witness(cfg, cfg.peer_name)
            except WitnessError as e:
                self.withheld = True
                log.error("not taking floating IP %s from peer %s: no answer from the witness (%s). This server may be "
                          "the isolated one; without the witness's vote it does not move the IP "
                          "(operator override: hastack-failover take --force)", cfg.floating_ip, peer, e)
                return owner, EXIT_MISMATCH
            if not alive:
                log.info("the witness cannot reach peer %s either: taking floating IP %s from it", peer, cfg.floating_ip)
                return owner, None
            if attempt < reasks:
                log.info("the witness still reaches peer %s; asking again in %.1fs (%d/%d)",
                         peer, WITNESS_REASK_DELAY, attempt + 1, reasks)
        self.withheld = True
        log.warning("partition between the load balancers: keepalived says MASTER here, but the witness still reaches "
                    "peer %s, which holds floating IP %s and still serves; not taking it (operator override: "
                    "hastack-failover take --force)", peer, cfg.floating_ip)
        return owner, EXIT_MISMATCH

    def _release(self, state: str, delay: float) -> int:
        """Not MASTER (keepalived says ``state``) but the API routes the IP here: unassign it, so that
        the MASTER takes it without having to outvote a live peer. After ``delay`` s, unless this
        server became MASTER or the IP moved meanwhile."""
        cfg = self.cfg
        if self.api.floating_ip_owner() != cfg.server_id:
            return EXIT_OK
        if delay:
            log.info("state %s but the API routes floating IP %s here; releasing it in %.1fs unless the MASTER "
                     "takes it first", state, cfg.floating_ip, delay)
            self.sleep(delay)
            now = read_state(cfg.state_file).get("state")
            if now == "MASTER":
                log.info("keepalived made this server MASTER meanwhile; keeping floating IP %s", cfg.floating_ip)
                return EXIT_OK
            owner = self.api.floating_ip_owner()
            if owner != cfg.server_id:
                log.info("floating IP %s moved to server %s meanwhile; nothing to release", cfg.floating_ip, owner)
                return EXIT_OK
        if state == "BACKUP":
            # BACKUP: keepalived hears the peer's adverts, so the peer is MASTER and has the address
            # configured: hand the IP straight over (an unassigned IP would wait for the peer's reconcile)
            log.warning("releasing floating IP %s (keepalived state BACKUP here): handing it to the MASTER, peer %s",
                        cfg.floating_ip, cfg.peer_name)
            action = self.api.call(f"assign floating IP {cfg.floating_ip_id} to peer {cfg.peer_server_id}",
                                   lambda: self.api.client.floating_ips.assign(FloatingIP(id=cfg.floating_ip_id),
                                                                               Server(id=cfg.peer_server_id)))
            self.api.wait_action("assign to the peer", action, self.action_poll)
            log.info("floating IP %s handed to peer %s (action %d succeeded)", cfg.floating_ip, cfg.peer_name, action.id)
            return EXIT_OK
        log.warning("releasing floating IP %s (keepalived state %s here): unassigning it so that the MASTER, "
                    "peer %s, takes it", cfg.floating_ip, state, cfg.peer_name)
        action = self.api.call(f"unassign floating IP {cfg.floating_ip_id}",
                               lambda: self.api.client.floating_ips.unassign(FloatingIP(id=cfg.floating_ip_id)))
        self.api.wait_action("unassign", action, self.action_poll)
        log.info("floating IP %s unassigned (action %d succeeded)", cfg.floating_ip, action.id)
        return EXIT_OK

    def _poweroff_peer(self) -> int:
        peer = self.cfg.peer_server_id
        server = self.api.call(f"get peer server {peer}", lambda: self.api.client.servers.get_by_id(peer))
        if server.status == "off":
            log.info("peer server %d is already off; no poweroff", peer)
            return EXIT_OK
        log.info("fencing: powering off peer server %d (%s, status %s)", peer, server.name, server.status)
        try:
            action = self.api.call(f"power off peer server {peer}",
                                   lambda: self.api.client.servers.power_off(Server(id=peer)))
            self.api.wait_action("poweroff", action, self.action_poll)
        except ApiError as e:
            log.error("fencing failed: %s (the floating IP is still here)", e)
            return EXIT_MISMATCH
        log.info("peer server %d powered off", peer)
        return EXIT_OK

    def notify(self, instance_type: str, name: str, state: str, priority: int | None) -> int:
        log.info("keepalived notify: %s %s is %s (priority %s)", instance_type, name, state, priority)
        # Recorded before taking the acting lock (under a short one of its own): with notifies in
        # quick succession the file holds keepalived's latest word, and whoever acts acts on that.
        order = notify_order()
        with self._lock(".record"):
            later = read_state(self.cfg.state_file)
            if list(later.get("order") or [0, 0]) > order:
                log.info("a later notify (%s) is recorded already; not recording %s", later.get("state"), state)
            else:
                write_state(self.cfg.state_file, {"state": state, "instance_type": instance_type, "name": name,
                                                  "priority": priority, "updated": time.time(), "order": order})
        with self._lock():
            current = read_state(self.cfg.state_file).get("state", state)
            if current != state:
                log.info("state changed to %s since this notify (%s); acting on %s", current, state, current)
            if current == "MASTER":
                # the peer may have died just now: while the witness still reaches it, ask again
                return self._take(reasks=WITNESS_REASKS,
                                  still_master=lambda: read_state(self.cfg.state_file).get("state") == "MASTER")
            log.info("state %s: releasing %s locally", current, self.cfg.floating_ip)
            self.remove_ip()
            return self._release(current, RELEASE_DELAY)

    def reconcile(self) -> int:
        cfg = self.cfg
        with self._lock():
            state = read_state(cfg.state_file).get("state", "UNKNOWN")
            owner = self.api.floating_ip_owner()
            if state == "MASTER" and owner != cfg.server_id:
                log.warning("mismatch: keepalived state MASTER but floating IP %s is on server %s; taking it%s",
                            cfg.floating_ip, owner,
                            " if the witness agrees" if owner == cfg.peer_server_id else "")
                return self._take()
            if state in ("BACKUP", "FAULT", "STOP") and owner == cfg.server_id:
                log.warning("mismatch: keepalived state %s but floating IP %s is assigned to this server %d; "
                            "releasing it for the MASTER", state, cfg.floating_ip, cfg.server_id)
                self.remove_ip()
                return self._release(state, delay=0)
            if state != "MASTER" and owner == cfg.server_id:
                log.warning("mismatch: keepalived state %s but floating IP %s is assigned to this server %d; "
                            "leaving it until keepalived reports a state", state, cfg.floating_ip, cfg.server_id)
                return EXIT_MISMATCH
            if state == "MASTER":
                log.info("consistent: MASTER and holding floating IP %s", cfg.floating_ip)
                self.ensure_ip()
            else:
                log.info("consistent: %s and floating IP %s is on server %s", state, cfg.floating_ip, owner)
                self.remove_ip()  # not MASTER: the address has no business here
            return EXIT_OK

    def publish_metrics(self) -> None:
        """What monitoring reads: 1 while the address is configured here (exactly one of the pair should);
        1 while this server, MASTER, withholds the takeover (peer alive per the witness, or no witness)."""
        if not self.cfg.metrics_file:
            return
        try:
            self._write_metrics()
        except (RuntimeError, OSError) as e:  # monitoring then sees stale data and alerts; the IP is what matters
            log.warning("could not write %s: %s", self.cfg.metrics_file, e)

    def _write_metrics(self) -> None:
        held = 1 if self.ip_configured() else 0
        text = ("# HELP hastack_floating_ip_configured 1 if this load balancer has the floating IP configured.\n"
                "# TYPE hastack_floating_ip_configured gauge\n"
                f'hastack_floating_ip_configured{{ip="{self.cfg.floating_ip}"}} {held}\n'
                "# HELP hastack_floating_ip_withheld 1 if this load balancer, MASTER, did not take the floating IP "
                "from its peer: the witness reaches the peer, or the witness did not answer.\n"
                "# TYPE hastack_floating_ip_withheld gauge\n"
                f'hastack_floating_ip_withheld{{ip="{self.cfg.floating_ip}"}} {int(self.withheld)}\n')
        os.makedirs(os.path.dirname(self.cfg.metrics_file), exist_ok=True)
        tmp = self.cfg.metrics_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.cfg.metrics_file)  # the collector never reads half a file

    def status(self) -> tuple[int, dict[str, Any]]:
        local = read_state(self.cfg.state_file)
        out: dict[str, Any] = {
            "state": local.get("state"), "state_updated": local.get("updated"),
            "floating_ip": self.cfg.floating_ip, "server_id": self.cfg.server_id,
            "owner_server_id": None, "holds_floating_ip": None,
            "configured_locally": self.ip_configured(),
        }
        try:
            owner = self.api.floating_ip_owner()
        except ApiError as e:
            out["api_error"] = str(e)
            return EXIT_API, out
        out["owner_server_id"] = owner
        out["holds_floating_ip"] = owner == self.cfg.server_id
        try:
            out["witness_peer_alive"] = ask_witness(self.cfg, self.cfg.peer_name)
        except WitnessError as e:
            out["witness_peer_alive"] = None
            out["witness_error"] = str(e)
        return EXIT_OK, out


# ------------------------------------------------------------------ CLI


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hastack-failover", description="Move the Hetzner floating IP to this load balancer.")
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"JSON config (default {DEFAULT_CONFIG})")
    sub = p.add_subparsers(dest="command", required=True)
    n = sub.add_parser("notify", help="keepalived notify script: INSTANCE_TYPE NAME STATE [PRIORITY]")
    n.add_argument("instance_type", help="INSTANCE or GROUP")
    n.add_argument("name", help="the VRRP instance or group name")
    n.add_argument("state", type=str.upper, choices=STATES)
    n.add_argument("priority", nargs="?", type=int, default=None)
    t = sub.add_parser("take", help="assign the floating IP to this server and configure it locally")
    t.add_argument("--force", action="store_true",
                   help="take it from the peer without asking the witness (operator override)")
    sub.add_parser("reconcile", help="compare keepalived's state with the API: repair (MASTER) or alert (exit 1)")
    w = sub.add_parser("watch", help="reconcile every --every seconds, in this one process")
    w.add_argument("--every", type=float, required=True, help="seconds from the start of one round to the next")
    sub.add_parser("status", help="print local state and the API's owner as JSON")
    return p.parse_args(argv)


def run(argv: list[str] | None = None, runner: Runner = run_ip,
        sleep: Callable[[float], None] = time.sleep, action_poll: float = 1.0) -> int:
    """Everything but logging setup, so that it can run in-process."""
    args = parse_args(argv)
    if args.command == "watch":
        if not args.every > 0:
            log.error("config error: --every must be a number of seconds above 0, not %s", args.every)
            return EXIT_CONFIG
        return watch(args.config, args.every, runner, sleep, action_poll)
    try:
        cfg = load_config(args.config)
        agent = FailoverAgent(cfg, read_token(cfg.token_file), runner, sleep, action_poll)
        if args.command in ("notify", "take", "reconcile"):
            try:
                if args.command == "notify":
                    return agent.notify(args.instance_type, args.name, args.state, args.priority)
                if args.command == "take":
                    return agent.take(force=args.force)
                return agent.reconcile()
            finally:
                agent.publish_metrics()
        code, out = agent.status()
        print(json.dumps(out, indent=2))
        return code
    except ConfigError as e:
        log.error("config error: %s", e)
        return EXIT_CONFIG
    except ApiError as e:
        log.error("failed: %s", e)
        return EXIT_API
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        log.error("failed: %s", e)
        return EXIT_MISMATCH


class SaidLastRound(logging.Filter):
    """The watch loop's INFO lines: one said in the round before is not said again, so a steady state is
    logged when it begins, not every few seconds; warnings and errors always are."""

    def __init__(self) -> None:
        super().__init__()
        self.before: set[str] = set()
        self.now: set[str] = set()

    def next_round(self) -> None:
        self.before, self.now = self.now, set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        message = record.getMessage()
        self.now.add(message)
        return message not in self.before


def watch(config: str, every: float, runner: Runner = run_ip, sleep: Callable[[float], None] = time.sleep,
          action_poll: float = 1.0, rounds: int | None = None) -> int:
    """`reconcile` every ``every`` seconds in this one process (the reconcile service; a process started
    for each round spent a third of a second of CPU importing the Hetzner library). The config and the
    token are read again every round: a rotated token is used from the next round on. ``rounds``: stop
    after that many (tests); the service runs until stopped."""
    quiet = SaidLastRound()
    log.addFilter(quiet)
    try:
        done = 0
        while rounds is None or done < rounds:
            started = time.monotonic()
            run(["--config", config, "reconcile"], runner, sleep, action_poll)
            quiet.next_round()
            done += 1
            if rounds is None or done < rounds:
                sleep(max(0.0, every - (time.monotonic() - started)))
    finally:
        log.removeFilter(quiet)
    return EXIT_OK


def setup_logging() -> None:
    log.setLevel(logging.INFO)
    if not os.environ.get("JOURNAL_STREAM"):  # under systemd standard error is the journal: syslog is enough
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setFormatter(logging.Formatter("hastack-failover: %(message)s"))
        log.addHandler(stderr)
    if os.path.exists("/dev/log"):
        syslog = logging.handlers.SysLogHandler("/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        syslog.setFormatter(logging.Formatter("hastack-failover[%(process)d]: %(message)s"))
        log.addHandler(syslog)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
