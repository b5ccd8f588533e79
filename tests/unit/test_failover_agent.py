"""The failover agent against the lab's Hetzner API, in-process; only `ip` is faked."""

import json
import logging
import os
import socket
import time

import pytest
import requests

from roles.loadbalancer import failover_agent as agent
from tests.unit.test_lab_hcloud_api import FIP, FIP_IP, LB1, LB2, TOKEN, Lab, make_ca_and_cert
from tests.support.privileges import needs_real_root

IFACE = "eth0"


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
        self.write_config()

    def write_config(self, **changes):
        cfg = {"api_endpoint": self.lab.url, "token_file": str(self.token), "floating_ip_id": FIP,
               "floating_ip": FIP_IP, "server_id": LB1, "server_name": "lab-lb1", "peer_server_id": LB2,
               "interface": IFACE, "state_file": str(self.state), "max_attempts": 4,
               "initial_backoff": 0.01, "min_interval": 0}
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


@pytest.fixture
def caplog_info(caplog):
    caplog.set_level(logging.INFO, logger="hastack-failover")
    return caplog


def start_env(tmp_path, **lab_kwargs):
    return Env(tmp_path, Lab(**lab_kwargs).start())


@pytest.fixture
def env(tmp_path, caplog_info):
    env = start_env(tmp_path)
    yield env
    env.lab.httpd.shutdown()


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


def test_reconcile_repairs_master_that_does_not_hold_the_ip(env, caplog_info):
    env.set_state("MASTER")
    assert env.run("reconcile") == 0
    assert "mismatch: keepalived state MASTER but floating IP" in caplog_info.text
    assert env.posts() == [("assign", {"server": LB1}, 201)]
    assert f"{FIP_IP}/32" in env.ip.addrs


def test_reconcile_backup_holding_the_ip_alerts(env, caplog_info):
    env.set_state("BACKUP")
    env.lab.api.floating_ips[FIP]["server"] = LB1
    assert env.run("reconcile") == 1
    assert any(r.levelno == logging.WARNING and "mismatch" in r.message for r in caplog_info.records)
    assert env.posts() == []  # no unassign: the MASTER side repairs


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
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
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
    # arrival times at the API: the agent starts calls 0.1 s apart, a loaded machine delays one
    # arrival more than the next; unpaced, they come a few milliseconds apart
    assert all(b - a >= 0.06 for a, b in zip(times, times[1:])), [round(b - a, 3) for a, b in zip(times, times[1:])]


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
