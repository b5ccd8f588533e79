"""Redis on the lab's machines: TLS and ACLs, the replica, Sentinel failover."""

import uuid

import pytest

from hastack.converge import converge
from roles.redis import passwords as redis_passwords
from tests.support.lab import records_api, tcp, wait_for

CA = "/etc/ssl/hastack/lab-ca.crt"  # the base role puts the stack CA on every host
WRONGPASS = "WRONGPASS invalid username-password pair or user is disabled."


def cli(lab, src, ip, *args, user=None, password=None, port=6379, tls=True):
    env = [f"REDISCLI_AUTH={password}"] if password else []
    cmd = ["env", *env, "timeout", "5", "redis-cli", "--no-auth-warning", "-h", ip, "-p", str(port)]
    if tls:
        cmd += ["--tls", "--cacert", CA]
    if user:
        cmd += ["--user", user]
    return lab.exec(src, cmd + list(args))


@pytest.fixture(scope="module")
def redis_lab(lab):
    pw = redis_passwords(lab.stack_outputs()["secrets"]["seed"])
    return lab, pw


def primary(lab, pw, via):
    out = cli(lab, via, "127.0.0.1", "SENTINEL", "get-master-addr-by-name", "hastack", password=pw["sentinel"], port=26379)
    return out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else None


def journal_cursor(lab, host, unit):
    out = lab.exec(host, ["journalctl", "-u", unit, "-n", "0", "--show-cursor", "--no-pager"], check=True).stdout
    return out.rsplit("-- cursor: ", 1)[1].strip()


def test_unauthenticated_and_plain_text_access_refused(redis_lab):
    lab, pw = redis_lab
    r1 = lab.topo.host("lab-redis1")
    # the port is up and speaks TLS: the app's user gets in
    ok = cli(lab, "lab-redis2", r1.private_ip, "PING", user="app", password=pw["app"])
    assert ok.stdout.strip() == "PONG", ok

    # no credentials over TLS: the default user is off, so every command needs a login first
    anon = cli(lab, "lab-redis2", r1.private_ip, "PING")
    assert anon.stdout.strip() == "NOAUTH Authentication required.", anon
    acl = lab.exec("lab-redis1", ["cat", "/etc/redis/users.acl"], check=True).stdout.splitlines()
    assert [line for line in acl if line.split()[:2] == ["user", "default"]] == ["user default off"], acl
    as_default = cli(lab, "lab-redis2", r1.private_ip, "AUTH", "default", pw["app"])
    assert as_default.stdout.strip() == WRONGPASS, as_default

    # a wrong password: refused at AUTH, and the command then runs unauthenticated
    wrong = cli(lab, "lab-redis2", r1.private_ip, "PING", user="app", password="wrong")
    assert wrong.stderr.strip() == f"AUTH failed: {WRONGPASS}", wrong
    assert wrong.stdout.strip() == "NOAUTH Authentication required.", wrong

    # plain text to the TLS port (with the right password): the server's TLS handshake rejects the
    # bytes and drops the connection at once -- a reset, neither a timeout nor a refused connect
    cursor = journal_cursor(lab, "lab-redis1", "redis-server.service")
    plain = cli(lab, "lab-redis2", r1.private_ip, "PING", user="app", password=pw["app"], tls=False)
    assert plain.returncode == 1 and "PONG" not in plain.stdout, plain
    assert plain.stderr.strip().endswith("Error: Connection reset by peer"), plain
    logged = wait_for(lambda: lab.exec("lab-redis1", ["journalctl", "-u", "redis-server.service", "--no-pager",
                                                      "-o", "cat", f"--after-cursor={cursor}"]).stdout, 5,
                      "Redis to log the refused connection")
    assert "Error accepting a client connection: error:0A00010B:SSL routines::wrong version number" in logged, logged

    # the app user cannot run administrative commands
    admin = cli(lab, "lab-redis2", r1.private_ip, "CONFIG", "GET", "maxmemory", user="app", password=pw["app"])
    assert admin.stdout.strip().startswith("NOPERM"), admin


def test_a_host_outside_the_allowed_set_cannot_connect(redis_lab):
    lab, pw = redis_lab
    r1 = lab.topo.host("lab-redis1")
    lb = lab.topo.hosts_with_role("loadbalancer")[0].name  # load balancers are not Redis clients
    assert tcp(lab, lb, r1.private_ip, 6379) == "filtered"  # dropped by the host firewall


def test_replica_in_sync_and_settings_in_force(redis_lab):
    lab, pw = redis_lab
    p = primary(lab, pw, "lab-redis1")
    replica = next(h for h in lab.topo.hosts_with_role("redis") if h.private_ip != p)
    assert cli(lab, "lab-mon1", p, "SET", "hastack:test", "42", user="app", password=pw["app"]).stdout.strip() == "OK"
    wait_for(lambda: cli(lab, "lab-mon1", replica.private_ip, "GET", "hastack:test", user="app",
                         password=pw["app"]).stdout.strip() == "42", 10, "the write on the replica")
    info = cli(lab, replica.name, "127.0.0.1", "INFO", "replication", user="exporter", password=pw["exporter"]).stdout
    assert "role:slave" in info and "master_link_status:up" in info
    persistence = cli(lab, replica.name, "127.0.0.1", "INFO", "persistence", user="exporter", password=pw["exporter"]).stdout
    assert "aof_enabled:1" in persistence
    metrics = lab.exec("lab-mon1", ["curl", "-sf", f"http://{replica.private_ip}:9121/metrics"], check=True).stdout
    assert "redis_up 1" in metrics


def test_primary_dies_and_a_sentinel_promotes_the_replica(redis_lab):
    lab, pw = redis_lab
    old = primary(lab, pw, "lab-redis1")
    old_host = next(h for h in lab.topo.hosts_with_role("redis") if h.private_ip == old)
    survivor = next(h for h in lab.topo.hosts_with_role("redis") if h.private_ip != old)
    lab.stop(old_host.name, hard=True)
    try:
        # the application keeps working at once: Redis is its cache, MariaDB has the records
        code, body = records_api(lab, "POST", "/records", json={"request_id": str(uuid.uuid4()), "value": "no-cache"})
        assert code == 201, body
        code, got = records_api(lab, "GET", f"/records/{body['id']}")
        assert code == 200 and got["value"] == "no-cache", got
        wait_for(lambda: primary(lab, pw, survivor.name) == survivor.private_ip, 30, "Sentinel to promote the replica")
        # and finds the new primary: a record written now is served from the cache
        code, body = records_api(lab, "POST", "/records", json={"request_id": str(uuid.uuid4()), "value": "cached"})
        assert code == 201, body
        wait_for(lambda: records_api(lab, "GET", f"/records/{body['id']}")[1].get("source") == "cache", 10,
                 "the application to cache on the new primary")
        ok = cli(lab, "lab-mon1", survivor.private_ip, "SET", "hastack:after", "1", user="app", password=pw["app"])
        assert ok.stdout.strip() == "OK"
    finally:
        lab.start(old_host.name)
    # the old primary returns as a replica of the new one
    wait_for(lambda: "role:slave" in cli(lab, old_host.name, "127.0.0.1", "INFO", "replication", user="exporter",
                                          password=pw["exporter"]).stdout, 40, "the old primary to rejoin as replica")
    # a converge after the failover writes down the new primary and then is quiet again
    assert converge(lab.inventory_entries()).ok
    again = converge(lab.inventory_entries())
    assert again.changes == 0, {n: r.changed_operations for n, r in again.hosts.items() if r.changed}
    assert primary(lab, pw, "lab-mon1") == survivor.private_ip
