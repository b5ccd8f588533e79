"""Redis and Sentinel templates: what they promise, as rendered for a real topology.

Variables come from roles.redis.config and roles.sentinel.config with each host's data
(tests/templates/hostdata.py). The lab tests load them into real Redis and Sentinel
servers; here, the properties that must hold whatever the server version."""

import pytest

from roles.redis import acl_hash
from hastack.templating import render
from roles.redis import REDIS_PORT
from roles.redis import config as rc
from roles.sentinel import SENTINEL_PORT
from roles.sentinel import config as sc
from tests.templates.hostdata import host_data, topology

STACKS = ["prod", "staging"]


def redis_vars(stack, host, current_primary=None, **overrides):
    return rc.template_vars(host.name, host_data(stack, host, "redis", **overrides), current_primary=current_primary)


def redis_hosts(stack):
    topo = topology(stack)
    primary = topo.host(topo.cluster("redis").primary)
    return topo, primary, [h for h in topo.hosts_with_role("redis") if h.name != primary.name]


@pytest.mark.parametrize("stack", STACKS)
def test_acl_default_user_off_hashed_passwords_and_a_restricted_app_user(stack):
    topo = topology(stack)
    host = topo.hosts_with_role("redis")[0]
    passwords = host_data(stack, host, "redis")["redis_passwords"]
    text = render("redis", rc.USERS_ACL, **redis_vars(stack, host)[rc.USERS_ACL])
    lines = text.splitlines()
    assert lines[0] == "user default off"
    assert sorted(line.split()[1] for line in lines[1:]) == sorted(passwords) == ["app", "backup", "exporter", "replica", "sentinel"]
    for user, password in passwords.items():
        assert password not in text
        assert next(line for line in lines if line.startswith(f"user {user} ")).split()[3] == f"#{acl_hash(password)}"
    app = next(line for line in lines if line.startswith("user app "))
    assert app.split()[-2:] == ["-@admin", "-@dangerous"]
    # the backup account copies an RDB and nothing else: no keys, no data commands
    # (INFO and DBSIZE are the checks of `hastack restore redis`)
    backup = next(line for line in lines if line.startswith("user backup "))
    assert backup.split()[4:] == ["+role", "+sync", "+psync", "+replconf", "+ping", "+info", "+dbsize"]


@pytest.mark.parametrize("stack", STACKS)
def test_redis_listens_on_tls_only_on_the_private_address(stack):
    topo = topology(stack)
    for host in topo.hosts_with_role("redis"):
        data = host_data(stack, host, "redis")
        lines = render("redis", rc.SETTINGS, **redis_vars(stack, host)[rc.SETTINGS]).splitlines()
        assert f"bind 127.0.0.1 {host.private_ip}" in lines and "port 0" in lines
        assert f"tls-port {REDIS_PORT}" in lines and "tls-replication yes" in lines
        assert "protected-mode yes" in lines and f"replica-announce-ip {host.private_ip}" in lines
        assert "masteruser replica" in lines and f"masterauth {data['redis_passwords']['replica']}" in lines


def test_persistence_and_memory_limit_are_the_role_defaults():
    """The README's promises: AOF fsynced every second, 256 MB, least recently used keys go first."""
    host = topology("prod").hosts_with_role("redis")[0]
    lines = render("redis", rc.SETTINGS, **redis_vars("prod", host)[rc.SETTINGS]).splitlines()
    assert "appendonly yes" in lines and "appendfsync everysec" in lines
    assert "maxmemory 256mb" in lines and "maxmemory-policy allkeys-lru" in lines
    overridden = render("redis", rc.SETTINGS, **redis_vars("prod", host, redis_maxmemory="1gb")[rc.SETTINGS])
    assert "maxmemory 1gb" in overridden.splitlines()


@pytest.mark.parametrize("stack", STACKS)
def test_replica_line_only_on_replicas_of_the_topology_primary(stack):
    topo, primary, replicas = redis_hosts(stack)
    text = render("redis", rc.REDIS_CONF, **redis_vars(stack, primary)[rc.REDIS_CONF])
    assert f"include {rc.SETTINGS}" in text.splitlines() and "replicaof" not in text
    for replica in replicas:
        text = render("redis", rc.REDIS_CONF, **redis_vars(stack, replica)[rc.REDIS_CONF])
        assert f"replicaof {primary.private_ip} {REDIS_PORT}" in text.splitlines()
    assert len(replicas) == len(topo.hosts_with_role("redis")) - 1


def test_replica_line_follows_the_primary_the_sentinels_report():
    """After a failover the converge writes down the Sentinels' primary, never the topology's."""
    _, primary, replicas = redis_hosts("prod")
    promoted = replicas[0]
    old = render("redis", rc.REDIS_CONF, **redis_vars("prod", primary, current_primary=promoted.private_ip)[rc.REDIS_CONF])
    new = render("redis", rc.REDIS_CONF, **redis_vars("prod", promoted, current_primary=promoted.private_ip)[rc.REDIS_CONF])
    assert f"replicaof {promoted.private_ip} {REDIS_PORT}" in old.splitlines()
    assert "replicaof" not in new


def test_exporter_reaches_redis_over_tls_as_the_exporter_user():
    host = topology("prod").hosts_with_role("redis")[0]
    data = host_data("prod", host, "redis")
    lines = render("redis", rc.EXPORTER_ARGS, **redis_vars("prod", host)[rc.EXPORTER_ARGS]).splitlines()
    assert (f'ARGS="--web.listen-address={host.private_ip}:9121 --redis.addr=rediss://{host.private_ip}:{REDIS_PORT} '
            f'--redis.user=exporter --tls-ca-cert-file=/etc/ssl/hastack/prod-ca.crt"') in lines
    assert f"REDIS_PASSWORD={data['redis_passwords']['exporter']}" in lines


@pytest.mark.parametrize("stack", ["prod", "dr"])  # staging has one Redis host and no Sentinels
def test_sentinel_monitors_the_topology_primary_with_a_quorum_of_two(stack):
    """Rendered through the sentinel role's DEFAULTS on every Sentinel of the topology: the
    README promises three Sentinels with quorum 2 (two must agree the primary is down)."""
    topo = topology(stack)
    primary_ip = topo.host(topo.cluster("redis").primary).private_ip
    sentinels = [topo.host(name) for name in topo.cluster("redis").sentinels]
    assert len(sentinels) == 3
    for host in sentinels:
        data = host_data(stack, host, "sentinel")
        lines = render("sentinel", sc.SENTINEL_CONF, **sc.template_vars(data)[sc.SENTINEL_CONF]).splitlines()
        monitor = [line for line in lines if line.startswith("sentinel monitor ")]
        assert monitor == [f"sentinel monitor hastack {primary_ip} {REDIS_PORT} 2"]
        assert "sentinel down-after-milliseconds hastack 2000" in lines
        assert f"bind {host.private_ip} 127.0.0.1" in lines and f"tls-port {SENTINEL_PORT}" in lines
        assert f"sentinel announce-ip {host.private_ip}" in lines
        password = data["redis_passwords"]["sentinel"]
        assert f"requirepass {password}" in lines and f"sentinel auth-pass hastack {password}" in lines
        assert "sentinel auth-user hastack sentinel" in lines
        # the deploy writes the file only while this marker shows it has not been taken over by Sentinel
        assert sc.BOOTSTRAP_MARKER in lines[2]


def rotating(stack, host, role_name="redis"):
    """A host's data while the seed rotates from "old-seed" to "new-seed", clients already on the new."""
    from hastack.secrets import accepted
    from roles.redis import USERS, passwords

    return host_data(stack, host, role_name, redis_passwords=passwords("new-seed"),
                     redis_accepted=accepted(["new-seed", "old-seed"], "redis", USERS))


def test_while_the_seed_rotates_every_account_accepts_both_passwords_by_hash():
    from roles.redis import passwords

    host = topology("prod").hosts_with_role("redis")[0]
    data = rotating("prod", host)
    text = render("redis", rc.USERS_ACL, **rc.template_vars(host.name, data)[rc.USERS_ACL])
    new, old = passwords("new-seed"), passwords("old-seed")
    for user in new:
        line = next(line for line in text.splitlines() if line.startswith(f"user {user} "))
        assert line.split()[3:5] == [f"#{acl_hash(new[user])}", f"#{acl_hash(old[user])}"]
        assert new[user] not in text and old[user] not in text
    # one seed: the file is byte for byte what it was before rotations existed (no restart on upgrade)
    single = render("redis", rc.USERS_ACL, **redis_vars("prod", host)[rc.USERS_ACL])
    assert "  " not in single and all(line.count("#") <= 1 for line in single.splitlines())


def test_a_running_sentinel_is_told_both_passwords_and_gives_out_the_new_one(tmp_path):
    import subprocess

    from roles.redis import passwords

    host = next(h for h in topology("prod").hosts if h.name in topology("prod").cluster("redis").sentinels)
    data = rotating("prod", host, "sentinel")
    commands = sc.auth_commands(data).splitlines()
    new, old = passwords("new-seed")["sentinel"], passwords("old-seed")["sentinel"]
    assert commands[0] == f"ACL SETUSER default on resetpass #{acl_hash(new)} #{acl_hash(old)} ~* &* +@all"
    assert commands[1:] == [f"SENTINEL CONFIG SET sentinel-pass {new}", f"SENTINEL SET hastack auth-pass {new}",
                            "SENTINEL FLUSHCONFIG"]
    assert sc.accepted(data) == [new, old]
    script = tmp_path / "apply.sh"
    script.write_text(sc.apply_auth_command(SENTINEL_PORT))
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert new not in script.read_text()  # passwords come from root-only files
