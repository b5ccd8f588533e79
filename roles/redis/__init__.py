"""The redis role: Redis over TLS with ACL users, a primary and replicas; the
Sentinels (roles/sentinel) promote a replica when the primary dies."""

import hashlib
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from hastack.ports import Port
from hastack.role import Placement, Role, Settings
from hastack.secrets import accepted, derive, seeds

REDIS_PORT = 6379

PORTS = (
    Port("redis", REDIS_PORT, sources=("app", "redis", "monitoring"), description="Redis (TLS, ACL users)"),
    Port("redis-exporter", 9121, sources=("monitoring",), description="Prometheus Redis exporter"),
)

# backup: copies the RDB (ROLE, SYNC) for the backup role; INFO and DBSIZE verify a restore
USERS = ("app", "replica", "sentinel", "exporter", "backup")


class RedisSettings(Settings):
    """hastack:settings.redis -> host data redis_<key>."""

    # in-memory data for fast loading: least recently used keys go first when full
    maxmemory: str = Field("256mb", pattern=r"^\d+(kb|mb|gb)$")
    maxmemory_policy: Literal["noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru",
                              "volatile-lfu", "volatile-random", "volatile-ttl"] = "allkeys-lru"
    appendfsync: Literal["always", "everysec", "no"] = "everysec"


@dataclass(frozen=True)
class Replication:
    primary: str  # at creation; at runtime the Sentinels decide
    replicas: tuple[str, ...]
    sentinels: tuple[str, ...]  # the hosts whose Sentinel votes (none with a single Redis host)


def _cluster(hosts, cfg) -> Replication:
    redis = [h.name for h in hosts if h.role == "redis"]
    # Sentinel needs three voters in separate failure domains: the Redis hosts
    # plus the monitoring host. A single Redis host gets no automatic failover.
    monitoring = [h.name for h in hosts if h.role == "monitoring"]
    sentinels = tuple(redis + monitoring)[:3] if len(redis) >= 2 else ()
    return Replication(primary=redis[0], replicas=tuple(redis[1:]), sentinels=sentinels)


def client_data(topo) -> dict:
    """What Redis, its Sentinels and its clients need to find each other."""
    rep: Replication = topo.cluster("redis")
    return {
        "redis_primary": rep.primary,
        "redis_primary_ip": topo.host(rep.primary).private_ip,
        "redis_sentinels": [topo.host(s).private_ip for s in rep.sentinels],
        "redis_hosts": {h.name: h.private_ip for h in topo.hosts_with_role("redis")},
    }


def passwords(seed: str) -> dict[str, str]:
    return {user: derive(seed, f"redis/{user}") for user in USERS}


def acl_hash(password: str) -> str:
    """Redis ACL files take SHA-256 hashes, so no password sits on disk in clear."""
    return hashlib.sha256(password.encode()).hexdigest()


def server_secrets(outputs, secrets, data):
    """Redis and Sentinel: every Redis account (replication, Sentinel, exporter, the app's), and while the
    seed rotates every password each account accepts (hastack.secrets.seeds)."""
    if not secrets.get("seed"):
        return {}
    return {"redis_passwords": passwords(secrets["seed"]),
            "redis_accepted": accepted(seeds(secrets), "redis", USERS)}


ROLE = Role(
    name="redis",
    ports=PORTS,
    settings=RedisSettings,
    settings_prefix="redis_",
    placement=Placement(short_name="redis", first_address=70, min_count=1, max_count=5,
                        count_rule="between 1 and 5 (2 or more for automatic failover)"),
    cluster=_cluster,
    backups=("redis-rdb",),
    host_data=lambda topo, host: client_data(topo),
    from_outputs=server_secrets,
    after_roles="roles.redis.restart:after_roles",  # a new configuration: one host at a time
    restore="roles.redis.restore:restore",
    restore_cli="roles.redis.restore:command",
)

DEFAULTS = ROLE.defaults
