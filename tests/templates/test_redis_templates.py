"""Redis and Sentinel templates: what they promise, as rendered for a real topology.

The lab tests load them into real Redis and Sentinel servers; here, the
properties that must hold whatever the server version."""

from hastack.secrets import acl_hash, redis_passwords
from hastack.stackfile import load_stack
from hastack.templating import render
from roles.redis import DEFAULTS

PW = redis_passwords("template-test-seed")


def test_acl_default_user_off_and_no_clear_passwords():
    text = render("redis", "/etc/redis/users.acl", hashes={u: acl_hash(p) for u, p in PW.items()})
    assert text.splitlines()[0] == "user default off"
    for password in PW.values():
        assert password not in text
    app = next(line for line in text.splitlines() if line.startswith("user app "))
    assert "-@dangerous" in app and "-@admin" in app


def test_redis_listens_on_tls_only_on_the_private_address():
    topo = load_stack("prod")
    host = topo.host("prod-redis2")
    text = render("redis", "/etc/redis/hastack.conf", hostname=host.name, private_ip=host.private_ip, port=6379,
                  replica_password=PW["replica"], appendfsync=DEFAULTS["redis_appendfsync"],
                  maxmemory=DEFAULTS["redis_maxmemory"], maxmemory_policy=DEFAULTS["redis_maxmemory_policy"])
    lines = text.splitlines()
    assert f"bind {host.private_ip} 127.0.0.1" in lines and "port 0" in lines and "tls-port 6379" in lines
    assert "protected-mode yes" in lines and "appendonly yes" in lines and "tls-replication yes" in lines


def test_replica_line_only_on_replicas():
    primary = render("redis", "/etc/redis/redis.conf", hostname="r1", primary_ip=None, port=6379)
    replica = render("redis", "/etc/redis/redis.conf", hostname="r2", primary_ip="10.20.1.70", port=6379)
    assert "replicaof" not in primary and "replicaof 10.20.1.70 6379" in replica


def test_sentinel_monitors_the_topology_primary_with_a_quorum_of_two():
    topo = load_stack("prod")
    text = render("sentinel", "/etc/redis/sentinel.conf", private_ip="10.20.1.150", port=26379, redis_port=6379,
                  primary_ip=topo.host(topo.cluster("redis").primary).private_ip, quorum=2, sentinel_password=PW["sentinel"],
                  down_after_ms=2000, failover_timeout_ms=10000)
    assert f"sentinel monitor hastack {topo.host(topo.cluster('redis').primary).private_ip} 6379 2" in text
    assert len(topo.cluster("redis").sentinels) == 3
