from hastack.ports import PUBLIC, Port

PORTS = (
    Port("http", 80, sources=(PUBLIC,), description="HTTP, redirected to HTTPS"),
    Port("https", 443, sources=(PUBLIC,), description="HTTPS, TLS terminated by HAProxy"),
    Port("vrrp", None, protocol="vrrp", sources=("loadbalancer",), description="keepalived unicast VRRP"),
    Port("haproxy-metrics", 8404, sources=("monitoring",), description="HAProxy stats and Prometheus metrics"),
)
