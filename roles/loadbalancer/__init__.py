from hastack.ports import PUBLIC, Port
from roles import HCLOUD_DEFAULTS

PORTS = (
    Port("http", 80, sources=(PUBLIC,), description="HTTP, redirected to HTTPS"),
    Port("https", 443, sources=(PUBLIC,), description="HTTPS, TLS terminated by HAProxy"),
    Port("vrrp", None, protocol="vrrp", sources=("loadbalancer",), description="keepalived unicast VRRP"),
    Port("haproxy-metrics", 8404, sources=("monitoring",), description="HAProxy stats and Prometheus metrics"),
)
STATS_PORT = 8404

DEFAULTS = {
    **HCLOUD_DEFAULTS,
    # TLS for the public site: "internal" (the stack's CA; the lab) or
    # "provided" (lb_certificate_file: a PEM with chain and key on the operator's machine).
    "lb_certificate": "internal",
    "lb_certificate_file": None,
    # abuse protection, per client address
    "lb_max_conn_per_ip": 100,
    "lb_max_req_rate_per_ip": 300,  # requests per 10 s
    "lb_hsts_max_age": 63072000,
    "lb_maxconn": 8000,  # HAProxy needs about 2 file descriptors per connection
    # VRRP: both start BACKUP with nopreempt (a returning load balancer does
    # not take the IP back). Under nopreempt a lowered priority never moves
    # the master, so a failing HAProxy check puts the instance in FAULT
    # (weight 0) and the peer takes over; a non-zero weight is only useful
    # with preemption, and must then exceed the priority gap.
    "lb_vrrp_router_id": 51,
    "lb_vrrp_advert_int": 0.2,
    "lb_vrrp_priority_gap": 10,
    "lb_vrrp_check_weight": 0,
    # the failover agent
    "lb_reconcile_interval": "30s",
    "lb_poweroff_peer_on_takeover": False,
}
