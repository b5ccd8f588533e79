from hastack.ports import Port

SENTINEL_PORT = 26379

# Sentinels talk to each other and to Redis; clients ask them who the primary is.
PORTS = (
    Port("redis-sentinel", SENTINEL_PORT, sources=("app", "redis", "monitoring"), description="Redis Sentinel (TLS)"),
)

DEFAULTS = {
    "sentinel_quorum": 2,
    "sentinel_down_after_ms": 2000,
    "sentinel_failover_timeout_ms": 10000,
}
