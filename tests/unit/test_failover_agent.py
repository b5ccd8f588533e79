"""The failover agent against the lab's Hetzner API, in-process; only `ip` is faked.

The witness is a stand-in server on localhost speaking the witness's protocol (mutual TLS,
one JSON line each way) with certificates from the stack CA code (hastack.pki).
"""

import json
import logging
import os
import socket
import subprocess
import sys
import ssl
import threading
import time
from pathlib import Path

import pytest
import requests

from hastack.pki import CertificateAuthority
from roles.loadbalancer import failover_agent as agent
from tests.unit.test_lab_hcloud_api import FIP, FIP_IP, LB1, LB2, TOKEN, Lab, make_ca_and_cert
from tests.support.privileges import needs_real_root

IFACE = "eth0"
WITNESS_NAME = "lab-mon1"


class FakeWitness:
    """The witness's side of the protocol on 127.0.0.1: demands a client certificate from the
    stack CA, records each request with the client's certificate name, answers ``answer(request)``
    (a dict, or None to hold the connection open without answering)."""

    def __init__(self, pki_dir, answer=None, server_name=WITNESS_NAME, client_name="lab-lb1"):
        ca = CertificateAuthority.own(pki_dir, "test")
        server = ca.issue(f"witness-{server_name}", dns=[server_name])
        client = ca.issue(f"witness-{client_name}", dns=[client_name], client=True)
        self.files = {}
        for key, text in {"server_crt": server.chain_pem, "server_key": server.key_pem,
                          "client_crt": client.chain_pem, "client_key": client.key_pem, "ca": ca.ca_pem}.items():
            path = pki_dir / f"{key}.pem"
            path.write_text(text)
            self.files[key] = str(path)
        self.answer = answer or (lambda request: {"alive": False})
        self.requests = []  # (request, the client certificate's common name)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.files["ca"])
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_cert_chain(self.files["server_crt"], self.files["server_key"])
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(5)
                line = b""
                while not line.endswith(b"\n"):
                    chunk = tls.recv(1024)
                    if not chunk:
                        return
                    line += chunk
                request = json.loads(line)
                cn = dict(x[0] for x in tls.getpeercert()["subject"])["commonName"]
                self.requests.append((request, cn))
                reply = self.answer(request)
                if reply is None:
                    self.stopped.wait(5)
                    return
                tls.sendall(json.dumps(reply).encode() + b"\n")
        except (OSError, ValueError):
            pass

    def client_config(self):
        return {"witness_name": WITNESS_NAME, "witness_ip": "127.0.0.1", "witness_port": self.port,
                "witness_cert": self.files["client_crt"], "witness_key": self.files["client_key"],
                "witness_ca": self.files["ca"]}

    def stop(self):
        self.stopped.set()
        self.sock.close()


def closed_port():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeIp:
    """Stands in for `ip`: records calls, keeps the interface's addresses."""

    def __init__(self, *addrs):
        self.addrs = set(addrs)
        self.calls = []

    def __call__(self, args):
        self.calls.append(args)
        if args[:3] == ["-o", "addr", "show"]:
            lines = [f"2: {IFACE}    inet 198.18.0.11/24 brd 198.18.0.255 scope global {IFACE}\\       valid_lft forever"]
            lines += [f"2: {IFACE}    inet {a} scope global {IFACE}\\       valid_lft forever" for a in sorted(self.addrs)]
            return 0, "\n".join(lines) + "\n", ""
        if args[:2] == ["addr", "add"]:
            self.addrs.add(args[2])
            return 0, "", ""
        if args[:2] == ["addr", "del"]:
            if args[2] not in self.addrs:
                return 2, "", "RTNETLINK answers: Cannot assign requested address\n"
            self.addrs.discard(args[2])
            return 0, "", ""
        raise AssertionError(f"unexpected ip {args}")

    def changes(self):
        return [c[:3] for c in self.calls if c[0] == "addr"]


class Env:
    def __init__(self, tmp_path, lab):
        self.tmp, self.lab = tmp_path, lab
        self.token = tmp_path / "hcloud-token"
        self.token.write_text(TOKEN + "\n")
        self.token.chmod(0o600)
        self.state = tmp_path / "run" / "failover-state.json"
        self.config = tmp_path / "failover.json"
        self.ip = FakeIp()
        self.sleeps = []
        pki = tmp_path / "witness-pki"
        pki.mkdir(exist_ok=True)
        self.witness = FakeWitness(pki)  # by default: the peer is not alive
        self.metrics = tmp_path / "textfile" / "hastack_floating_ip.prom"
        self.write_config()

    def write_config(self, **changes):
        cfg = {"api_endpoint": self.lab.url, "token_file": str(self.token), "floating_ip_id": FIP,
               "floating_ip": FIP_IP, "server_id": LB1, "server_name": "lab-lb1", "peer_server_id": LB2,
               "peer_name": "lab-lb2", "interface": IFACE, "state_file": str(self.state), "max_attempts": 4,
               "initial_backoff": 0.01, "min_interval": 0, "metrics_file": str(self.metrics),
               **self.witness.client_config()}
        cfg.update(changes)
        self.config.write_text(json.dumps({k: v for k, v in cfg.items() if v is not ...}))

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        time.sleep(seconds)

    def run(self, *argv):
        return agent.run(["--config", str(self.config), *argv], runner=self.ip, sleep=self.sleep, action_poll=0.01)

    def set_state(self, state):
        self.state.parent.mkdir(exist_ok=True)
        self.state.write_text(json.dumps({"state": state}))

    def posts(self):
        return [(e["path"].rsplit("/", 1)[1], e["body"], e["status"]) for e in self.lab.lab_log()]

    def owner(self):
        return self.lab.api.floating_ips[FIP]["server"]

    def metric(self, name):
        for line in self.metrics.read_text().splitlines():
            if line.startswith(name + "{"):
                return int(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in {self.metrics}")

    def asked(self):
        return [r for r, _ in self.witness.requests]


@pytest.fixture
def caplog_info(caplog):
    caplog.set_level(logging.INFO, logger="hastack-failover")
    return caplog


def start_env(tmp_path, **lab_kwargs):
    return Env(tmp_path, Lab(**lab_kwargs).start())


@pytest.fixture(autouse=True)
def quick_delays(monkeypatch):
    """The agent's waits between witness questions and before a release, shortened."""
    monkeypatch.setattr(agent, "WITNESS_REASK_DELAY", 0.02)
    monkeypatch.setattr(agent, "RELEASE_DELAY", 0.02)


@pytest.fixture
def env(tmp_path, caplog_info):
    env = start_env(tmp_path)
    yield env
    env.lab.httpd.shutdown()
    env.witness.stop()


def test_take_when_peer_holds_assigns_once_and_adds_ip(env, caplog_info):
    assert env.run("take") == 0
    assert env.posts() == [("assign", {"server": LB1}, 201)]
    assert env.lab.assigned == [(FIP_IP, LB1, "lab-lb1")]
    assert env.lab.api.floating_ips[FIP]["server"] == LB1
    assert env.ip.changes() == [["addr", "add", f"{FIP_IP}/32"]] and env.ip.calls[-1][-2:] == ["dev", IFACE]
    assert "from server 12 to this server lab-lb1" in caplog_info.text
    assert TOKEN not in caplog_info.text


def test_take_when_already_holding_does_not_assign(env, caplog_info):
    env.lab.api.floating_ips[FIP]["server"] = LB1
    env.ip.addrs.add(f"{FIP_IP}/32")
    assert env.run("take") == 0
    assert env.posts() == []
    assert "already holds" in caplog_info.text
    assert env.ip.changes() == []  # configured already: no `ip addr add`


def test_notify_master_records_state_and_takes(env):
    assert env.run("notify", "INSTANCE", "VI_1", "MASTER", "150") == 0
    state = json.loads(env.state.read_text())
    assert (state["state"], state["instance_type"], state["name"], state["priority"]) == ("MASTER", "INSTANCE", "VI_1", 150)
    assert env.posts() == [("assign", {"server": LB1}, 201)]
    assert f"{FIP_IP}/32" in env.ip.addrs


@pytest.mark.parametrize("state", ["BACKUP", "FAULT", "STOP"])
def test_notify_backup_fault_stop_remove_ip(env, state):
    env.ip.addrs.add(f"{FIP_IP}/32")
    assert env.run("notify", "INSTANCE", "VI_1", state) == 0
    assert json.loads(env.state.read_text())["state"] == state
    assert env.ip.changes() == [["addr", "del", f"{FIP_IP}/32"]]
    assert env.ip.addrs == set() and env.posts() == []
    assert env.run("notify", "INSTANCE", "VI_1", state) == 0  # not present any more: fine


def test_notify_acts_on_the_latest_recorded_state(env, caplog_info, monkeypatch):
    # A MASTER notify that got the lock after a later BACKUP notify was recorded.
    env.set_state("BACKUP")
    monkeypatch.setattr(agent, "write_state", lambda path, data: None)  # BACKUP's write came after ours
    assert env.run("notify", "INSTANCE", "VI_1", "MASTER", "150") == 0
    assert env.posts() == [] and "acting on BACKUP" in caplog_info.text


def test_a_notify_started_before_the_recorded_one_does_not_overwrite_it(env, caplog_info, monkeypatch):
    """keepalived went MASTER then BACKUP; the BACKUP notify, started second, recorded its state first."""
    monkeypatch.setattr(agent, "notify_order", lambda: [500, 41])
    assert env.run("notify", "INSTANCE", "web", "BACKUP", "90") == 0
    monkeypatch.setattr(agent, "notify_order", lambda: [500, 40])
    assert env.run("notify", "INSTANCE", "web", "MASTER", "90") == 0
    assert json.loads(env.state.read_text())["state"] == "BACKUP"
    assert "a later notify (BACKUP) is recorded already; not recording MASTER" in caplog_info.text
    assert env.posts() == [] and "acting on BACKUP" in caplog_info.text
    monkeypatch.setattr(agent, "notify_order", lambda: [501, 7])  # a later transition: recorded
    assert env.run("notify", "INSTANCE", "web", "MASTER", "90") == 0
    assert json.loads(env.state.read_text())["state"] == "MASTER"


def test_the_notify_order_is_the_order_processes_were_started_in():
    mine = agent.notify_order()
    assert mine[1] == os.getpid()
    out = subprocess.run([sys.executable, "-c", "import json, failover_agent as a; print(json.dumps(a.notify_order()))"],
                         capture_output=True, text=True, check=True, cwd=Path(agent.__file__).parent).stdout
    later = json.loads(out)
    assert later > mine and later[0] >= mine[0], (mine, later)


def test_reconcile_repairs_master_that_does_not_hold_the_ip(env, caplog_info):
    env.set_state("MASTER")
    assert env.run("reconcile") == 0
    assert "mismatch: keepalived state MASTER but floating IP" in caplog_info.text
    assert env.posts() == [("assign", {"server": LB1}, 201)]
    assert f"{FIP_IP}/32" in env.ip.addrs


def released(state):
    """A BACKUP hears the MASTER's adverts: it hands the IP to it; FAULT or STOP only unassign it."""
    return [("assign", {"server": LB2}, 201)] if state == "BACKUP" else [("unassign", None, 201)]


@pytest.mark.parametrize("state", ["BACKUP", "FAULT", "STOP"])
def test_reconcile_non_master_holding_the_ip_releases_it(env, caplog_info, state):
    """The MASTER does not take the IP from a peer the witness sees alive: the holder gives it up."""
    env.set_state(state)
    env.lab.api.floating_ips[FIP]["server"] = LB1
    env.ip.addrs.add(f"{FIP_IP}/32")
    assert env.run("reconcile") == 0
    assert any(r.levelno == logging.WARNING and "mismatch" in r.message and "releasing" in r.message
               for r in caplog_info.records)
    assert env.posts() == released(state) and env.owner() == (LB2 if state == "BACKUP" else None)
    assert env.ip.addrs == set() and env.asked() == []


def test_reconcile_without_a_recorded_state_holding_the_ip_only_alerts(env, caplog_info):
    env.lab.api.floating_ips[FIP]["server"] = LB1
    assert env.run("reconcile") == 1
    assert "keepalived state UNKNOWN" in caplog_info.text
    assert env.posts() == []


def test_reconcile_consistent_master_ensures_local_ip(env):
    env.set_state("MASTER")
    env.lab.api.floating_ips[FIP]["server"] = LB1
    assert env.run("reconcile") == 0
    assert env.posts() == [] and f"{FIP_IP}/32" in env.ip.addrs


def test_reconcile_consistent_backup_drops_a_stale_local_address(env):
    env.set_state("BACKUP")
    env.ip.addrs.add(f"{FIP_IP}/32")
    assert env.run("reconcile") == 0
    assert env.posts() == [] and env.ip.addrs == set()


def test_watch_reconciles_every_round_in_one_process_and_says_a_steady_state_once(env, caplog_info):
    """The reconcile service: round one repairs a MASTER without the IP; the rounds after find it
    consistent and say so once; a state keepalived records between rounds is what the next round acts on."""
    env.set_state("MASTER")
    between = []

    def sleep(seconds):
        if seconds > 1:  # between rounds (the agent's own waits are action_poll, 0.01 s)
            between.append(seconds)
            if len(between) == 3:
                env.set_state("BACKUP")  # keepalived handed over: the next round releases
        else:
            time.sleep(seconds)

    assert agent.watch(str(env.config), 5, runner=env.ip, sleep=sleep, action_poll=0.01, rounds=5) == 0
    assert len(between) == 4 and all(4 < s <= 5 for s in between), between
    assert env.posts() == [("assign", {"server": LB1}, 201), ("assign", {"server": LB2}, 201)]
    said = [r.message for r in caplog_info.records if r.levelno == logging.INFO and r.message.startswith("consistent")]
    assert said == [f"consistent: MASTER and holding floating IP {FIP_IP}",
                    f"consistent: BACKUP and floating IP {FIP_IP} is on server {LB2}"], said
    assert agent.log.filters == []  # the watch's filter goes with it


def test_watch_refuses_an_interval_that_is_not_a_positive_number(env, caplog_info):
    assert env.run("watch", "--every", "0") == agent.EXIT_CONFIG
    assert "--every must be a number of seconds above 0" in caplog_info.text


def test_status_prints_json(env, capsys):
    env.set_state("BACKUP")
    assert env.run("status") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["state"] == "BACKUP" and out["owner_server_id"] == LB2
    assert out["holds_floating_ip"] is False and out["configured_locally"] is False


def test_poweroff_peer_after_takeover_when_enabled(env):
    env.write_config(poweroff_peer_on_takeover=True)
    assert env.run("take") == 0
    assert [p[0] for p in env.posts()] == ["assign", "poweroff"]
    assert env.lab.powered_off == [LB2] and env.lab.api.servers[LB2]["status"] == "off"
    assert env.run("take") == 0  # already holding: nobody to fence
    assert len(env.posts()) == 2


def test_token_file_readable_by_others_refused(env, caplog_info):
    env.token.chmod(0o644)
    assert env.run("take") == 2
    assert f"token file {env.token} has mode 0644; it must be 0600 or 0400" in caplog_info.text
    assert env.posts() == [] and env.lab.api.tokens == env.lab.api.rate_limit  # no request at all
    env.token.chmod(0o400)
    assert env.run("status") == 0


def test_token_with_inner_whitespace_refused_without_logging_it(env, caplog_info):
    env.token.write_text("abc\tsecret-part\n")
    assert env.run("take") == 2
    assert "holds whitespace or non-ASCII characters" in caplog_info.text and "secret-part" not in caplog_info.text


@needs_real_root  # gives the file to another user
def test_token_file_not_owned_by_root_refused(env, caplog_info):
    os.chown(env.token, 65534, 65534)
    assert env.run("take") == 2
    assert "is owned by uid 65534; it must be owned by root" in caplog_info.text


@pytest.mark.parametrize("changes, message", [
    ({"floating_ip_id": ...}, "missing required key 'floating_ip_id' (a positive integer"),
    ({"server_id": "11"}, "key 'server_id' is '11'; it must be a positive integer"),
    ({"floating_ip": "198.18.0"}, "key 'floating_ip' is '198.18.0'; it must be an IPv4 address string"),
    ({"poweroff_peer_on_takeover": "yes"}, "key 'poweroff_peer_on_takeover' is 'yes'; it must be true or false"),
    ({"max_attempts": True}, "key 'max_attempts' is True; it must be a positive integer"),
    ({"interfaces": "eth0"}, "unknown key 'interfaces'; valid keys: api_endpoint, token_file"),
    ({"peer_server_id": LB1}, "server_id and peer_server_id are both 11"),
    ({"peer_name": ...}, "missing required key 'peer_name' (a host name"),
    ({"peer_name": "lab-lb1"}, "server_name and peer_name are both 'lab-lb1'"),
    ({"witness_name": ...}, "missing required key 'witness_name' (a host name"),
    ({"witness_name": "mon 1"}, "key 'witness_name' is 'mon 1'; it must be a host name"),
    ({"witness_ip": "lab-mon1"}, "key 'witness_ip' is 'lab-mon1'; it must be an IPv4 address string"),
    ({"witness_ip": ...}, "missing required key 'witness_ip'"),
    ({"witness_port": 70000}, "key 'witness_port' is 70000; it must be a TCP port number (1-65535)"),
    ({"witness_port": "9107"}, "key 'witness_port' is '9107'; it must be a TCP port number"),
    ({"witness_cert": "client.crt"}, "key 'witness_cert' is 'client.crt'; it must be an absolute path"),
    ({"witness_key": None}, "key 'witness_key' is None; it must be an absolute path"),
    ({"witness_ca": ""}, "key 'witness_ca' is ''; it must be an absolute path"),
])
def test_bad_config_refused(env, caplog_info, changes, message):
    env.write_config(**changes)
    assert env.run("take") == 2
    assert message in caplog_info.text


def test_wrong_token_fails_without_retries_and_is_not_logged(env, caplog_info):
    env.token.write_text("not-the-token")
    assert env.run("take") == 3
    assert "API error unauthorized" in caplog_info.text and "not-the-token" not in caplog_info.text
    assert env.sleeps == []


def test_api_down_retries_with_backoff_then_fails(tmp_path, caplog_info):
    env = start_env(tmp_path)
    env.lab.httpd.shutdown()
    port = closed_port()
    env.write_config(api_endpoint=f"http://127.0.0.1:{port}/v1", max_attempts=3, initial_backoff=0.05)
    assert env.run("notify", "INSTANCE", "VI_1", "MASTER", "150") == 3
    assert len(env.sleeps) == 2 and 0.05 <= env.sleeps[0] <= 0.075 and 0.1 <= env.sleeps[1] <= 0.15
    assert "attempt 1/3, retrying" in caplog_info.text and "ConnectionError" in caplog_info.text
    assert f"get floating IP {FIP}: giving up after 3 attempts" in caplog_info.text
    assert env.ip.changes() == []  # no API, no local address


def test_rate_limited_agent_waits_for_the_api_to_refill(tmp_path, caplog_info):
    env = start_env(tmp_path, rate_limit=4, rate_window=1.0)  # one request back every 0.25 s
    try:
        for _ in range(4):  # somebody else spent the budget
            requests.get(f"{env.lab.url}/servers", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert env.run("take") == 0
        assert "rate_limit_exceeded" in caplog_info.text
        assert max(env.sleeps) >= 0.24  # waited for a request to come back, not just the 0.01 s backoff
        assert [p for p in env.posts() if p[2] == 201] == [("assign", {"server": LB1}, 201)]
        assert env.lab.api.floating_ips[FIP]["server"] == LB1
    finally:
        env.lab.httpd.shutdown()


def test_min_interval_spaces_api_calls(env):
    times = []
    handle = env.lab.api.handle
    env.lab.api.handle = lambda *a: (times.append(time.monotonic()), handle(*a))[1]
    env.write_config(min_interval=0.1)
    assert env.run("take") == 0
    assert len(times) >= 3  # get, assign, poll
    # arrival times at the API: the agent starts calls 0.1 s apart; a loaded machine can delay one
    # arrival so that the next comes right after it (gaps of 0.23 s then 0.012 s were seen), so each
    # call is held to its place since the first, not to the one before; unpaced, they come a few
    # milliseconds apart
    since_first = [t - times[0] for t in times]
    assert all(since >= 0.06 * k for k, since in enumerate(since_first)), [round(t, 3) for t in since_first]


def test_https_verified_through_ca_file_even_with_requests_ca_bundle_set(tmp_path, caplog_info, monkeypatch):
    ca, cert, key = make_ca_and_cert(tmp_path)
    other_ca, _, _ = make_ca_and_cert(tmp_path, "other")
    lab = Lab().start(certfile=str(cert), keyfile=str(key))
    try:
        env = Env(tmp_path, lab)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca))  # must not override the configured CA
        env.write_config(ca_file=str(ca))
        assert env.run("take") == 0
        assert lab.api.floating_ips[FIP]["server"] == LB1
        env.write_config(ca_file=str(other_ca), max_attempts=1)
        assert env.run("take") == 3
        assert "CERTIFICATE_VERIFY_FAILED" in caplog_info.text
    finally:
        lab.httpd.shutdown()


# ------------------------------------------------------------------ the witness tie-break

ALIVE, DEAD = {"alive": True}, {"alive": False}


def answers(*replies):
    """The witness answers these in turn, then the last one again."""
    replies = list(replies)
    return lambda request: replies.pop(0) if len(replies) > 1 else replies[0]


def test_take_from_the_peer_asks_the_witness_over_mutual_tls(env, caplog_info):
    assert env.run("take") == 0
    assert env.witness.requests == [({"op": "alive", "group": "lb", "name": "lab-lb1", "member": "lab-lb2"}, "lab-lb1")]
    assert env.posts() == [("assign", {"server": LB1}, 201)] and env.owner() == LB1
    assert "the witness cannot reach peer lab-lb2 (id 12) either" in caplog_info.text
    assert env.metric("hastack_floating_ip_withheld") == 0 and env.metric("hastack_floating_ip_configured") == 1


def test_take_withheld_while_the_witness_sees_the_peer_alive(env, caplog_info):
    env.witness.answer = answers(ALIVE)
    assert env.run("take") == 1
    assert env.posts() == [] and env.owner() == LB2 and env.ip.changes() == []
    assert len(env.asked()) == 1  # an operator's take asks once
    warning = next(r.message for r in caplog_info.records if r.levelno == logging.WARNING)
    assert "partition between the load balancers" in warning and "peer lab-lb2 (id 12)" in warning
    assert "still serves" in warning and "take --force" in warning
    assert env.metric("hastack_floating_ip_withheld") == 1 and env.metric("hastack_floating_ip_configured") == 0


@pytest.mark.parametrize("how, message", [
    ("error", "answered an error: member lab-lb2 unknown"),
    ("unreachable", "ConnectionRefusedError"),
    ("garbled", "unexpected answer"),
    ("empty", "unexpected answer"),
])
def test_take_withheld_without_a_usable_answer_from_the_witness(env, caplog_info, how, message):
    if how == "error":
        env.witness.answer = answers({"error": "member lab-lb2 unknown"})
    elif how == "unreachable":
        env.write_config(witness_port=closed_port())
    elif how == "garbled":
        env.witness.answer = lambda request: ["alive"]
    else:
        env.witness.answer = lambda request: {}
    assert env.run("take") == 1
    assert env.posts() == [] and env.owner() == LB2
    error = next(r.message for r in caplog_info.records if r.levelno == logging.ERROR)
    assert "not taking floating IP" in error and "no answer from the witness" in error and message in error
    assert "may be the isolated one" in error
    assert env.metric("hastack_floating_ip_withheld") == 1


def test_take_force_overrides_the_witness(env, caplog_info):
    env.write_config(witness_port=closed_port())
    assert env.run("take", "--force") == 0
    assert env.posts() == [("assign", {"server": LB1}, 201)] and env.owner() == LB1
    assert "take --force: taking floating IP" in caplog_info.text
    env.witness.answer = answers(ALIVE)
    env.lab.api.floating_ips[FIP]["server"] = LB2
    env.write_config()
    assert env.run("take", "--force") == 0
    assert env.owner() == LB1 and env.asked() == []
    assert env.metric("hastack_floating_ip_withheld") == 0


@pytest.mark.parametrize("owner", [None, LB1])
def test_unassigned_or_own_ip_taken_without_the_witness(env, owner):
    env.lab.api.floating_ips[FIP]["server"] = owner
    env.write_config(witness_port=closed_port())  # the witness is down: not needed here
    assert env.run("take") == 0
    assert env.owner() == LB1 and f"{FIP_IP}/32" in env.ip.addrs
    assert env.posts() == ([("assign", {"server": LB1}, 201)] if owner is None else [])
    assert env.asked() == []


def test_notify_master_asks_again_while_the_dying_peer_still_answers(env, caplog_info):
    env.witness.answer = answers(ALIVE, ALIVE, DEAD)
    assert env.run("notify", "INSTANCE", "web", "MASTER", "100") == 0
    assert len(env.asked()) == 3
    assert env.sleeps.count(agent.WITNESS_REASK_DELAY) == 2
    assert "asking again" in caplog_info.text
    assert env.posts() == [("assign", {"server": LB1}, 201)] and f"{FIP_IP}/32" in env.ip.addrs


def test_notify_master_gives_up_when_the_peer_stays_alive(env, caplog_info):
    env.witness.answer = answers(ALIVE)
    assert env.run("notify", "INSTANCE", "web", "MASTER", "100") == 1
    assert len(env.asked()) == 1 + agent.WITNESS_REASKS
    assert env.posts() == [] and env.owner() == LB2
    assert "partition between the load balancers" in caplog_info.text
    assert env.metric("hastack_floating_ip_withheld") == 1


def test_notify_master_with_the_witness_unreachable_does_not_take(env, caplog_info):
    env.write_config(witness_port=closed_port())
    assert env.run("notify", "INSTANCE", "web", "MASTER", "100") == 1
    assert env.posts() == [] and env.owner() == LB2
    assert "no answer from the witness" in caplog_info.text


def test_notify_master_takes_the_ip_the_peer_released_meanwhile(env, caplog_info):
    def alive_then_released(request):
        env.lab.api.floating_ips[FIP]["server"] = None  # the peer, now BACKUP, unassigned it
        return ALIVE
    env.witness.answer = alive_then_released
    assert env.run("notify", "INSTANCE", "web", "MASTER", "100") == 0
    assert len(env.asked()) == 1
    assert "no longer on peer lab-lb2" in caplog_info.text
    assert env.posts() == [("assign", {"server": LB1}, 201)] and env.owner() == LB1


def test_notify_master_stops_asking_when_keepalived_leaves_master(env, caplog_info):
    def alive_and_demoted(request):
        env.set_state("BACKUP")  # a later notify recorded BACKUP
        return ALIVE
    env.witness.answer = alive_and_demoted
    assert env.run("notify", "INSTANCE", "web", "MASTER", "100") == 0
    assert len(env.asked()) == 1 and env.posts() == []
    assert "keepalived left MASTER while the witness was asked" in caplog_info.text


def test_reconcile_master_takes_from_the_peer_only_when_the_witness_agrees(env, caplog_info):
    env.set_state("MASTER")
    env.witness.answer = answers(ALIVE)
    assert env.run("reconcile") == 1
    assert env.posts() == [] and len(env.asked()) == 1  # the timer asks again on its next run
    assert "partition between the load balancers" in caplog_info.text
    assert env.metric("hastack_floating_ip_withheld") == 1
    env.witness.answer = answers(DEAD)
    assert env.run("reconcile") == 0
    assert env.posts() == [("assign", {"server": LB1}, 201)] and env.owner() == LB1
    assert env.metric("hastack_floating_ip_withheld") == 0


def test_reconcile_in_a_partition_does_not_flap(env):
    """Both sides MASTER and the witness reaching both: the IP stays where it is, run after run."""
    env.set_state("MASTER")
    env.witness.answer = answers(ALIVE)
    assert [env.run("reconcile") for _ in range(3)] == [1, 1, 1]
    assert env.posts() == [] and env.owner() == LB2


@pytest.mark.parametrize("state", ["BACKUP", "FAULT", "STOP"])
def test_notify_non_master_releases_the_ip_it_still_holds(env, caplog_info, state):
    env.lab.api.floating_ips[FIP]["server"] = LB1
    env.ip.addrs.add(f"{FIP_IP}/32")
    assert env.run("notify", "INSTANCE", "web", state) == 0
    assert agent.RELEASE_DELAY in env.sleeps  # first a chance for the new MASTER to take it
    assert env.posts() == released(state) and env.owner() == (LB2 if state == "BACKUP" else None)
    assert env.ip.addrs == set() and "releasing floating IP" in caplog_info.text


def test_notify_backup_does_not_release_what_the_master_took_meanwhile(env):
    env.lab.api.floating_ips[FIP]["server"] = LB1
    env.sleep = lambda s: (env.sleeps.append(s), env.lab.api.floating_ips[FIP].update(server=LB2))
    assert env.run("notify", "INSTANCE", "web", "BACKUP") == 0
    assert env.posts() == [] and env.owner() == LB2


def test_notify_backup_keeps_the_ip_when_made_master_meanwhile(env, caplog_info):
    env.lab.api.floating_ips[FIP]["server"] = LB1
    env.sleep = lambda s: (env.sleeps.append(s), env.set_state("MASTER"))
    assert env.run("notify", "INSTANCE", "web", "BACKUP") == 0
    assert env.posts() == [] and env.owner() == LB1
    assert "MASTER meanwhile; keeping" in caplog_info.text


def test_witness_certificate_checked_against_the_ca_and_its_name(env, caplog_info, tmp_path):
    other = tmp_path / "other-pki"
    other.mkdir()
    stranger = FakeWitness(other)  # a witness whose certificate another CA signed
    try:
        env.write_config(witness_port=stranger.port)
        assert env.run("take") == 1
        assert "CERTIFICATE_VERIFY_FAILED" in caplog_info.text and stranger.requests == []
    finally:
        stranger.stop()
    caplog_info.clear()
    env.write_config(witness_name="lab-mon2")  # the right CA, another name
    assert env.run("take") == 1
    assert "CERTIFICATE_VERIFY_FAILED" in caplog_info.text and "lab-mon2" in caplog_info.text
    assert env.asked() == [] and env.posts() == []


def test_missing_client_certificate_is_a_witness_failure_not_a_config_error(env, caplog_info, tmp_path):
    env.write_config(witness_cert=str(tmp_path / "missing.crt"))
    assert env.run("take") == 1  # no witness vote: nothing taken from the peer
    assert "cannot load the witness client TLS files" in caplog_info.text
    env.lab.api.floating_ips[FIP]["server"] = None
    assert env.run("take") == 0 and env.owner() == LB1  # an unassigned IP still is


def test_a_silent_witness_times_out(env):
    env.witness.answer = lambda request: None  # accepts, reads, never answers
    cfg = agent.load_config(str(env.config))
    start = time.monotonic()
    with pytest.raises(agent.WitnessError, match="timed out"):
        agent.ask_witness(cfg, "lab-lb2", timeout=0.3)
    assert time.monotonic() - start < 1.5


def test_status_shows_the_witness_view(env, capsys):
    env.witness.answer = answers(ALIVE)
    assert env.run("status") == 0
    assert json.loads(capsys.readouterr().out)["witness_peer_alive"] is True
    env.write_config(witness_port=closed_port())
    assert env.run("status") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["witness_peer_alive"] is None and "ConnectionRefusedError" in out["witness_error"]
