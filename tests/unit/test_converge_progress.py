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


def test_lines_say_the_operation_the_hosts_it_waits_on_and_what_each_host_has_done():
    state, clock, lines = FakeState(), Clock(), []
    p = Progress(state, lines.append, every=10, now=clock)
    p.operation_start(state, "a")
    assert lines == []  # not yet 10 s since the start
    for name in ("db1", "db2", "cass1"):
        p.operation_host_success(state, state.hosts[name], "a")
    clock.t += 11
    p.operation_start(state, "c")
    assert lines == ["operation 3 of 3 (cassandra: Join the ring); done per host: cass1 1/2, db1 1/2, db2 1/2"]
    clock.t += 30
    assert p.line() == ("operation 3 of 3 (cassandra: Join the ring), 30 s so far, waiting on cass1; "
                        "done per host: cass1 1/2, db1 1/2, db2 1/2")
    p.operation_host_error(state, state.hosts["cass1"], "c")
    assert p.line() == "operation 3 of 3 (cassandra: Join the ring); done per host: db1 1/2, db2 1/2"
