from hastack.ports import Port

PORTS = (
    Port("redis", 6379, sources=("app", "redis"), description="Redis (TLS, ACL auth)"),
    Port("redis-sentinel", 26379, sources=("app", "redis", "monitoring"), description="Redis Sentinel"),
    Port("redis-exporter", 9121, sources=("monitoring",), description="Prometheus Redis exporter"),
)
