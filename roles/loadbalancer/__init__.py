"""The loadbalancer role: HAProxy terminating TLS in front of the app servers, and
keepalived with the failover agent moving the floating IP through the Hetzner API."""

from typing import Literal

from pydantic import Field, model_validator

from hastack.ports import PUBLIC, Port
from hastack.role import Placement, Role, Settings
from roles import HCLOUD_DEFAULTS
from roles import witness

PORTS = (
    Port("http", 80, sources=(PUBLIC,), description="HTTP, redirected to HTTPS"),
    Port("https", 443, sources=(PUBLIC,), description="HTTPS, TLS terminated by HAProxy"),
    Port("vrrp", None, protocol="vrrp", sources=("loadbalancer",), description="keepalived unicast VRRP"),
    Port("haproxy-metrics", 8404, sources=("monitoring",), description="HAProxy stats and Prometheus metrics"),
)
STATS_PORT = 8404
SYSTEMD_TIMESPAN = r"^\d+(\.\d+)?(ms|s|min|h)$"


class LoadBalancerSettings(Settings):
    """hastack:settings.loadbalancer -> host data lb_<key>."""

    # TLS for the public site: "internal" (the stack's CA; the lab) or
    # "provided" (certificateFile: a PEM with chain and key on the operator's machine).
    certificate: Literal["internal", "provided"] = "internal"
    certificate_file: str | None = None
    # abuse protection, per client address
    # per client address; sized for many users behind one address (an office's NAT, a carrier's CGNAT)
    max_conn_per_ip: int = Field(1000, ge=1, le=100000)
    max_req_rate_per_ip: int = Field(3000, ge=1, le=1000000)  # requests per 10 s
    hsts_max_age: int = Field(63072000, ge=0)
    maxconn: int = Field(8000, ge=100, le=500000)  # HAProxy needs about 2 file descriptors per connection
    # VRRP: both start BACKUP with nopreempt (a returning load balancer does
    # not take the IP back). Under nopreempt a lowered priority never moves
    # the master, so a failing HAProxy check puts the instance in FAULT
    # (weight 0) and the peer takes over; a non-zero weight is only useful
    # with preemption, and must then exceed the priority gap.
    vrrp_router_id: int = Field(51, ge=1, le=255)
    vrrp_advert_int: float = Field(0.2, ge=0.01, le=40.95)
    vrrp_priority_gap: int = Field(10, ge=1, le=100)
    vrrp_check_weight: int = Field(0, ge=-253, le=253)
    # how often the failover agent's reconcile service runs a round (a systemd time span); each round
    # costs one or two API requests
    reconcile_interval: str = Field("30s", pattern=SYSTEMD_TIMESPAN)
    poweroff_peer_on_takeover: bool = False

    @model_validator(mode="after")
    def _file_for_provided(self):
        if self.certificate == "provided" and not self.certificate_file:
            raise ValueError("certificate is 'provided': give certificateFile, the PEM (chain and key) on the operator's machine")
        if self.certificate == "internal" and self.certificate_file:
            raise ValueError("certificateFile is set but certificate is 'internal': set certificate: provided to use the file")
        return self


def _host_data(topo, host):
    peer = next(h for h in topo.hosts_with_role("loadbalancer") if h.name != host.name)
    app = topo.resolved_settings("app")
    return {
        "lb_index": host.index,
        "vrrp_peer": peer.name,
        "vrrp_peer_ip": peer.private_ip,
        "domain": topo.domain,
        "app_servers": {h.name: h.private_ip for h in topo.hosts_with_role("app")},
        # how the application behind it is reached and checked
        "app_tls": app["app_tls"],
        "app_health_path": app["app_health_path"],
        # the third vote before the failover agent takes the floating IP from a live-looking peer
        **witness.client_data(topo),
    }


def _from_outputs(outputs, secrets, data):
    out = {"vrrp_peer_server_id": outputs["hosts"][data["vrrp_peer"]].get("server_id")}
    if "failover_token" in secrets:  # the failover agent moves the floating IP through the Hetzner API
        out["failover_token"] = secrets["failover_token"]
    return out


ROLE = Role(
    name="loadbalancer",
    ports=PORTS,
    settings=LoadBalancerSettings,
    settings_prefix="lb_",
    provided_defaults=HCLOUD_DEFAULTS,
    placement=Placement(short_name="lb", first_address=10, min_count=2, max_count=2,
                        count_rule="exactly 2: one active, one standby sharing the floating IP", floating_ip=True),
    host_data=_host_data,
    from_outputs=_from_outputs,
)

DEFAULTS = ROLE.defaults
