"""The witness on the monitoring host: the writer epoch of the MariaDB pair, and the load balancers' probe."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import ssl

import pytest

from hastack.pki import CertificateAuthority
from roles import witness as witness_role
from roles.base import access_gate
from roles.monitoring import witness_server
from roles.monitoring.witness_server import Config, Witness, load_config, serve

GROUP = "mariadb"


class Clock:
    def __init__(self, t=500.0):
        self.t = t

    def __call__(self):
        return self.t


def config(tmp_path, **kw) -> Config:
    values = dict(bind="127.0.0.1", port=0, cert="-", key="-", ca="-",
                  groups={GROUP: {"db1": None, "db2": None}, "lb": {"lb1": None, "lb2": None}},
                  state_file=str(tmp_path / "witness" / "state.json"), dead_after=1.8, probe_timeout=0.3)
    values.update(kw)
    return Config(**values)


def ask(w: Witness, name: str, op: str, group: str = GROUP, **kw) -> dict:
    return w.handle(name, {"group": group, "name": name, "op": op, **kw})


def heartbeat(w, name, mysqld=True, writable=False):
    return ask(w, name, "heartbeat", mysqld=mysqld, writable=writable)


def claim(w, name, epoch, synced=None):
    return ask(w, name, "claim", epoch=epoch, synced_epoch=synced)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def witness(tmp_path, clock):
    return Witness(config(tmp_path), now=clock)


def with_writer(w, clock):
    """db1 holds epoch 1 and both masters are heard."""
    assert claim(w, "db1", 0)["granted"]
    heartbeat(w, "db1", writable=True)
    heartbeat(w, "db2")
    return w


# -- the epoch ---------------------------------------------------------------------------------------------------

def test_the_first_claim_is_granted_to_either_master(tmp_path, clock):
    for name in ("db1", "db2"):
        w = Witness(config(tmp_path / name), now=clock)
        answer = claim(w, name, 0)
        assert answer["granted"] is True and answer["epoch"] == 1 and answer["writer"] == name


def test_a_granted_epoch_is_on_disk_and_synced_before_the_answer(tmp_path, clock, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(witness_server.os, "fsync", fsync)
    w = Witness(config(tmp_path), now=clock)
    state = tmp_path / "witness" / "state.json"
    assert claim(w, "db1", 0)["granted"]
    assert json.loads(state.read_text()) == {GROUP: {"epoch": 1, "writer": "db1"}}
    assert str(state) + ".tmp" in synced and str(state.parent) in synced  # the file, then its directory
    again = Witness(config(tmp_path), now=clock)  # the witness restarts
    assert again.view(GROUP)["epoch"] == 1 and again.view(GROUP)["writer"] == "db1"
    assert not claim(again, "db2", 0)["granted"]


def test_a_claim_for_an_old_epoch_is_refused(witness, clock):
    with_writer(witness, clock)
    answer = claim(witness, "db1", 0)
    assert answer["granted"] is False and answer["epoch"] == 1 and "the epoch is 1" in answer["reason"]
    assert claim(witness, "db1", 2)["granted"] is False
    assert witness.view(GROUP)["epoch"] == 1


def test_the_writer_reclaiming_its_epoch_is_granted(witness, clock):
    with_writer(witness, clock)
    answer = claim(witness, "db1", 1)
    assert answer["granted"] is True and (answer["epoch"], answer["writer"]) == (2, "db1")


def test_the_other_master_is_refused_while_the_writer_is_heard_and_its_mariadb_up(witness, clock):
    with_writer(witness, clock)
    for _ in range(10):
        clock.t += 0.5
        heartbeat(witness, "db1", writable=True)
        answer = claim(witness, "db2", 1, synced=1)
        assert answer["granted"] is False and answer["writer"] == "db1"
    assert witness.view(GROUP)["epoch"] == 1


def test_the_other_master_is_granted_once_the_writer_is_silent_long_enough(witness, clock):
    with_writer(witness, clock)
    clock.t += 1.7
    assert claim(witness, "db2", 1, synced=1)["granted"] is False
    clock.t += 0.15  # silent for dead_after
    answer = claim(witness, "db2", 1, synced=1)
    assert answer["granted"] is True and (answer["epoch"], answer["writer"]) == (2, "db2")
    assert answer["members"]["db1"]["silent_for"] >= 1.8


def test_the_other_master_is_granted_once_the_writers_mariadb_is_down_long_enough(witness, clock):
    with_writer(witness, clock)
    heartbeat(witness, "db1", mysqld=False)  # the agent on db1 still speaks: its MariaDB is down
    for _ in range(2):  # half of dead_after (1.8 s): a MariaDB its agent reports down comes back read-only
        clock.t += 0.4
        heartbeat(witness, "db1", mysqld=False)
        assert claim(witness, "db2", 1, synced=1)["granted"] is False
    clock.t += 0.2
    heartbeat(witness, "db1", mysqld=False)
    assert claim(witness, "db2", 1, synced=1)["granted"] is True
    assert witness.view(GROUP)["writer"] == "db2"


def test_a_writer_whose_mariadb_came_back_starts_its_down_time_again(witness, clock):
    with_writer(witness, clock)
    heartbeat(witness, "db1", mysqld=False)
    clock.t += 0.8
    heartbeat(witness, "db1", mysqld=True)
    clock.t += 0.5
    heartbeat(witness, "db1", mysqld=False)
    clock.t += 0.5
    assert claim(witness, "db2", 1, synced=1)["granted"] is False


def test_a_claimant_that_has_not_caught_up_with_the_epoch_is_refused(witness, clock):
    with_writer(witness, clock)
    clock.t += 10  # the writer is long silent
    for synced in (None, 0, 2):
        answer = claim(witness, "db2", 1, synced=synced)
        assert answer["granted"] is False and "caught up" in answer["reason"]
    assert witness.view(GROUP)["writer"] == "db1"
    assert claim(witness, "db2", 1, synced=1)["granted"] is True


def test_a_restarted_witness_counts_silence_from_its_own_start(tmp_path, clock):
    with_writer(Witness(config(tmp_path), now=clock), clock)
    clock.t += 60  # the witness is down for a minute, then starts again knowing db1 holds epoch 1
    again = Witness(config(tmp_path), now=clock)
    assert again.view(GROUP)["members"]["db1"]["silent_for"] == 0
    assert claim(again, "db2", 1, synced=1)["granted"] is False
    clock.t += 1.9
    assert claim(again, "db2", 1, synced=1)["granted"] is True


# -- who may ask what --------------------------------------------------------------------------------------------

def test_a_client_speaks_only_for_itself(witness):
    answer = witness.handle("db1", {"group": GROUP, "name": "db2", "op": "claim", "epoch": 0})
    assert "error" in answer and witness.view(GROUP)["epoch"] == 0
    assert "error" in witness.handle("db1", {"group": GROUP, "name": "db2", "op": "heartbeat", "mysqld": True})
    assert "db2" not in witness.heard.get(GROUP, {})


def test_a_client_speaks_only_in_its_own_group(witness):
    assert "error" in ask(witness, "lb1", "claim", epoch=0)  # a load balancer is not a MariaDB master
    assert "error" in ask(witness, "db1", "alive", group="lb", member="lb2")
    assert witness.view(GROUP)["epoch"] == 0


def test_an_unknown_group_or_operation_is_an_error(witness):
    assert "error" in ask(witness, "db1", "view", group="cassandra")
    assert "error" in ask(witness, "db1", "promote")
    assert "error" in witness.handle("db1", {})


def test_a_heartbeat_answers_the_view(witness, clock):
    answer = heartbeat(witness, "db1", writable=True)
    assert answer["epoch"] == 0 and answer["writer"] is None
    assert answer["members"]["db1"] == {"silent_for": 0.0, "mysqld": True, "writable": True}
    assert answer["members"]["db2"]["mysqld"] is False


# -- the load balancers' probe -----------------------------------------------------------------------------------

def test_alive_tells_whether_a_member_listens(tmp_path, clock):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        w = Witness(config(tmp_path, groups={"lb": {"lb1": ["127.0.0.1", listener.getsockname()[1]],
                                                     "lb2": ["127.0.0.1", closed_port]},
                                              GROUP: {"db1": None, "db2": None}}), now=clock)
        assert ask(w, "lb2", "alive", group="lb", member="lb1") == {"alive": True}
        assert ask(w, "lb1", "alive", group="lb", member="lb2") == {"alive": False}
        assert ask(w, "lb1", "alive", group="lb", member="lb9") == {"alive": False}
        assert ask(w, "lb1", "alive", group="lb", member=None) == {"alive": False}
        assert ask(w, "db1", "alive", member="db2") == {"alive": False}  # heartbeat members have no address
    finally:
        listener.close()


# -- the real server ---------------------------------------------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    """The witness from a configuration with paths relative to it, as systemd's credentials directory holds
    them, serving on 127.0.0.1."""
    ca = CertificateAuthority.own(tmp_path / "pki", "test")
    ca.issue("witness-mon", dns=["mon"])
    for name in ("db1", "db2"):
        ca.issue(f"witness-{name}", dns=[name], client=True)
    CertificateAuthority.own(tmp_path / "other-pki", "other").issue("witness-db1", dns=["db1"], client=True)
    conf = tmp_path / "credentials"
    conf.mkdir()
    shutil.copy(tmp_path / "pki" / "issued" / "witness-mon.crt", conf / "server.crt")
    shutil.copy(tmp_path / "pki" / "issued" / "witness-mon.key", conf / "server.key")
    shutil.copy(tmp_path / "pki" / "ca.crt", conf / "ca.crt")
    (conf / "witness.json").write_text(json.dumps({
        "bind": "127.0.0.1", "port": 0, "cert": "server.crt", "key": "server.key", "ca": "ca.crt",
        "groups": {GROUP: {"db1": None, "db2": None}}, "state_file": str(tmp_path / "state" / "state.json")}))
    cfg = load_config(str(conf / "witness.json"))
    assert (cfg.cert, cfg.key, cfg.ca) == (str(conf / "server.crt"), str(conf / "server.key"), str(conf / "ca.crt"))
    w = Witness(cfg)
    srv = serve(cfg, w)
    yield srv.server_address[1], w, tmp_path
    srv.shutdown()
    srv.server_close()


def client(tmp_path, name=None, other_ca=False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tmp_path / "pki" / "ca.crt"))
    if name:
        d = tmp_path / ("other-pki" if other_ca else "pki") / "issued"
        ctx.load_cert_chain(str(d / f"witness-{name}.crt"), str(d / f"witness-{name}.key"))
    return ctx


def request(port, ctx, req: dict) -> dict | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname="mon") as s:
                s.sendall(json.dumps(req).encode() + b"\n")
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        return json.loads(data) if data else None
    except OSError:
        return None


def test_a_client_with_a_certificate_of_the_stack_gets_answers(server):
    port, w, tmp_path = server
    answer = request(port, client(tmp_path, "db1"), {"group": GROUP, "name": "db1", "op": "heartbeat",
                                                     "mysqld": True, "writable": False})
    assert answer["epoch"] == 0 and answer["members"]["db1"]["mysqld"] is True
    granted = request(port, client(tmp_path, "db1"), {"group": GROUP, "name": "db1", "op": "claim", "epoch": 0})
    assert granted["granted"] is True and w.view(GROUP)["writer"] == "db1"


def test_the_certificate_name_is_the_identity(server):
    port, w, tmp_path = server
    answer = request(port, client(tmp_path, "db2"), {"group": GROUP, "name": "db1", "op": "claim", "epoch": 0})
    assert "error" in answer and w.view(GROUP)["epoch"] == 0


def test_a_client_without_a_certificate_of_the_stack_gets_nothing(server):
    port, w, tmp_path = server
    req = {"group": GROUP, "name": "db1", "op": "claim", "epoch": 0}
    assert request(port, client(tmp_path), req) is None
    assert request(port, client(tmp_path, "db1", other_ca=True), req) is None
    assert w.view(GROUP)["epoch"] == 0 and w.heard == {}


def test_a_malformed_request_gets_no_answer_and_the_server_goes_on(server):
    port, w, tmp_path = server
    ctx = client(tmp_path, "db1")
    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
        with ctx.wrap_socket(raw, server_hostname="mon") as s:
            s.sendall(b"[1, 2]\n")
            assert s.recv(4096) == b""
    assert request(port, ctx, {"group": GROUP, "name": "db1", "op": "view"})["epoch"] == 0


def test_an_operator_may_force_the_next_epoch_but_only_from_the_current_one(tmp_path):
    """A restore hands the epoch to the first master while writes are held on both, whatever the rules say."""
    clock = [1000.0]
    w = Witness(witness_server.Config(bind="127.0.0.1", port=0, cert="-", key="-", ca="-",
                                      groups={"mariadb": {"db1": None, "db2": None}},
                                      state_file=str(tmp_path / "state.json"), dead_after=1.8), now=lambda: clock[0])
    assert w.handle("db2", {"op": "claim", "group": "mariadb", "name": "db2", "epoch": 0})["granted"]
    w.handle("db2", {"op": "heartbeat", "group": "mariadb", "name": "db2", "mysqld": True, "writable": True})
    refused = w.handle("db1", {"op": "claim", "group": "mariadb", "name": "db1", "epoch": 1, "synced_epoch": None})
    assert not refused["granted"]
    stale = w.handle("db1", {"op": "claim", "group": "mariadb", "name": "db1", "epoch": 0, "force": True})
    assert not stale["granted"] and stale["epoch"] == 1
    forced = w.handle("db1", {"op": "claim", "group": "mariadb", "name": "db1", "epoch": 1, "force": True})
    assert forced["granted"] and (forced["epoch"], forced["writer"]) == (2, "db1")


# -- the masters' access gates ----------------------------------------------------------------------------------

def gate_config(port, tmp_path, name="db1") -> "access_gate.Config":
    issued = tmp_path / "pki" / "issued"
    return access_gate.Config(name=name, group=GROUP, witness_name="mon", witness_ip="127.0.0.1", witness_port=port,
                              cert=str(issued / f"witness-{name}.crt"), key=str(issued / f"witness-{name}.key"),
                              ca=str(tmp_path / "pki" / "ca.crt"), admin_group="hastack-admins")


def test_an_access_gate_gets_the_admin_list_the_last_converge_wrote(server):
    port, w, tmp_path = server
    cfg = gate_config(port, tmp_path)
    with pytest.raises(ValueError, match="no admin list here"):
        access_gate.ask_witness(cfg)
    access = tmp_path / "admins.json"
    w.cfg.access_file = str(access)
    access.write_text(witness_role.access_list_json([{"name": "alice", "ssh_key": "ssh-ed25519 AAAA alice"}]))
    assert access_gate.ask_witness(cfg) == {"admins": {"alice": ["ssh-ed25519 AAAA alice"]}}
    # read at each request: a converge changes it without restarting the witness
    access.write_text(witness_role.access_list_json([{"name": "bob", "ssh_key": "ssh-ed25519 BBBB bob"}]))
    assert access_gate.ask_witness(cfg)["admins"] == {"bob": ["ssh-ed25519 BBBB bob"]}


def test_an_access_gate_speaks_only_for_its_own_host(server):
    port, w, tmp_path = server
    w.cfg.access_file = str(tmp_path / "admins.json")
    (tmp_path / "admins.json").write_text(witness_role.access_list_json([]))
    forged = dataclasses.replace(gate_config(port, tmp_path, "db2"), name="db1")
    with pytest.raises(ValueError, match="may not speak for 'db1'"):
        access_gate.ask_witness(forged)
