"""Restarts of the MariaDB pair, the Redis hosts and the Sentinels for a new configuration: one
host at a time, each back to health before the next (roles.rolling_restart, the Cassandra ring's
way: the deploy marks, the step after the roles restarts), against simulated hosts."""

from __future__ import annotations

import pytest

from hastack.role import AfterRoles, AfterRolesError
from roles import role, rolling_restart
from roles.mariadb import restart as mariadb_restart
from roles.redis import restart as redis_restart
from roles.rolling_restart import RollingRestart
from roles.sentinel import restart as sentinel_restart

SLAVE_STATUS = "Slave_IO_State\tMaster_Host\tSlave_IO_Running\tSlave_SQL_Running\tLast_IO_Error\tLast_SQL_Error\n"


class Group:
    """Hosts of one service: a restart takes a host down for ``down_polls`` health checks; a host's answers
    follow what it is (writer / primary / replica); every command is recorded with who was down then."""

    def __init__(self, names, service, marked, down_polls=2, leader=None, broken=()):
        self.names, self.service, self.marked = list(names), service, set(marked)
        self.leader = leader or self.names[0]
        self.down: dict[str, int] = {}  # host -> health checks until it is back
        self.broken = set(broken)  # never healthy
        self.down_polls = down_polls
        self.events: list[tuple[str, str]] = []
        self.overlaps: list[tuple[str, set]] = []  # restarts issued while another host was down

    def run(self, name, command, timeout):
        if command.startswith("systemctl restart"):
            assert self.service in command
            others_down = {h for h in self.down if h != name}
            if others_down:
                self.overlaps.append((name, others_down))
            self.events.append((name, "restart"))
            self.down[name] = self.down_polls
            return True, "", ""
        if command.startswith("test -e"):
            return True, "yes\n" if name in self.marked and command.split()[2].endswith("restart-needed") else "", ""
        if command.startswith("rm -f"):
            self.marked.discard(name)
            self.events.append((name, "unmarked"))
            return True, "", ""
        up = name not in self.down and name not in self.broken
        if name in self.down:
            self.down[name] -= 1
            if self.down[name] <= 0:
                del self.down[name]
        # MariaDB
        if "SELECT @@read_only" in command:
            return True, "0\n" if name == self.leader else "1\n", ""
        if "SHOW SLAVE STATUS" in command:
            if not up:
                return False, "", "ERROR 2002 (HY000): Can't connect to local server through socket"
            self.events.append((name, "healthy"))
            return True, SLAVE_STATUS + "Waiting for master\tpeer\tYes\tYes\t\t\n", ""
        # the application
        if command.startswith("ps -o etimes"):
            return True, "10\n", ""
        if command.startswith("curl"):
            if not up:
                return False, "", "curl: (7) Failed to connect"
            self.events.append((name, "healthy"))
            return True, "ok\n", ""
        # Redis and Sentinel
        if not up:
            return True, "Could not connect to Redis at 10.0.0.1:6379: Connection refused\n", ""
        if command.endswith(" PING"):
            return True, "PONG\n", ""
        if command.endswith(" ROLE"):
            return True, ("master\n0\n" if name == self.leader else "slave\n10.0.0.1\n6379\nconnected\n0\n"), ""
        if "INFO replication" in command:
            self.events.append((name, "healthy"))
            return True, ("# Replication\r\nrole:master\r\n" if name == self.leader else
                          "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_link_status:up\r\n"), ""
        if "get-master-addr-by-name" in command:
            self.events.append((name, "healthy"))
            return True, "10.0.0.1\n6379\n", ""
        raise AssertionError(f"unexpected command on {name}: {command}")

    def step(self):
        return AfterRoles(hosts={n: {"private_ip": f"10.0.0.{i + 1}", "stack": "prod"} for i, n in enumerate(self.names)},
                          run=self.run, log=lambda _m: None)

    def restarts(self):
        return [h for h, e in self.events if e == "restart"]


def fast(restart: RollingRestart, timeout: float = 30.0) -> RollingRestart:
    """The role's restart with a simulated clock: each poll advances it by ``poll`` seconds."""
    now = [0.0]

    def sleep(seconds):
        now[0] += seconds

    return RollingRestart(what=restart.what, service=restart.service, mark=restart.mark, healthy=restart.healthy,
                          timeout=timeout, order=restart.order, poll=restart.poll, sleep=sleep, clock=lambda: now[0])


def assert_serialised(group: Group) -> None:
    """No restart while another host is down, and each restarted host healthy before the next restart."""
    assert group.overlaps == []
    restarted = [i for i, (_, e) in enumerate(group.events) if e == "restart"]
    for a, b in zip(restarted, restarted[1:], strict=False):
        host = group.events[a][0]
        assert (host, "healthy") in group.events[a:b], f"{host} restarted, next restart before it was healthy"


def test_roles_restart_their_pairs_through_the_rolling_restart():
    for name, service in (("mariadb", "mariadb.service"), ("redis", "redis-server.service"),
                          ("sentinel", "redis-sentinel.service"), ("app", "hastack-app.service")):
        step = role(name).after_roles_step()
        assert isinstance(step, RollingRestart) and step.service == service
        assert step.mark.startswith(f"/var/lib/hastack/{name}/") and step.timeout > 0


def test_a_running_member_is_marked_a_new_one_restarted_in_place():
    assert rolling_restart.restart_here(was_active=False, changed=True) is True
    assert rolling_restart.restart_here(was_active=True, changed=True) is False  # the step restarts it
    assert rolling_restart.restart_here(was_active=True, changed=False) is False
    assert rolling_restart.restart_here(was_active=False, changed=False) is False


def test_mariadb_masters_restart_one_at_a_time_the_writer_last():
    group = Group(["db1", "db2"], "mariadb.service", marked={"db1", "db2"}, leader="db1")
    done = fast(mariadb_restart.after_roles)(group.step())
    assert group.restarts() == ["db2", "db1"]  # the read-only master first
    assert_serialised(group)
    assert [h for h, _ in done] == ["db2", "db1"] and group.marked == set()


def test_redis_hosts_restart_one_at_a_time_the_primary_last():
    group = Group(["redis1", "redis2", "redis3"], "redis-server.service", marked={"redis1", "redis2", "redis3"},
                  leader="redis1", down_polls=3)
    fast(redis_restart.after_roles)(group.step())
    assert group.restarts()[-1] == "redis1" and sorted(group.restarts()) == ["redis1", "redis2", "redis3"]
    assert_serialised(group)


def test_sentinels_restart_one_at_a_time():
    group = Group(["redis1", "redis2", "mon1"], "redis-sentinel.service", marked={"redis1", "redis2", "mon1"})
    fast(sentinel_restart.after_roles)(group.step())
    assert group.restarts() == ["redis1", "redis2", "mon1"]
    assert_serialised(group)


def test_only_marked_hosts_restart_and_nothing_is_asked_without_marks():
    group = Group(["db1", "db2"], "mariadb.service", marked=set())
    assert fast(mariadb_restart.after_roles)(group.step()) == []
    assert group.events == []
    group = Group(["db1", "db2"], "mariadb.service", marked={"db1"})
    fast(mariadb_restart.after_roles)(group.step())
    assert group.restarts() == ["db1"]


def test_a_member_not_healthy_again_stops_the_restarts_with_the_reason():
    group = Group(["redis1", "redis2"], "redis-server.service", marked={"redis1", "redis2"}, leader="redis1",
                  down_polls=10_000)
    with pytest.raises(AfterRolesError) as e:
        fast(redis_restart.after_roles, timeout=20)(group.step())
    assert group.restarts() == ["redis2"]  # the primary was not restarted
    message = str(e.value)
    assert "redis2 is not healthy 20 s after its restart" in message and "does not answer PING" in message
    assert "redis1 not restarted" in message and "journalctl -u redis-server.service" in message
    assert group.marked == {"redis1"}  # still due at the next converge


def test_no_restart_while_another_member_is_unhealthy():
    group = Group(["db1", "db2"], "mariadb.service", marked={"db1"}, broken={"db2"})
    with pytest.raises(AfterRolesError) as e:
        fast(mariadb_restart.after_roles, timeout=10)(group.step())
    assert group.restarts() == []
    assert "refusing to restart db1" in str(e.value) and "db2: MariaDB does not answer" in str(e.value)
    assert group.marked == {"db1"}


def test_mariadb_health_needs_both_replication_threads():
    def run_with(row):
        return lambda name, command, timeout: (True, SLAVE_STATUS + row, "")

    assert mariadb_restart.healthy(run_with("x\tpeer\tYes\tYes\t\t\n"), "db1", {}) is None
    problem = mariadb_restart.healthy(run_with("x\tpeer\tConnecting\tYes\terror connecting to master\t\n"), "db1", {})
    assert "IO thread Connecting" in problem and "error connecting to master" in problem
    assert "replicates from no one" in mariadb_restart.healthy(lambda *a: (True, "", ""), "db1", {})


def test_redis_health_needs_a_replicas_link_up():
    def run_with(repl):
        def run(name, command, timeout):
            return True, ("PONG\n" if command.endswith("PING") else repl), ""
        return run

    data = {"private_ip": "10.0.0.2"}
    assert redis_restart.healthy(run_with("role:master\r\n"), "redis2", data) is None
    assert redis_restart.healthy(run_with("role:slave\r\nmaster_link_status:up\r\n"), "redis2", data) is None
    problem = redis_restart.healthy(run_with("role:slave\r\nmaster_host:10.0.0.1\r\nmaster_link_status:down\r\n"),
                                    "redis2", data)
    assert problem == "replica of 10.0.0.1: replication link down"
    loading = redis_restart.healthy(lambda *a: (True, "LOADING Redis is loading the dataset in memory\n", ""),
                                    "redis2", data)
    assert "does not answer PING" in loading and "LOADING" in loading


def test_sentinel_health_needs_the_primary():
    data = {"private_ip": "10.0.0.3"}
    ok = sentinel_restart.healthy(
        lambda n, c, t: (True, "PONG\n" if c.endswith("PING") else "10.0.0.1\n6379\n", ""), "mon1", data)
    assert ok is None
    unknown = sentinel_restart.healthy(lambda n, c, t: (True, "PONG\n" if c.endswith("PING") else "\n", ""),
                                       "mon1", data)
    assert "does not know the primary of hastack" in unknown


def test_health_checks_keep_passwords_off_the_command_line():
    seen = []
    sentinel_restart.healthy(lambda n, c, t: seen.append(c) or (True, "PONG\n", ""), "mon1", {"private_ip": "10.0.0.3"})
    redis_restart.healthy(lambda n, c, t: seen.append(c) or (True, "PONG\n", ""), "redis1", {"private_ip": "10.0.0.1"})
    assert seen and all("REDISCLI_AUTH=$(cat /etc/redis/.sentinel-auth)" in c and " -a " not in c for c in seen)


def test_app_servers_restart_one_at_a_time():
    from roles.app import restart as app_restart

    group = Group(["app1", "app2"], "hastack-app.service", marked={"app1", "app2"})
    fast(app_restart.after_roles)(group.step())
    assert group.restarts() == ["app1", "app2"]
    assert_serialised(group)


def test_app_health_needs_its_health_path_and_time_to_be_back_in_rotation():
    from roles.app import restart as app_restart

    data = {"private_ip": "10.0.1.20", "stack": "prod"}

    def run(up):
        seen = []

        def answer(name, command, timeout):
            seen.append(command)
            return (True, "ok\n", "") if command.startswith("curl") else (True, f"{up}\n", "")
        return app_restart.healthy(answer, "app1", data), seen

    ok, seen = run(up=12)
    assert ok is None
    assert "--cacert /etc/ssl/hastack/prod-ca.crt --resolve app1:8080:10.0.1.20 https://app1:8080/health" in seen[0]
    young, _ = run(up=1)
    assert "not yet back in the load balancers' rotation" in young
    down = app_restart.healthy(lambda n, c, t: (False, "", "curl: (7) Failed to connect"), "app1", data)
    assert "does not answer its health check" in down and "Failed to connect" in down
    plain = app_restart.health_command("app1", {**data, "app_tls": False, "app_health_path": "/ready"})
    assert plain.endswith("http://10.0.1.20:8080/ready")
