"""Each host runs its own operations at its own pace (hastack.host_runs), except at an operation marked
in step, which waits for every host that has it. The operations here sleep (gevent's sleep, timed by the
monotonic clock) instead of running commands; the lab's converges run the real ones."""

from __future__ import annotations

import time
from dataclasses import dataclass

import gevent
import pytest
from gevent.pool import Pool
from pyinfra.api.exceptions import PyinfraError

from hastack import host_runs


@dataclass(frozen=True)
class Host:
    name: str


class FakeState:
    """What run_each_host reads of pyinfra's State: the order, each host's operations, the pool, failing."""

    def __init__(self, ops: dict[str, list[str]], order: list[str], in_step: set[str] = frozenset()):
        self.hosts = {n: Host(n) for n in ops}
        self.ops = {self.hosts[n]: dict.fromkeys(o) for n, o in ops.items()}
        self.order = order
        self.pool = Pool(len(ops))
        self.failed_hosts: set[Host] = set()
        self.active = set(self.hosts.values())
        setattr(self, host_runs.IN_STEP, set(in_step))
        self.inventory = self

    def get_active_hosts(self):
        return [h for h in self.hosts.values() if h in self.active]

    def get_op_order(self):
        return self.order

    def fail_hosts(self, hosts):
        self.failed_hosts |= hosts
        self.active -= hosts
        if hosts and not self.active:
            raise PyinfraError("No hosts remaining!")


def run(state, seconds: dict[tuple[str, str], float], fails: set[tuple[str, str]] = frozenset(), monkeypatch=None):
    """Run with each (host, operation) taking ``seconds`` (0.01 unless given); the (host, operation, start,
    end) of each run, in seconds from the start."""
    ran = []
    t0 = time.monotonic()

    def fake_run_host_op(state, host, op_hash):
        start = time.monotonic() - t0
        gevent.sleep(seconds.get((host.name, op_hash), 0.01))
        ran.append((host.name, op_hash, round(start, 2), round(time.monotonic() - t0, 2)))
        return (host.name, op_hash) not in fails

    monkeypatch.setattr(host_runs, "run_host_op", fake_run_host_op)
    try:
        host_runs.run_each_host(state)
    finally:
        ran.sort(key=lambda r: (r[2], r[0]))
    return ran


def test_a_host_goes_on_without_waiting_for_another_hosts_slow_operation(monkeypatch):
    state = FakeState({"cass1": ["java", "conf"], "db1": ["mariadb", "conf"]}, ["java", "mariadb", "conf"])
    ran = run(state, {("cass1", "java"): 1.0, ("db1", "mariadb"): 0.5}, monkeypatch=monkeypatch)
    starts = {(h, op): start for h, op, start, _ in ran}
    assert starts[("db1", "mariadb")] == pytest.approx(0, abs=0.15)  # not after cass1's java, as pyinfra's own way would run it
    assert starts[("db1", "conf")] == pytest.approx(0.5, abs=0.15)
    assert starts[("cass1", "conf")] == pytest.approx(1.0, abs=0.15)
    assert state.failed_hosts == set()


def test_an_operation_in_step_waits_until_every_host_that_has_it_has_run_everything_before_it(monkeypatch):
    order = ["install", "init", "seed", "after"]
    state = FakeState({"db1": order, "db2": order, "cass1": ["install", "after"]}, order, in_step={"seed"})
    ran = run(state, {("db2", "install"): 1.0, ("cass1", "install"): 3.0}, monkeypatch=monkeypatch)
    starts = {(h, op): start for h, op, start, _ in ran}
    assert starts[("db1", "init")] == pytest.approx(0, abs=0.15)  # not in step: db1 goes on
    # in step: db1 seeds only once db2 has run init (cass1 has no seed and is not waited for)
    assert starts[("db2", "seed")] == pytest.approx(1.0, abs=0.15)
    assert starts[("db1", "seed")] == pytest.approx(1.0, abs=0.15)
    assert starts[("cass1", "after")] == pytest.approx(3.0, abs=0.15)


def test_a_failed_host_stops_there_is_failed_and_holds_no_one_at_a_step(monkeypatch):
    order = ["install", "seed", "after"]
    state = FakeState({"db1": order, "db2": order}, order, in_step={"seed"})
    ran = run(state, {("db1", "install"): 0.5}, fails={("db2", "install")}, monkeypatch=monkeypatch)
    starts = {(h, op): start for h, op, start, _ in ran}
    # db2 ran nothing after its failure, and db1 seeded as soon as it was there
    assert set(starts) == {("db2", "install"), ("db1", "install"), ("db1", "seed"), ("db1", "after")}
    assert starts[("db1", "seed")] == pytest.approx(0.5, abs=0.15)
    assert state.failed_hosts == {state.hosts["db2"]}


def test_every_host_failed_is_pyinfras_error(monkeypatch):
    state = FakeState({"db1": ["a"], "db2": ["a"]}, ["a"])
    with pytest.raises(PyinfraError, match="No hosts remaining"):
        run(state, {}, fails={("db1", "a"), ("db2", "a")}, monkeypatch=monkeypatch)


def test_a_fault_in_a_hosts_run_is_raised_after_the_others_ended(monkeypatch):
    state = FakeState({"db1": ["a", "b"], "db2": ["a", "b"]}, ["a", "b"])
    ran = []

    def fake_run_host_op(state, host, op_hash):
        if host.name == "db1":
            raise RuntimeError("a fault")
        gevent.sleep(0.1)
        ran.append((host.name, op_hash))
        return True

    monkeypatch.setattr(host_runs, "run_host_op", fake_run_host_op)
    with pytest.raises(RuntimeError, match="a fault"):
        host_runs.run_each_host(state)
    assert ran == [("db2", "a"), ("db2", "b")]
