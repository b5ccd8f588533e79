"""The single-writer agent's decisions, with a scripted local server and peer."""

import pytest

from roles.mariadb.writer_agent import Agent, Config, contains, parse_gtid


class FakeLocal:
    def __init__(self, writable=False, pos="1-1-10,2-2-5"):
        self.writable, self.pos, self.log = writable, pos, []
        self.applied = True  # MASTER_GTID_WAIT: everything received is applied within the wait

    def status(self):
        return {"writable": self.writable, "gtid_binlog_pos": self.pos, "gtid_current_pos": self.pos}

    def query(self, sql, args=()):
        self.log.append(sql)
        if sql.startswith("SET GLOBAL read_only"):
            self.writable = sql.endswith("OFF")
        if "MASTER_GTID_WAIT" in sql:
            return [(0 if self.applied else -1,)]
        return []

    def close(self):
        pass


def agent(tmp_path, name="db1", preferred="db1", local=None, fence_ok=True):
    cfg = Config(name=name, peer_name="db2" if name == "db1" else "db1", peer_ip="10.0.0.2", preferred=preferred,
                 bind="10.0.0.1", port=9106, peer_server_id=7, api_endpoint="https://api.invalid/v1",
                 token_file=str(tmp_path / "token"), state_file=str(tmp_path / "state.json"),
                 hold_file=str(tmp_path / "hold-writes"))
    a = Agent(cfg, local=local or FakeLocal())
    a.clock = 100.0
    a.now = lambda: a.clock
    a.fenced = []
    a.fence = lambda: (a.fenced.append(cfg.peer_name), fence_ok)[1]
    a._io_pos = lambda: "1-1-10,2-2-5"
    return a


def peer(writable=False, mysqld=True, down_for=0.0, pos="1-1-10,2-2-5", promoted_at=0.0):
    return {"mysqld": mysqld, "writable": writable, "mysqld_down_for": down_for, "gtid_binlog_pos": pos,
            "promoted_at": promoted_at}


def tick(a, p):
    a.peer_status = lambda: p
    a.tick()


def test_gtid_positions_compare_domain_by_domain():
    assert parse_gtid("1-1-10,2-2-5") == {(1, 1): 10, (2, 2): 5}
    assert contains("1-1-10,2-2-5", "1-1-9,2-2-5") and not contains("1-1-10,2-2-5", "2-2-6")
    assert contains("1-1-3", "")


def test_cold_start_the_preferred_master_promotes_once_caught_up(tmp_path):
    a = agent(tmp_path)
    tick(a, peer(pos="1-1-10,2-2-6"))  # the peer has a transaction this node has not applied
    assert not a.local.writable
    tick(a, peer())
    assert a.local.writable and a.state.last_writer == "db1"
    (tmp_path / "db2").mkdir()
    other = agent(tmp_path / "db2", name="db2", preferred="db1")
    tick(other, peer())
    assert not other.local.writable  # not the preferred one: it waits


def test_while_writes_are_held_no_master_takes_them_and_a_writer_steps_down(tmp_path):
    """A pair waiting for its restore (or being restored): nothing the application writes may land."""
    (tmp_path / "hold-writes").touch()
    a = agent(tmp_path)
    tick(a, peer())  # a cold start would promote the preferred master
    assert not a.local.writable
    a.clock += 60
    tick(a, peer(mysqld=False, down_for=60))  # and so would a dead peer
    tick(a, None)
    a.clock += 60
    tick(a, None)
    assert not a.local.writable and a.fenced == []
    writer = agent(tmp_path, local=FakeLocal(writable=True))
    tick(writer, peer())
    assert not writer.local.writable
    (tmp_path / "hold-writes").unlink()  # the restore ends
    tick(a, peer())
    assert a.local.writable


def test_a_returning_master_stays_passive(tmp_path):
    a = agent(tmp_path)  # db1 is preferred, but db2 took over while it was away
    tick(a, peer(writable=True))
    assert not a.local.writable and a.state.last_writer == "db2"


def test_peer_unreachable_fence_then_promote_after_the_delay(tmp_path):
    a = agent(tmp_path, name="db2", preferred="db1")
    tick(a, peer(writable=True))  # the pair worked: db1 wrote
    tick(a, None)
    assert not a.local.writable and a.fenced == []
    a.clock += 2.5
    tick(a, None)
    assert a.fenced == ["db1"] and a.local.writable and a.state.last_writer == "db2"


def test_no_fence_no_promotion(tmp_path):
    a = agent(tmp_path, name="db2", preferred="db1", fence_ok=False)
    tick(a, peer(writable=True))
    tick(a, None)
    a.clock += 3
    tick(a, None)
    assert a.fenced == ["db1"] and not a.local.writable
    a.clock += 1  # retries are paced
    tick(a, None)
    assert a.fenced == ["db1"]


def test_a_peer_never_seen_working_is_waited_for_not_fenced(tmp_path):
    a = agent(tmp_path)
    tick(a, None)
    a.clock += 60
    tick(a, None)
    assert a.fenced == [] and not a.local.writable


def test_peer_alive_but_its_mariadb_down_promotes_without_fencing(tmp_path):
    a = agent(tmp_path, name="db2", preferred="db1")
    tick(a, peer(writable=True))
    tick(a, peer(mysqld=False, down_for=0.5))
    assert not a.local.writable
    tick(a, peer(mysqld=False, down_for=2.5))
    assert a.local.writable and a.fenced == []


def test_two_writers_the_earlier_promoted_steps_down(tmp_path):
    a = agent(tmp_path, local=FakeLocal(writable=True))
    a.state.promoted_at = 1000.0
    tick(a, peer(writable=True, promoted_at=2000.0))
    assert not a.local.writable
    (tmp_path / "b").mkdir()
    b = agent(tmp_path / "b", local=FakeLocal(writable=True))
    b.state.promoted_at = 3000.0
    tick(b, peer(writable=True, promoted_at=2000.0))
    assert b.local.writable


def test_local_server_down_publishes_down_and_decides_nothing(tmp_path):
    a = agent(tmp_path)
    a.local.status = lambda: None
    tick(a, peer())
    assert a.report()["mysqld"] is False and a.report()["writable"] is False


def test_state_survives_a_restart(tmp_path):
    a = agent(tmp_path)
    tick(a, peer())
    b = agent(tmp_path)
    assert b.state.last_writer == "db1" and b.state.promoted_at > 0


@pytest.mark.parametrize("line,expected", [(b"haproxy\n", b"up ready\n"), (b"status\n", b'"writable": true')])
def test_agent_port_answers_haproxy_and_the_peer(tmp_path, line, expected):
    import socket

    from roles.mariadb.writer_agent import serve

    a = agent(tmp_path)
    a.cfg.bind, a.cfg.port = "127.0.0.1", 0
    tick(a, peer())
    srv = serve(a)
    try:
        with socket.create_connection(srv.server_address, timeout=2) as s:
            s.sendall(line)
            data = s.recv(4096)
        assert expected in data
    finally:
        srv.shutdown()


def test_after_a_long_local_outage_the_peer_gets_its_full_grace_again(tmp_path):
    a = agent(tmp_path, name="db2", preferred="db1")
    tick(a, peer(writable=True))
    tick(a, None)  # the peer falls silent...
    up = a.local.status
    a.local.status = lambda: None  # ...and this node's own MariaDB is down for a minute
    for _ in range(6):
        a.clock += 10
        tick(a, None)
    a.local.status = up
    tick(a, None)  # back: the peer's silence is counted from now, not from a minute ago
    assert a.fenced == [] and not a.local.writable
    a.clock += 2.5
    tick(a, None)
    assert a.fenced == ["db1"] and a.local.writable


def test_failed_fences_are_retried_with_backoff_up_to_a_minute(tmp_path):
    a = agent(tmp_path, name="db2", preferred="db1", fence_ok=False)
    tick(a, peer(writable=True))
    tick(a, None)
    tries = []
    for _ in range(400):  # 200 s, a tick every half second
        a.clock += 0.5
        before = len(a.fenced)
        tick(a, None)
        if len(a.fenced) > before:
            tries.append(a.clock)
    gaps = [round(b - x, 1) for x, b in zip(tries, tries[1:])]
    assert gaps[:4] == [5.0, 10.0, 20.0, 40.0] and set(gaps[4:]) == {60.0}, gaps
    assert not a.local.writable  # no fence, no promotion


def test_no_promotion_while_what_the_peer_sent_is_not_applied(tmp_path):
    a = agent(tmp_path, name="db2", preferred="db1")
    tick(a, peer(writable=True))
    a.local.applied = False  # the relay log holds the old writer's last transactions, not yet applied
    tick(a, peer(mysqld=False, down_for=2.5))
    assert not a.local.writable and "SET GLOBAL read_only = OFF" not in a.local.log
    a.local.applied = True
    tick(a, peer(mysqld=False, down_for=3.0))
    assert a.local.writable and a.state.last_writer == "db2"


def test_the_agent_port_takes_a_burst_of_connections(tmp_path):
    import socket
    import subprocess

    from roles.mariadb.writer_agent import serve

    a = agent(tmp_path)
    a.cfg.bind, a.cfg.port = "127.0.0.1", 0
    srv = serve(a)
    try:
        port = srv.server_address[1]
        # the kernel's accept queue for the port (ss shows a listener's backlog as Send-Q)
        listener = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True).stdout.split()
        assert int(listener[2]) >= 512, listener
        # a burst as from 40 app servers' checks at once: every one answered
        conns = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(100)]
        for c in conns:
            c.sendall(b"haproxy\n")
        answers = [c.recv(64) for c in conns]
        for c in conns:
            c.close()
        assert all(x.endswith(b"\n") for x in answers), answers
    finally:
        srv.shutdown()
