"""Securing a new ring: the order of the auth steps, and a second try after a run that stopped halfway."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from roles.cassandra import auth
from roles.cassandra.ring import AUTH_DONE, AUTH_SCRIPT, Ring, RingError

NODES = {"c1": "10.0.1.80", "c2": "10.0.1.81", "c3": "10.0.1.82"}
FOUR = {**NODES, "c4": "10.0.1.83"}


def status(nodes: dict[str, str]) -> str:
    return "\n".join(f"UN  {a}  1 MiB  16  ?  {i:08d}-0000-0000-0000-000000000000  rack1"
                     for i, a in enumerate(nodes.values()))


class FakeRing:
    """Running Up/Normal nodes (three unless told); the auth script fails `failures` times, then secures."""

    def __init__(self, failures: int, nodes: dict[str, str] = NODES):
        self.failures = failures
        self.status = status(nodes)
        self.commands: list[tuple[str, str]] = []

    def run(self, name: str, command: str, timeout: float):
        self.commands.append((name, command))
        if command.startswith("systemctl is-active") or "sport = :" in command:
            return True, "yes\n", ""
        if command == "nodetool status":
            return True, self.status, ""
        if command.startswith("test "):  # no marks, no data: nothing to start, restart or clean up
            return True, "", ""
        if command.startswith(f"python3 {AUTH_SCRIPT}"):
            if self.failures:
                self.failures -= 1
                return False, "", "cassandra.AuthenticationFailed: Failed to authenticate to 10.0.1.80"
            return True, "replicated system_auth (dc: 3)\n", ""
        return True, "", ""


@pytest.mark.parametrize("nodes,repaired", [(NODES, ["c1"]), (FOUR, list(FOUR))], ids=["3-nodes", "4-nodes"])
def test_a_failed_secure_repairs_system_auth_then_tries_once_more(nodes, repaired):
    """The repair between the tries covers every range: on one node when each holds all of them (no more
    nodes than the replication factor, 3), on every node otherwise."""
    fake = FakeRing(failures=1, nodes=nodes)
    actions = Ring(dict(nodes), fake.run, poll=0).converge(3, "dc")
    scripts = [i for i, (_, c) in enumerate(fake.commands) if c.startswith(f"python3 {AUTH_SCRIPT}")]
    assert len(scripts) == 2
    between = fake.commands[scripts[0] + 1:scripts[1]]
    assert [n for n, c in between if c == "nodetool repair --full system_auth"] == repaired
    after = fake.commands[scripts[1] + 1:]  # the auth data on the replicas: the same rule
    assert [n for n, c in after if c == "nodetool repair --full system_auth"] == repaired
    assert ("c1", "secured: replicated system_auth (dc: 3)") in actions
    assert ("c1", f"touch {AUTH_DONE}") in fake.commands


def test_a_secure_that_fails_twice_stops_the_converge_without_marking_the_ring_secured():
    fake = FakeRing(failures=2)
    with pytest.raises(RingError, match="AuthenticationFailed"):
        Ring(dict(NODES), fake.run, poll=0).converge(3, "dc")
    assert ("c1", f"touch {AUTH_DONE}") not in fake.commands


class FakeSession:
    def __init__(self, log):
        self.log = log

    def execute(self, statement, params=None):
        self.log.append(statement.split(" WITH")[0] if statement.startswith("ALTER") else statement[:20])
        if statement.startswith("SELECT replication"):
            return SimpleNamespace(one=lambda: SimpleNamespace(replication={"class": "SimpleStrategy"}))
        if statement.startswith("SELECT is_superuser"):
            return SimpleNamespace(one=lambda: SimpleNamespace(is_superuser=True, can_login=True))
        return SimpleNamespace(one=lambda: None)


def test_system_auth_is_replicated_last_after_everything_that_needs_the_superuser():
    log: list[str] = []
    session = FakeSession(log)
    cluster = SimpleNamespace(shutdown=lambda: None)
    actions = auth.secure("10.0.1.80", 9042, "ca.crt", "admin", "pw", "dc", 3,
                          connector=lambda *a: (cluster, session))
    alters = [s for s in log if s.startswith("ALTER")]
    assert alters == ["ALTER KEYSPACE system_distributed", "ALTER KEYSPACE system_traces", "ALTER ROLE cassandra",
                      "ALTER KEYSPACE system_auth"]
    assert actions[-1] == "replicated system_auth (dc: 3)"


def test_an_admin_on_the_other_seed_has_its_password_changed_in_the_session_that_logged_in():
    """While the seed rotates the admin may still have the old password: that session changes it to the
    new one; the default superuser is never tried."""
    from cassandra import AuthenticationFailed

    log: list[str] = []
    session = FakeSession(log)
    cluster = SimpleNamespace(shutdown=lambda: None)
    tried = []

    def connector(address, port, ca, user, password):
        tried.append((user, password))
        if password != "old":
            raise AuthenticationFailed("bad credentials")
        return cluster, session

    actions = auth.secure("10.0.1.80", 9042, "ca.crt", "admin", "new", "dc", 3, connector=connector,
                          other_passwords=["old"])
    assert tried == [("admin", "new"), ("admin", "old")]
    assert log[0] == 'ALTER ROLE "admin"' and actions[0] == "changed the password of admin"
    # neither password logs in and cassandra/cassandra is refused: the error, not a guess
    with pytest.raises(AuthenticationFailed):
        auth.secure("10.0.1.80", 9042, "ca.crt", "admin", "new", "dc", 3, connector=connector,
                    other_passwords=["older"], default_wait=0)


def test_the_ring_step_starts_from_the_look_ahead_and_reads_the_ring_itself_without_one():
    """The converge reads the ring while the roles run (look_ahead); given that view, the step does not
    start nodetool again; without one (something changed on the nodes) it reads the ring first."""
    from roles.cassandra.ring import look_ahead
    from hastack.role import AfterRoles

    step = AfterRoles(hosts={n: {"cassandra_nodes": NODES} for n in NODES},
                      run=lambda name, command, timeout=120: (True, status(NODES), ""), log=lambda m: None)
    via, seen = look_ahead(step)
    assert via == "c1" and [m.state for m in seen.values()] == ["UN"] * 3
    down = AfterRoles(hosts=step.hosts, run=lambda name, command, timeout=120: (False, "", "inactive"), log=print)
    assert look_ahead(down) is None

    given, fresh = FakeRing(failures=0), FakeRing(failures=0)
    Ring(dict(NODES), given.run, poll=0).converge(3, "dc", view=(via, seen))
    Ring(dict(NODES), fresh.run, poll=0).converge(3, "dc")
    assert ("c1", "nodetool status") not in given.commands
    assert fresh.commands[:2] == [("c1", "systemctl is-active --quiet cassandra.service && echo yes || true"),
                                  ("c1", "nodetool status")]
