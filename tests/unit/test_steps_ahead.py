"""A role's step after the roles that needs only its own hosts (the Cassandra ring) starts as soon as those
hosts have run their operations, while other hosts still run theirs (hastack.converge.StepsAhead), and its
results are reported with the other steps'. The operations here sleep instead of running commands; the
lab's converges run the real ones (tests/lab/test_lab_cassandra.py forms the ring this way)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gevent
import pytest
from gevent.pool import Pool

from hastack import converge, host_runs
from hastack.role import AfterRolesError


class Data(dict):
    def dict(self):
        return dict(self)


@dataclass(eq=False)
class Host:
    name: str
    data: Data
    op_hash_order: list[str] = field(default_factory=list)


@dataclass
class Meta:
    changed: bool = False
    error: bool = False
    complete: bool = False

    def is_complete(self):
        return self.complete

    def did_change(self):
        return self.changed

    def did_error(self):
        return self.error


@dataclass
class OpData:
    operation_meta: Meta


class FakeState:
    """What run_each_host and StepsAhead read of pyinfra's State."""

    def __init__(self, hosts: dict[str, tuple[list[str], list[str]]]):
        """``hosts``: name -> (its roles, its operations); every host has its operations in one order."""
        self.hosts = {n: Host(n, Data(roles=roles), list(ops)) for n, (roles, ops) in hosts.items()}
        self.ops = {h: dict.fromkeys(h.op_hash_order) for h in self.hosts.values()}
        self.metas = {(h.name, op): Meta() for h in self.hosts.values() for op in h.op_hash_order}
        self.order = list(dict.fromkeys(op for h in self.hosts.values() for op in h.op_hash_order))
        self.pool = Pool(len(hosts))
        self.failed_hosts: set[Host] = set()
        self.inventory = self

    def __iter__(self):
        return iter(self.hosts.values())

    def get_active_hosts(self):
        return [h for h in self.hosts.values() if h not in self.failed_hosts]

    def get_op_order(self):
        return self.order

    def get_op_data_for_host(self, host, op_hash):
        return OpData(self.metas[(host.name, op_hash)])

    def fail_hosts(self, hosts):
        self.failed_hosts |= hosts


@dataclass(frozen=True)
class FakeRole:
    name: str
    step: object
    after_roles_alone: bool

    def after_roles_step(self):
        return self.step


@pytest.fixture
def clock():
    t0 = time.monotonic()
    return lambda: round(time.monotonic() - t0, 2)


def run(state, seconds, monkeypatch, changes=frozenset(), fails=frozenset(), looks=None):
    """Run every host's operations (each taking ``seconds[(host, op)]``, else 0.01) with the steps ahead,
    then the steps after the roles, as hastack.converge.converge does."""

    def fake_run_host_op(state, host, op_hash):
        gevent.sleep(seconds.get((host.name, op_hash), 0.01))
        meta = state.metas[(host.name, op_hash)]
        meta.complete, meta.changed = True, (host.name, op_hash) in changes
        meta.error = (host.name, op_hash) in fails
        return not meta.error

    monkeypatch.setattr(host_runs, "run_host_op", fake_run_host_op)
    said = []
    ahead = converge.StepsAhead(state, state.inventory, said.append, looks or {})
    host_runs.run_each_host(state, when_done=ahead.host_done)
    ahead.hosts_finished()
    reports = {name: converge.HostReport(name) for name in state.hosts}
    for h in state.hosts.values():  # what _collect reads of pyinfra's metadata
        report = reports[h.name]
        for op in h.op_hash_order:
            meta = state.metas[(h.name, op)]
            if meta.error:
                report.failed = f"{op} failed"
            elif meta.changed:
                report.changed += 1
    converge._after_roles(state, state.inventory, reports, said.append, looks, ahead)
    return ahead, reports, said


def roles_with(monkeypatch, *roles):
    monkeypatch.setattr(converge, "all_roles", lambda: roles)


def test_a_step_of_its_own_hosts_starts_when_they_are_done_not_when_every_host_is(monkeypatch, clock):
    state = FakeState({"cass1": (["cassandra"], ["base", "java"]), "cass2": (["cassandra"], ["base", "java"]),
                       "db1": (["mariadb"], ["base", "mariadb"])})
    started = {}

    def ring(step):
        started["ring"] = clock()
        gevent.sleep(0.3)
        yield "cass1", "Cassandra ring: joined"

    def restart(step):
        started["restart"] = clock()
        return [("db1", "MariaDB restarted")]

    roles_with(monkeypatch, FakeRole("mariadb", restart, False), FakeRole("cassandra", ring, True))
    ahead, reports, said = run(state, {("cass2", "java"): 0.2, ("db1", "mariadb"): 1.0}, monkeypatch)
    assert started["ring"] == pytest.approx(0.2, abs=0.15)  # cass2's last operation, not db1's
    assert started["restart"] == pytest.approx(1.0, abs=0.15)  # a step not marked waits for every host
    assert ahead.ran_ahead["cassandra"] == pytest.approx(0.3, abs=0.15)  # all of the ring's own 0.3 s
    assert reports["cass1"].changed_operations == ["Cassandra ring: joined"]
    assert reports["db1"].changed_operations == ["MariaDB restarted"]
    assert any("its step after the roles starts while 1 other hosts run theirs" in m for m in said)


def test_a_step_that_outlasts_the_other_hosts_counts_ahead_only_until_they_end(monkeypatch):
    state = FakeState({"cass1": (["cassandra"], ["java"]), "db1": (["mariadb"], ["base"])})

    def ring(step):
        gevent.sleep(0.6)
        return []

    roles_with(monkeypatch, FakeRole("cassandra", ring, True))
    ahead, _, _ = run(state, {("db1", "base"): 0.3}, monkeypatch)
    assert ahead.ran_ahead["cassandra"] == pytest.approx(0.3, abs=0.1)  # from 0.01 s to db1's end at 0.3 s


def test_a_step_whose_host_failed_does_not_start_and_says_why(monkeypatch):
    state = FakeState({"cass1": (["cassandra"], ["base", "java"]), "cass2": (["cassandra"], ["base", "java"]),
                       "db1": (["mariadb"], ["base"])})
    ran = []
    roles_with(monkeypatch, FakeRole("cassandra", lambda step: ran.append(step) or [], True))
    ahead, reports, _ = run(state, {("db1", "base"): 0.3}, monkeypatch, fails={("cass2", "java")})
    assert ran == [] and ahead.started == {}
    assert reports["cass1"].failed == "cassandra: not changed, because cass2 did not converge"


def test_the_look_ahead_is_handed_over_only_when_nothing_changed_on_the_roles_hosts(monkeypatch):
    for changes, expected in ((set(), "the ring as read"), ({("cass2", "java")}, None)):
        state = FakeState({"cass1": (["cassandra"], ["java"]), "cass2": (["cassandra"], ["java"]),
                           "db1": (["mariadb"], ["base"])})
        looked: list = []
        roles_with(monkeypatch, FakeRole("cassandra", lambda step, seen=looked: seen.append(step.looked) or [], True))
        run(state, {("db1", "base"): 0.3}, monkeypatch, changes=changes,
            looks={"cassandra": gevent.spawn(lambda: "the ring as read")})
        assert looked == [expected]


def test_a_step_that_refuses_ahead_is_reported_with_the_changes_it_made_before(monkeypatch):
    state = FakeState({"cass1": (["cassandra"], ["java"]), "db1": (["mariadb"], ["base"])})

    def ring(step):
        yield "cass1", "Cassandra ring: started a stopped member"
        raise AfterRolesError("Cassandra ring: refusing to add cass2: 10.77.1.81 is DN")

    roles_with(monkeypatch, FakeRole("cassandra", ring, True))
    _, reports, _ = run(state, {("db1", "base"): 0.3}, monkeypatch)
    assert reports["cass1"].changed_operations == ["Cassandra ring: started a stopped member"]
    assert reports["cass1"].failed == "Cassandra ring: refusing to add cass2: 10.77.1.81 is DN"
