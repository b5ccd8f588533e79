"""The sentinel role: a Redis Sentinel on each voting host (the Redis hosts and
the monitoring host, three in all); a quorum promotes a replica."""

from pydantic import Field

from hastack.ports import Port
from hastack.role import Role, Settings
from roles.redis import client_data, server_secrets

SENTINEL_PORT = 26379

# Sentinels talk to each other and to Redis; clients ask them who the primary is.
PORTS = (
    Port("redis-sentinel", SENTINEL_PORT, sources=("app", "redis", "monitoring"), description="Redis Sentinel (TLS)"),
)


class SentinelSettings(Settings):
    """hastack:settings.sentinel -> host data sentinel_<key>."""

    quorum: int = Field(2, ge=2, le=3)  # of the three Sentinels; 2 survives the loss of any one
    down_after_ms: int = Field(2000, ge=500, le=600000)
    failover_timeout_ms: int = Field(10000, ge=1000, le=3600000)


ROLE = Role(
    name="sentinel",
    ports=PORTS,
    settings=SentinelSettings,
    settings_prefix="sentinel_",
    runs_on=lambda topo, host: host.name in topo.cluster("redis").sentinels,
    host_data=lambda topo, host: client_data(topo),
    from_outputs=server_secrets,
    after_roles="roles.sentinel.restart:after_roles",  # a new configuration: one Sentinel at a time
)

DEFAULTS = ROLE.defaults
