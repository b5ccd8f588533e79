"""The converge's progress lines: operations done and left per host, and what a long operation waits on."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from hastack.converge_progress import Progress


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


@dataclass(frozen=True)
class Host:
    name: str


class FakeState:
    def __init__(self):
        self.hosts = {n: Host(n) for n in ("db1", "db2", "cass1")}
        h = self.hosts
        self.ops = {h["db1"]: {"a": 1, "b": 1}, h["db2"]: {"a": 1, "b": 1}, h["cass1"]: {"a": 1, "c": 1}}

    def get_op_order(self):
        return ["a", "b", "c"]

    def get_op_meta(self, op_hash):
        return SimpleNamespace(names={{"a": "hastack | base | Base packages", "b": "hastack | mariadb | MariaDB",
                                       "c": "hastack | cassandra | Join the ring"}[op_hash]})


def test_lines_say_what_is_done_which_host_is_long_on_which_operation_and_what_each_host_has_done():
    state, clock, lines = FakeState(), Clock(), []
    h = state.hosts
    with Progress(state, lines.append, every=10, now=clock) as p:
        for name in ("db1", "db2", "cass1"):
            p.operation_host_start(state, h[name], "a")
            p.operation_host_success(state, h[name], "a")
        p.operation_host_start(state, h["cass1"], "c")
        p.operation_host_start(state, h["db1"], "b")
        clock.t += 5
        assert p.line() == "operations done: 3 of 6; done per host: cass1 1/2, db1 1/2, db2 1/2"
        p.operation_host_success(state, h["db1"], "b")
        clock.t += 25
        # cass1 has been on its operation for 30 s: the line names it
        assert p.line() == ("operations done: 4 of 6; cass1 on cassandra: Join the ring for 30 s; "
                            "done per host: cass1 1/2, db2 1/2")
        p.operation_host_error(state, h["cass1"], "c")
        assert p.line() == "operations done: 5 of 6; done per host: db2 1/2"
        # an operation the host does not have (pyinfra announces every one) is not counted as running
        p.operation_host_start(state, h["cass1"], "b")
        assert "cass1 on" not in p.line()
        # the host's own name for an operation pyinfra shares between roles
        state.hastack_own_names = {("db2", "b"): "hastack | mariadb | Replication from the other master"}
        p.operation_host_start(state, h["db2"], "b")
        clock.t += 12
        assert "db2 on mariadb: Replication from the other master for 12 s" in p.line()
    assert p.slowest() == [("cassandra: Join the ring", 30.0), ("mariadb: MariaDB", 5.0), ("base: Base packages", 0.0)]


def test_a_line_every_so_often_while_operations_run():
    state, clock, lines = FakeState(), Clock(), []
    p = Progress(state, lines.append, every=10, now=clock)
    with p:
        import gevent

        clock.t += 11
        gevent.sleep(1.2)
    assert lines == ["operations done: 0 of 6; done per host: cass1 0/2, db1 0/2, db2 0/2"]
