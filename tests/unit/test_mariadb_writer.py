"""The MariaDB pair's single-writer agent.

Most tests run a small simulation: the two masters (db1 preferred, db2), each
with its agent and a scripted MariaDB, and the real witness, all on one fake
clock that advances half a second per step. The network is a set of switches:
the link between the masters, each master's link to the witness, and whether
a master's agent is stalled (or the whole machine powered off). Fencing and
powering a master on again are recorded instead of calling the Hetzner API.

The last tests use real sockets: the health port HAProxy checks, the peer's
mutual TLS port, and the channel to a real witness server.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
from types import SimpleNamespace

import pytest

from hastack.pki import CertificateAuthority
from roles.mariadb.writer_agent import Agent, Channel, Config, State, contains, parse_gtid, serve
from roles.monitoring import witness_server
from roles.monitoring.witness_server import Witness

STEP = 0.5
NAMES = ("db1", "db2")


# -- the scripted MariaDB ----------------------------------------------------------------------------------------

def fmt(pos: dict[int, int]) -> str:
    return ",".join(f"{d}-{d}-{s}" for d, s in sorted(pos.items()))


def merge(a: dict[int, int], b: dict[int, int]) -> dict[int, int]:
    out = dict(a)
    for d, s in b.items():
        out[d] = max(out.get(d, 0), s)
    return out


class FakeLocal:
    """One master's MariaDB: read-only flag, GTID positions (one domain per server), what the
    replication IO thread received from the peer and whether the SQL thread applies it."""

    def __init__(self, name, server_id, writable=False, pos=None, events=None):
        self.name, self.server_id = name, server_id
        self.up = True
        self.writable = writable
        self.pos = dict(pos if pos is not None else {1: 10, 2: 5})  # applied (binlog = current: log_slave_updates)
        self.received: dict[int, int] = {}  # Gtid_IO_Pos
        self.receiving = True  # the IO thread is connected to the peer
        self.applying = True  # the SQL thread applies what was received
        self.log: list[str] = []
        self.events = events if events is not None else []
        self.clock = None

    def status(self):
        if not self.up:
            return None
        p = fmt(self.pos)
        return {"writable": self.writable, "gtid_binlog_pos": p, "gtid_current_pos": p}

    def io_pos(self):
        if not self.up:
            raise ConnectionError("MariaDB is down")
        return fmt(self.received)

    def query(self, sql, args=()):
        if not self.up:
            raise ConnectionError("MariaDB is down")
        self.log.append(sql)
        if sql.startswith("SET GLOBAL read_only"):
            self.writable = sql.endswith("OFF")
            self.events.append(("writable" if self.writable else "read-only", self.name, self.clock()))
        if "MASTER_GTID_WAIT" in sql:
            # 0 once everything received is applied, -1 when the wait times out
            return [(0 if contains(fmt(self.pos), args[0]) else -1,)]
        return []

    def close(self):
        pass

    def write(self):
        """The application writes through the writer."""
        if self.up and self.writable:
            self.pos[self.server_id] = self.pos.get(self.server_id, 0) + 1

    def stop(self):
        """MariaDB stops (a crash, a power cut); it always starts again read-only."""
        self.up, self.writable = False, False

    def start(self):
        self.up, self.writable = True, False


# -- the simulation ----------------------------------------------------------------------------------------------

class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


class Node:
    def __init__(self, name, local):
        self.name, self.local = name, local
        self.agent: Agent | None = None
        self.stalled = False  # its agent neither ticks nor answers (a hang, or the machine is off)
        self.sees_witness = True
        self.fence_ok = True
        self.fences: list[float] = []  # when this node's agent powered its peer off
        self.power_ons: list[float] = []


def agent_config(directory, name, **overrides) -> Config:
    directory.mkdir(parents=True, exist_ok=True)
    peer = "db2" if name == "db1" else "db1"
    values = dict(name=name, peer_name=peer, peer_ip="10.0.0.2", preferred="db1", bind="10.0.0.1", port=9106,
                  peer_port=9108, peer_server_id=7, api_endpoint="https://api.invalid/v1",
                  token_file=str(directory / "token"), tls_cert=str(directory / "client.crt"),
                  tls_key=str(directory / "client.key"), tls_ca=str(directory / "ca.crt"), witness_name="mon",
                  witness_ip="10.0.0.9", witness_port=9107, state_file=str(directory / "writer-state.json"),
                  health_file=str(directory / "health.json"),
                  hold_file=str(directory / "hold-writes"))
    values.update(overrides)
    return Config(**values)


class Pair:
    """Two masters, the witness, one clock and the network between them."""

    def __init__(self, tmp_path, db1_writable=False, db1_pos=None, db2_pos=None, **cfg_overrides):
        self.dir = tmp_path
        self.clock = Clock()
        self.events: list[tuple] = []
        self.link = True  # between the two masters: the agents' channel and replication
        self.cfg_overrides = cfg_overrides
        self.both_writable_at: list[float] = []
        wcfg = witness_server.Config(bind="127.0.0.1", port=0, cert="-", key="-", ca="-",
                                     groups={"mariadb": {"db1": None, "db2": None}},
                                     state_file=str(tmp_path / "witness" / "state.json"), dead_after=1.8)
        self.witness = Witness(wcfg, now=self.clock)
        self.nodes: dict[str, Node] = {}
        for i, name in enumerate(NAMES, start=1):
            local = FakeLocal(name, i, writable=db1_writable and name == "db1",
                              pos={"db1": db1_pos, "db2": db2_pos}[name], events=self.events)
            local.clock = self.clock
            self.nodes[name] = Node(name, local)
        for name in NAMES:
            self.start_agent(name)

    # -- wiring
    def start_agent(self, name) -> Agent:
        """A (new) agent process on `name`: its state comes from its state file."""
        node, other = self.nodes[name], self.other(name)
        a = Agent(agent_config(self.dir / name, name, **self.cfg_overrides), local=node.local, channel=object(),
                  now=self.clock)

        def ask_witness(req):
            if node.stalled or not node.sees_witness:
                return None
            return self.witness.handle(a.cfg.name, {"group": "mariadb", "name": a.cfg.name, **req})

        def peer_status():
            if not self.link or other.stalled or other.agent is None:
                return None
            return other.agent.report()

        def fence():
            node.fences.append(self.clock.t)
            self.events.append(("fence", name, self.clock.t))
            if node.fence_ok:
                self.power_off(other.name)
            return node.fence_ok

        def power_on_peer():
            node.power_ons.append(self.clock.t)
            self.events.append(("power on", name, self.clock.t))
            a.restart_peer_at = None

        a.ask_witness, a.peer_status, a.fence, a.power_on_peer = ask_witness, peer_status, fence, power_on_peer
        if node.agent is not None:
            node.agent.pool.shutdown(wait=False)
        node.agent = a
        return a

    def other(self, name) -> Node:
        return self.nodes["db2" if name == "db1" else "db1"]

    def agent(self, name) -> Agent:
        return self.nodes[name].agent

    def local(self, name) -> FakeLocal:
        return self.nodes[name].local

    # -- faults
    def power_off(self, name):
        self.nodes[name].stalled = True
        self.nodes[name].local.stop()

    def power_on(self, name):
        """The machine boots: MariaDB read-only, a new agent process from the state on disk."""
        node = self.nodes[name]
        node.local.start()
        node.stalled = False
        return self.start_agent(name)

    # -- time
    def replicate(self):
        for src, dst in ((self.local("db1"), self.local("db2")), (self.local("db2"), self.local("db1"))):
            if self.link and src.up and dst.up and dst.receiving:
                dst.received = merge(dst.received, src.pos)
            if dst.up and dst.applying:
                dst.pos = merge(dst.pos, dst.received)

    def step(self):
        self.clock.t += STEP
        self.replicate()
        for name in NAMES:
            self.local(name).write()
        for name in NAMES:
            if not self.nodes[name].stalled:
                self.agent(name).tick()
                if self.writable() == {"db1", "db2"}:
                    self.both_writable_at.append(self.clock.t)

    def run(self, seconds):
        for _ in range(round(seconds / STEP)):
            self.step()

    def run_until(self, condition, seconds):
        for _ in range(round(seconds / STEP)):
            self.step()
            if condition():
                return self.clock.t
        raise AssertionError(f"not reached within {seconds} s")

    def run_scheduled(self, seconds):
        """Each agent checks when it asks to (Agent.next_check_at), as its process does, instead of on
        the shared half-second steps; the masters write and replicate every 50 ms."""
        due = {name: self.clock.t for name in NAMES}
        end, tick = self.clock.t + seconds, 0.05
        next_write = self.clock.t
        while True:
            name = min(due, key=due.get)
            at = min(due[name], next_write)
            if at > end:
                return
            self.clock.t = at
            if at == next_write:
                self.replicate()
                for n in NAMES:
                    self.local(n).write()
                next_write = round(at + tick, 6)
                continue
            node = self.nodes[name]
            if node.stalled:
                due[name] = at + STEP
                continue
            node.agent.tick()
            if self.writable() == {"db1", "db2"}:
                self.both_writable_at.append(at)
            due[name] = node.agent.next_check_at(at)

    # -- what the tests look at
    def writable(self) -> set[str]:
        return {n for n in NAMES if self.local(n).up and self.local(n).writable}

    def epoch(self) -> tuple[int, str | None]:
        v = self.witness.view("mariadb")
        return v["epoch"], v["writer"]

    def fences(self) -> list[tuple]:
        return [e for e in self.events if e[0] == "fence"]

    def close(self):
        for node in self.nodes.values():
            if node.agent is not None:
                node.agent.pool.shutdown(wait=False)


@pytest.fixture
def pair_factory(tmp_path):
    pairs = []

    def make(**kw):
        p = Pair(tmp_path, **kw)
        pairs.append(p)
        return p

    yield make
    for p in pairs:
        p.close()


@pytest.fixture
def running(pair_factory):
    """A working pair: db1 writes at epoch 1, db2 replicates and has caught up with epoch 1."""
    pair = pair_factory()
    pair.run_until(lambda: pair.writable() == {"db1"} and pair.agent("db2").synced_epoch == 1, 10)
    pair.run(1)
    assert pair.epoch() == (1, "db1") and pair.fences() == []
    return pair


# -- GTID positions ----------------------------------------------------------------------------------------------

def test_gtid_positions_compare_domain_by_domain():
    assert parse_gtid("1-1-10,2-2-5") == {(1, 1): 10, (2, 2): 5}
    assert contains("1-1-10,2-2-5", "1-1-9,2-2-5") and not contains("1-1-10,2-2-5", "2-2-6")
    assert contains("1-1-3", "")
    assert parse_gtid("") == {} and parse_gtid(None) == {}


# -- the rules ---------------------------------------------------------------------------------------------------

def test_first_start_the_preferred_master_claims_epoch_one_once_it_holds_what_the_peer_wrote(pair_factory):
    pair = pair_factory(db1_pos={1: 10, 2: 5}, db2_pos={1: 10, 2: 6})
    pair.local("db1").receiving = False  # db2 holds a transaction db1 has not received yet
    pair.run(5)
    assert pair.writable() == set() and pair.epoch() == (0, None)
    pair.local("db1").receiving = True
    pair.run(1)
    assert pair.writable() == {"db1"} and pair.epoch() == (1, "db1")
    assert contains(fmt(pair.local("db1").pos), "2-2-6")
    pair.run(10)
    assert pair.writable() == {"db1"} and pair.epoch() == (1, "db1")
    assert pair.agent("db1").state.last_writer == "db1" and pair.agent("db2").state.last_writer == "db1"
    assert pair.fences() == [] and pair.both_writable_at == []


def test_while_writes_are_held_nobody_promotes_and_the_writer_steps_down(pair_factory, tmp_path):
    pair = pair_factory()
    for name in NAMES:
        (tmp_path / name / "hold-writes").touch()
    pair.run(5)
    assert pair.writable() == set() and pair.epoch() == (0, None)
    for name in NAMES:
        (tmp_path / name / "hold-writes").unlink()
    pair.run_until(lambda: pair.writable() == {"db1"}, 5)
    pair.run(2)
    for name in NAMES:  # a restore begins on the working pair
        (tmp_path / name / "hold-writes").touch()
    pair.step()
    assert pair.writable() == set()
    pair.run(10)
    assert pair.writable() == set() and pair.epoch() == (1, "db1") and pair.fences() == []
    for name in NAMES:
        (tmp_path / name / "hold-writes").unlink()
    pair.run(1)
    assert pair.writable() == {"db1"} and pair.epoch() == (1, "db1")


def test_a_power_cut_of_the_writer_fences_it_then_the_other_takes_epoch_two(running):
    pair = running
    cut = pair.clock.t
    pair.power_off("db1")
    claimed = pair.run_until(lambda: pair.epoch()[0] == 2, 10)
    failover_after = pair.agent("db2").cfg.failover_after
    assert failover_after <= claimed - cut <= failover_after + 1.0
    assert claimed - cut >= pair.witness.cfg.dead_after  # the witness had not heard db1 for that long
    assert pair.epoch() == (2, "db2") and pair.writable() == {"db2"}
    fence_at = pair.nodes["db2"].fences
    assert fence_at == [claimed]
    order = [e[:2] for e in pair.events if e[0] in ("fence", "writable")]
    assert order == [("writable", "db1"), ("fence", "db2"), ("writable", "db2")]  # fenced BEFORE promoting
    assert pair.agent("db2").state.fenced_peer_at > 0
    restart_after = pair.agent("db2").cfg.restart_fenced_after
    pair.run(restart_after - 1)
    assert pair.nodes["db2"].power_ons == []
    pair.run(2)
    assert len(pair.nodes["db2"].power_ons) == 1
    assert restart_after <= pair.nodes["db2"].power_ons[0] - claimed <= restart_after + STEP
    assert pair.both_writable_at == []


def writable_at(pair, name):
    return next(e[2] for e in reversed(pair.events) if e[:2] == ("writable", name))


def test_a_silent_writer_is_taken_over_the_moment_its_grace_ends_not_a_check_later(running):
    pair = running
    pair.run_scheduled(2.1)  # any phase of the checks: the clock is no longer on a half second
    db2 = pair.agent("db2")
    pair.power_off("db1")
    last_answer = db2.peer_seen_at
    pair.run_scheduled(4)
    assert pair.epoch() == (2, "db2") and pair.writable() == {"db2"}
    took = writable_at(pair, "db2") - last_answer
    assert db2.cfg.failover_after <= took <= db2.cfg.failover_after + 0.05
    assert pair.both_writable_at == []


def test_a_writer_that_hears_nobody_steps_down_the_moment_its_grace_ends(running):
    pair = running
    pair.run_scheduled(1.3)
    db1 = pair.agent("db1")
    pair.link = False
    pair.nodes["db1"].sees_witness = False
    heard = max(db1.peer_seen_at, db1.witness_seen_at)
    pair.run_scheduled(1.5)
    stepped_down = next(e[2] for e in pair.events if e[:2] == ("read-only", "db1"))
    assert db1.cfg.isolation_after <= stepped_down - heard <= db1.cfg.isolation_after + 0.05
    assert pair.epoch() == (1, "db1")  # stepped down before the witness could grant the epoch away
    pair.run_scheduled(4)
    assert pair.epoch() == (2, "db2") and pair.writable() == {"db2"} and pair.both_writable_at == []


def test_a_peer_whose_mariadb_is_down_is_taken_over_when_half_the_grace_ends(running):
    pair = running
    pair.run_scheduled(0.8)
    pair.local("db1").stop()  # MariaDB dies; its agent goes on answering
    pair.run_scheduled(3)
    assert pair.epoch() == (2, "db2") and pair.writable() == {"db2"} and pair.fences() == []
    down_at = writable_at(pair, "db2") - pair.agent("db2").cfg.failover_after / 2
    # the peer's agent noticed within its check interval; the takeover waits no longer than that
    assert down_at <= pair.clock.t and writable_at(pair, "db2") - down_at <= pair.agent("db2").cfg.failover_after / 2


def test_checks_keep_their_rhythm_when_a_check_waits_for_a_timeout(running):
    pair = running
    db2 = pair.agent("db2")
    started = pair.clock.t
    pair.clock.t += 0.3  # the peer's answer timed out
    db2.tick()
    assert db2.next_check_at(started) == pytest.approx(started + db2.cfg.interval)


def test_a_master_returning_with_stale_data_cannot_take_the_epoch_while_the_writer_stalls(running):
    pair = running
    pair.power_off("db1")
    pair.run_until(lambda: pair.writable() == {"db2"}, 10)
    pair.run(5)  # db2 writes at epoch 2; db1 is off and misses it
    db1 = pair.power_on("db1")
    assert db1.synced_epoch is None and db1.state.epoch == 1  # what it knew, from its state file
    pair.nodes["db2"].stalled = True  # ...just as db2's agent stalls: its MariaDB still takes writes
    fences_before = list(pair.fences())
    pair.run(3)
    assert pair.epoch() == (2, "db2")
    assert pair.writable() == {"db2"}
    assert pair.fences() == fences_before
    assert db1.state.epoch == 2 and db1.synced_epoch is None
    # and the witness itself would refuse it
    answer = pair.witness.handle("db1", {"group": "mariadb", "name": "db1", "op": "claim", "epoch": 2,
                                         "synced_epoch": None})
    assert answer["granted"] is False and pair.epoch() == (2, "db2")
    pair.nodes["db2"].stalled = False  # db2 answers again: db1 catches up and stays a replica
    pair.run(3)
    assert db1.synced_epoch == 2 and pair.writable() == {"db2"} and pair.both_writable_at == []


def test_when_only_the_link_between_the_masters_is_cut_nothing_changes(running):
    pair = running
    pair.link = False
    for _ in range(20):
        pair.step()
        assert pair.writable() == {"db1"}, pair.clock.t
    assert pair.epoch() == (1, "db1") and pair.fences() == []


def test_an_isolated_writer_steps_down_before_the_other_side_takes_over(running):
    pair = running
    cut = pair.clock.t
    pair.link = False
    pair.nodes["db1"].sees_witness = False
    stepped_down = pair.run_until(lambda: "db1" not in pair.writable(), 5)
    assert stepped_down - cut <= pair.agent("db1").cfg.isolation_after + STEP
    assert pair.epoch() == (1, "db1")  # nothing granted away yet
    pair.run_until(lambda: pair.writable() == {"db2"}, 10)
    assert pair.epoch() == (2, "db2")
    assert [e[:2] for e in pair.fences()] == [("fence", "db2")]
    assert pair.both_writable_at == []


def test_without_the_witness_nobody_is_promoted_at_first_start(pair_factory):
    pair = pair_factory()
    for name in NAMES:
        pair.nodes[name].sees_witness = False
    pair.run(10)
    assert pair.writable() == set() and pair.fences() == []
    assert pair.witness.view("mariadb")["epoch"] == 0


def test_without_the_witness_a_writer_that_sees_its_peer_stays_writable(running):
    pair = running
    for name in NAMES:
        pair.nodes[name].sees_witness = False
    for _ in range(20):
        pair.step()
        assert pair.writable() == {"db1"}, pair.clock.t
    assert pair.epoch() == (1, "db1") and pair.fences() == []


def test_when_the_writers_mariadb_is_down_the_other_promotes_without_fencing(running):
    pair = running
    down = pair.clock.t
    pair.local("db1").stop()  # the agent on db1 still answers, and reports its MariaDB down
    promoted = pair.run_until(lambda: pair.writable() == {"db2"}, 10)
    # half of failover_after: the MariaDB its own agent reports down comes back read-only
    assert pair.agent("db2").cfg.failover_after / 2 <= promoted - down <= pair.agent("db2").cfg.failover_after + 0.5
    assert pair.epoch() == (2, "db2") and pair.fences() == []
    pair.local("db1").start()  # it comes back read-only and stays a replica
    pair.run(5)
    assert pair.writable() == {"db2"} and pair.fences() == [] and pair.both_writable_at == []


def test_no_fence_no_promotion_and_fences_are_retried_with_backoff_up_to_a_minute(running):
    pair = running
    pair.nodes["db2"].fence_ok = False  # the Hetzner API fails
    pair.power_off("db1")
    pair.run(250)
    tries = pair.nodes["db2"].fences
    gaps = [round(b - a, 1) for a, b in zip(tries, tries[1:], strict=False)]
    assert gaps[:6] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0], gaps
    assert set(gaps[4:]) == {60.0}
    assert pair.writable() == set()
    assert "SET GLOBAL read_only = OFF" not in pair.local("db2").log


def test_a_restarted_agent_still_fences_before_it_promotes(running):
    pair = running
    pair.nodes["db2"].fence_ok = False
    pair.nodes["db1"].stalled = True  # db1's agent hangs: its MariaDB stays writable
    pair.run_until(lambda: pair.epoch() == (2, "db2"), 10)
    pair.run(2)
    assert pair.writable() == {"db1"}
    pair.start_agent("db2")  # db2's agent restarts (a crash, a deploy) while the fence still fails
    pair.run(10)
    assert "db2" not in pair.writable() and pair.both_writable_at == []


def test_an_old_writer_that_answers_once_is_still_fenced_before_the_other_promotes(running):
    pair = running
    pair.nodes["db2"].fence_ok = False
    pair.nodes["db1"].sees_witness = False
    pair.nodes["db1"].stalled = True  # db1's agent hangs: its MariaDB stays writable
    pair.run_until(lambda: pair.epoch() == (2, "db2"), 10)
    pair.nodes["db1"].stalled = False  # it answers its peer for a moment (it still cannot reach the witness)
    pair.run(1)
    pair.nodes["db1"].stalled = True  # and hangs again, still writable
    pair.run(5)
    assert pair.both_writable_at == [] and "db2" not in pair.writable()


def test_a_writable_master_of_a_pair_the_witness_does_not_know_yet_claims_epoch_one(pair_factory):
    pair = pair_factory(db1_writable=True)  # an existing pair, upgraded: no epoch anywhere yet
    assert pair.agent("db1").state.epoch == 0
    pair.step()
    assert pair.epoch() == (1, "db1") and pair.writable() == {"db1"}
    pair.run(5)
    assert pair.epoch() == (1, "db1") and pair.writable() == {"db1"}
    assert pair.agent("db1").state.epoch == 1 and pair.agent("db2").state.epoch == 1
    assert pair.fences() == []


def test_a_writable_master_steps_down_when_the_epoch_belongs_to_the_other(pair_factory):
    pair = pair_factory(db1_writable=True)
    pair.witness.epochs = {"mariadb": {"epoch": 3, "writer": "db2"}}
    pair.step()
    assert "db1" not in pair.writable()
    pair.run(2)  # db2 holds the epoch: it takes writes again
    assert pair.writable() == {"db2"} and pair.epoch() == (3, "db2")
    assert pair.both_writable_at == [] and pair.fences() == []


def test_no_promotion_while_the_relay_log_is_not_applied(running):
    pair = running
    db2 = pair.local("db2")
    db2.applying = False  # db1's last transactions are received, not yet applied
    pair.step()
    assert not contains(fmt(db2.pos), fmt(db2.received))
    pair.local("db1").stop()
    pair.run(5)
    assert pair.epoch() == (2, "db2")  # the epoch is granted...
    assert pair.writable() == set()  # ...but db2 does not take writes on top of unapplied ones
    assert "SET GLOBAL read_only = OFF" not in db2.log
    assert any("MASTER_GTID_WAIT" in q for q in db2.log)
    db2.applying = True
    pair.run(1)
    assert pair.writable() == {"db2"} and pair.fences() == []


def test_the_epoch_and_the_writer_survive_a_restart_but_being_caught_up_does_not(running):
    pair = running
    assert pair.agent("db2").synced_epoch == 1
    db1, db2 = pair.start_agent("db1"), pair.start_agent("db2")
    assert (db1.state.epoch, db1.state.last_writer) == (1, "db1") and db1.state.promoted_at > 0
    assert (db2.state.epoch, db2.state.last_writer) == (1, "db1")
    assert db2.synced_epoch is None
    assert State.load(db2.cfg.state_file).epoch == 1
    pair.run(2)  # db2 catches up again by watching db1 write
    assert db2.synced_epoch == 1 and pair.writable() == {"db1"}


def test_a_state_file_that_cannot_be_read_starts_from_nothing(tmp_path):
    path = tmp_path / "writer-state.json"
    path.write_text("{not json")
    assert State.load(str(path)) == State()
    assert State.load(str(tmp_path / "missing.json")) == State()


# -- real sockets ------------------------------------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path):
    """Certificates from a stack CA like the real one: db1, db2 and the witness; one of another name; one from
    another CA."""
    ca = CertificateAuthority.own(tmp_path / "pki", "test")
    for name in ("db1", "db2", "app1"):
        ca.issue(f"witness-{name}", dns=[name], client=True)
    ca.issue("witness-mon", dns=["mon"])
    CertificateAuthority.own(tmp_path / "other-pki", "other").issue("witness-db2", dns=["db2"], client=True)

    def files(name, other_ca=False):
        d = tmp_path / ("other-pki" if other_ca else "pki")
        return SimpleNamespace(tls_cert=str(d / "issued" / f"witness-{name}.crt"),
                               tls_key=str(d / "issued" / f"witness-{name}.key"), tls_ca=str(d / "ca.crt"))

    return files


def client_context(files=None, ca=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca or files.tls_ca)
    if files is not None:
        ctx.load_cert_chain(files.tls_cert, files.tls_key)
    return ctx


def exchange(port, ctx, hostname, line: bytes) -> bytes | None:
    """One line to a TLS server and its answer; None when the connection fails."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            with ctx.wrap_socket(raw, server_hostname=hostname) as s:
                s.sendall(line)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                return data
    except OSError:
        return None


def health(port) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"haproxy\n")
        return s.recv(64)


@pytest.fixture
def served(running, pki):
    """db1 and db2 of a working pair, each serving its health and peer ports on 127.0.0.1."""
    servers = {}
    for name in NAMES:
        a = running.agent(name)
        f = pki(name)
        a.cfg.bind, a.cfg.port, a.cfg.peer_port = "127.0.0.1", 0, 0
        a.cfg.tls_cert, a.cfg.tls_key, a.cfg.tls_ca = f.tls_cert, f.tls_key, f.tls_ca
        servers[name] = serve(a)
    yield {name: SimpleNamespace(health=h.server_address[1], peer=p.server_address[1])
           for name, (h, p) in servers.items()}
    for pair_of_servers in servers.values():
        for srv in pair_of_servers:
            srv.shutdown()
            srv.server_close()


def test_the_health_port_says_up_only_for_the_writer(served, running):
    assert running.writable() == {"db1"}
    assert health(served["db1"].health) == b"up ready\n"
    assert health(served["db2"].health) == b"down\n"
    running.local("db1").stop()
    running.step()
    assert health(served["db1"].health) == b"down\n"


def test_a_stalled_writer_agent_stops_saying_up(served, running):
    """The app servers drop a writer whose agent stopped checking, before the witness gives its epoch away."""
    assert health(served["db1"].health) == b"up ready\n"
    running.nodes["db1"].stalled = True  # db1's agent neither checks nor publishes
    running.clock.t += 1.0
    assert health(served["db1"].health) == b"up ready\n"
    running.clock.t += 1.0
    assert health(served["db1"].health) == b"down\n" and running.local("db1").writable


def test_a_stalled_writer_agent_keeps_saying_up_while_its_peer_could_not_take_over(served, running):
    """A peer that has not caught up with the epoch cannot be granted it (nor catch up while the writer's
    agent is silent): dropping the writer would only be an outage."""
    running.start_agent("db2")  # db2's agent restarts: it has to catch up again
    running.step()
    assert running.agent("db2").synced_epoch is None and not running.agent("db1").peer_could_take_over
    running.nodes["db1"].stalled = True
    running.clock.t += 3.0
    assert health(served["db1"].health) == b"up ready\n"


def test_a_health_file_that_cannot_be_read_for_a_moment_is_answered_from_the_last_read(served, running, monkeypatch):
    """Out of file descriptors under a flood, the health file cannot be opened: the last answer read still
    counts, and its age still decides."""
    from roles.mariadb import writer_agent

    assert health(served["db1"].health) == b"up ready\n"
    monkeypatch.setattr(writer_agent, "read_health", lambda path: None)  # as open() failing with EMFILE
    assert health(served["db1"].health) == b"up ready\n"
    running.clock.t += 2.0  # no newer answer could be read, and the last one went stale
    assert health(served["db1"].health) == b"down\n"


def test_the_health_port_still_answers_the_status_agents_before_the_witness_asked(served):
    """A converge upgrades one master's agent before the other's: the old one must not see a dead peer."""
    with socket.create_connection(("127.0.0.1", served["db1"].health), timeout=2) as s:
        s.sendall(b"status\n")
        status = json.loads(s.makefile().readline())
    assert status["mysqld"] is True and status["writable"] is True and "mysqld_down_for" in status
    assert "gtid_binlog_pos" in status and "promoted_at" in status


def test_the_peer_port_answers_the_peers_certificate_only(served, pki):
    port = served["db1"].peer
    answer = exchange(port, client_context(pki("db2")), "db1", b'{"op": "status"}\n')
    status = json.loads(answer)
    assert status["name"] == "db1" and status["writable"] is True and status["epoch"] == 1
    # the agent's own channel, as db2's agent asks it
    assert Channel(pki("db2")).ask("db1", "127.0.0.1", port, {"op": "status"})["writable"] is True
    # a certificate of the same CA but another name: refused
    assert json.loads(exchange(port, client_context(pki("app1")), "db1", b'{"op": "status"}\n')) == {
        "error": "not the peer"}
    assert Channel(pki("app1")).ask("db1", "127.0.0.1", port, {"op": "status"}) is None
    # no certificate, or one from another CA: no answer at all
    assert not exchange(port, client_context(ca=pki("db2").tls_ca), "db1", b'{"op": "status"}\n')
    assert not exchange(port, client_context(pki("db2", other_ca=True), ca=pki("db2").tls_ca), "db1",
                        b'{"op": "status"}\n')


def test_the_health_port_takes_a_burst_of_connections(served):
    port = served["db1"].health
    if shutil.which("ss"):  # the kernel's accept queue for the port (ss shows a listener's backlog as Send-Q)
        listener = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
        assert int(listener[2]) >= 512, listener
    # a burst as from many app servers' checks at once: every one answered
    conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)]
    try:
        for c in conns:
            c.sendall(b"haproxy\n")
        answers = [c.recv(64) for c in conns]
    finally:
        for c in conns:
            c.close()
    assert answers == [b"up ready\n"] * 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_channel_reaches_a_real_witness_and_gets_nothing_when_it_is_down(tmp_path, pki):
    mon = pki("mon")
    wcfg = witness_server.Config(bind="127.0.0.1", port=0, cert=mon.tls_cert, key=mon.tls_key, ca=mon.tls_ca,
                                 groups={"mariadb": {"db1": None, "db2": None}},
                                 state_file=str(tmp_path / "witness" / "state.json"))
    witness = Witness(wcfg)
    srv = witness_server.serve(wcfg, witness)
    port = srv.server_address[1]
    db1 = pki("db1")
    cfg = agent_config(tmp_path / "db1", "db1", peer_ip="127.0.0.1", peer_port=free_port(), witness_ip="127.0.0.1",
                       witness_port=port, tls_cert=db1.tls_cert, tls_key=db1.tls_key, tls_ca=db1.tls_ca)
    agent = Agent(cfg, local=FakeLocal("db1", 1))  # its real channel
    try:
        view = agent.ask_witness({"op": "view"})
        assert view["epoch"] == 0 and set(view["members"]) == {"db1", "db2"}
        agent.tick()  # a heartbeat; the peer does not answer
        assert witness.heard["mariadb"]["db1"]["mysqld"] is True
        assert agent.witness["epoch"] == 0 and agent.peer_lost_since is not None
    finally:
        srv.shutdown()
        srv.server_close()
    try:
        assert agent.ask_witness({"op": "view"}) is None
        assert Channel(cfg).ask("mon", "127.0.0.1", port, {"group": "mariadb", "name": "db1", "op": "view"}) is None
    finally:
        agent.pool.shutdown(wait=False)


def test_metrics_say_whether_the_witness_answers_and_which_epoch_this_master_knows(pair_factory, tmp_path):
    pair = pair_factory()
    pair.agent("db1").cfg.metrics_file = str(tmp_path / "textfile" / "writer.prom")  # db1's only
    pair.run_until(lambda: pair.writable() == {"db1"}, 10)
    pair.run(1)

    def metrics(name):
        text = (tmp_path / "textfile" / "writer.prom").read_text()
        return {line.split()[0]: line.split()[1] for line in text.splitlines() if not line.startswith("#")}

    m = metrics("db1")
    assert m["hastack_mariadb_witness_reachable"] == "1" and m["hastack_mariadb_writer_epoch"] == "1"
    assert m["hastack_mariadb_writes_held"] == "0" and m['hastack_mariadb_peer_fenced{peer="db2"}'] == "0"
    for node in pair.nodes.values():
        node.sees_witness = False
    pair.run(1)
    assert metrics("db1")["hastack_mariadb_witness_reachable"] == "0"
    assert pair.writable() == {"db1"}  # it still sees its peer: no reason to step down


def test_the_health_port_is_a_process_of_its_own_that_outlives_a_stall_and_is_restarted(tmp_path):
    """`run` serves the health port from a child process reading the health file: a stalled agent does
    not silence it, and a health process that dies is started again."""
    import os
    import signal
    import time as _time

    from roles.mariadb.writer_agent import HealthProcess

    cfg = agent_config(tmp_path, "db1", bind="127.0.0.1", port=0)
    (tmp_path / "health.json").write_text(json.dumps(
        {"at": _time.monotonic() - 10, "could_be_taken_over": False, "status": {"writable": True}}))
    hp = HealthProcess(cfg)
    port = hp.server.server_address[1]
    try:
        assert health(port) == b"up ready\n"  # old, but the peer could not take over: still up
        (tmp_path / "health.json").write_text(json.dumps(
            {"at": _time.monotonic() - 10, "could_be_taken_over": True, "status": {"writable": True}}))
        assert health(port) == b"down\n"
        first = hp.pid
        os.kill(first, signal.SIGKILL)
        deadline = _time.monotonic() + 5
        while hp.pid == first and _time.monotonic() < deadline:
            _time.sleep(0.05)
            hp.keep_running()
        assert hp.pid != first
        (tmp_path / "health.json").write_text(json.dumps(
            {"at": _time.monotonic(), "could_be_taken_over": True, "status": {"writable": True}}))
        assert health(port) == b"up ready\n"
    finally:
        os.kill(hp.pid, signal.SIGKILL)
        os.waitpid(hp.pid, 0)
        hp.server.server_close()


def test_new_tls_files_are_taken_without_a_restart_and_a_half_written_pair_keeps_the_last_context(tmp_path):
    """The stack CA rotating: the agent's certificate and CA files change under it; it serves the new ones
    from the next connection, and while only the certificate is new (its key not yet) it keeps the old."""
    import os
    from roles.mariadb.writer_agent import TLSFiles

    cfg = agent_config(tmp_path / "agent", "db1")
    first = CertificateAuthority.own(tmp_path / "ca1", "t").issue("db1", dns=["db1"], client=True)

    def put(issued, key=True):
        for path, text in ((cfg.tls_cert, issued.chain_pem), (cfg.tls_ca, issued.ca_pem)) + \
                ((cfg.tls_key, issued.key_pem),) * key:
            with open(path, "w") as f:
                f.write(text)
            os.utime(path, ns=(os.stat(path).st_mtime_ns + 1_000_000,) * 2)

    put(first)
    files = TLSFiles(cfg)
    ctx = files.context()
    assert files.context() is ctx  # unchanged files: the same context
    second = CertificateAuthority.own(tmp_path / "ca2", "t").issue("db1", dns=["db1"], client=True)
    put(second, key=False)
    assert files.context() is ctx  # the new certificate with the old key makes no context: the last one serves
    put(second)
    taken = files.context()
    assert taken is not ctx
    assert [c["subject"] for c in taken.get_ca_certs()] == [c["subject"] for c in
                                                              ssl.create_default_context(cafile=cfg.tls_ca).get_ca_certs()]
