from hastack.ports import Port

REDIS_PORT = 6379

PORTS = (
    Port("redis", REDIS_PORT, sources=("app", "redis", "monitoring"), description="Redis (TLS, ACL users)"),
    Port("redis-exporter", 9121, sources=("monitoring",), description="Prometheus Redis exporter"),
)

DEFAULTS = {
    # in-memory data for fast loading: least recently used keys go first when full
    "redis_maxmemory": "256mb",
    "redis_maxmemory_policy": "allkeys-lru",
    "redis_appendfsync": "everysec",
}
