"""What the loadbalancer role writes: each target file and its template variables.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here, so the tests render exactly what hosts receive.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import roles.app as app_role
from roles.loadbalancer import STATS_PORT, SYSTEMD_TIMESPAN

CERT_DIR = "/etc/haproxy/certs"
CERT = f"{CERT_DIR}/site.pem"          # the site's chain and key, one PEM (HAProxy's crt)
STACK_CA = f"{CERT_DIR}/stack-ca.pem"  # verifies the app servers' certificates
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
CHECK_DIR = "/usr/local/lib/hastack"
CHECK_SCRIPT = f"{CHECK_DIR}/check-haproxy"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
FAILOVER_COMMAND = "/usr/local/sbin/hastack-failover"
NOTIFY_COMMAND = f"{FAILOVER_COMMAND} notify"
RECONCILE_SERVICE = "/etc/systemd/system/hastack-failover-reconcile.service"
# the reconcile ran from a timer before it ran in one process: the timer goes
RECONCILE_TIMER = "/etc/systemd/system/hastack-failover-reconcile.timer"
FAILOVER_CONFIG = "/etc/hastack/failover.json"
FAILOVER_STATE = "/run/hastack/failover-state.json"
FAILOVER_METRICS = "/var/lib/prometheus/node-exporter/hastack_floating_ip.prom"
FAILOVER_METRICS_TMPFILES = "/etc/tmpfiles.d/hastack-floating-ip.conf"  # removes the metrics at boot


def backend_tls(data: Mapping[str, Any]) -> bool:
    """Whether HAProxy talks TLS to the app servers: the app role's ``app_tls`` (its default
    when the load balancer's data does not set it)."""
    value = data.get("app_tls")
    return app_role.DEFAULTS["app_tls"] if value is None else value


def vrrp_priority(data: Mapping[str, Any]) -> int:
    """The first load balancer 100, each next one ``lb_vrrp_priority_gap`` lower."""
    return 100 - data["lb_vrrp_priority_gap"] * (data["lb_index"] - 1)


def haproxy_vars(hostname: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "certificate": CERT,
        "private_ip": data["private_ip"],
        "stats_port": STATS_PORT,
        "app_servers": data["app_servers"],
        "app_port": app_role.APP_PORT,
        "health_path": data.get("app_health_path") or app_role.DEFAULTS["app_health_path"],
        "max_conn_per_ip": data["lb_max_conn_per_ip"],
        "max_req_rate_per_ip": data["lb_max_req_rate_per_ip"],
        "hsts_max_age": data["lb_hsts_max_age"],
        "maxconn": data["lb_maxconn"],
        "backend_ca": STACK_CA if backend_tls(data) else None,
    }


def keepalived_vars(hostname: str, data: Mapping[str, Any], interface: str, public_interface: str) -> dict[str, Any]:
    """``interface`` holds the private address (VRRP runs there), ``public_interface`` the
    public one (where the master configures the floating IP): facts of the host."""
    return {
        "hostname": hostname,
        "interface": interface,
        "private_ip": data["private_ip"],
        "peer_ip": data["vrrp_peer_ip"],
        "router_id": data["lb_vrrp_router_id"],
        "advert_int": data["lb_vrrp_advert_int"],
        "priority": vrrp_priority(data),
        "check_weight": data["lb_vrrp_check_weight"],
        # one more than the gap: the first load balancer without app servers ranks below the second
        "backends_weight": data["lb_vrrp_priority_gap"] + 1,
        "floating_ip": data["floating_ip"],
        "public_interface": public_interface,
        "check_script": CHECK_SCRIPT,
        "notify_command": NOTIFY_COMMAND,
    }


def template_vars(hostname: str, data: Mapping[str, Any], interface: str,
                  public_interface: str) -> dict[str, dict[str, Any]]:
    """target path -> the variables its template (templates/loadbalancer/<target>.j2) gets.

    ``data`` is the host's data (Topology.host_data and the inventory's additions) over the
    role DEFAULTS; ``interface`` and ``public_interface`` are the host's interfaces holding
    its private and public address.
    """
    return {
        CHECK_SCRIPT: {"stats_port": STATS_PORT},
        HAPROXY_CFG: haproxy_vars(hostname, data),
        KEEPALIVED_CONF: keepalived_vars(hostname, data, interface, public_interface),
        RECONCILE_SERVICE: {"interval": data["lb_reconcile_interval"],
                            "seconds": f"{timespan_seconds(data['lb_reconcile_interval']):g}"},
        FAILOVER_METRICS_TMPFILES: {"metrics_file": FAILOVER_METRICS},
    }


def failover_config(hostname: str, data: Mapping[str, Any], public_interface: str,
                    api: Mapping[str, Any], witness: Mapping[str, Any]) -> dict[str, Any]:
    """The failover agent's JSON configuration (its SCHEMA checks it on every run).

    ``api`` is the Hetzner API part (roles.hcloud_agent.api_config), ``witness`` the witness
    part (roles.witness.client_config): where the witness is and this host's client TLS files.
    """
    return {
        **{k: v for k, v in api.items() if v is not None},
        **witness,
        "floating_ip_id": int(data["floating_ip_id"]),
        "floating_ip": data["floating_ip"],
        "server_id": int(data["server_id"]),
        "server_name": hostname,
        "peer_server_id": int(data["vrrp_peer_server_id"]),
        "peer_name": data["vrrp_peer"],  # what the witness is asked about
        "interface": public_interface,
        "state_file": FAILOVER_STATE,
        "poweroff_peer_on_takeover": bool(data["lb_poweroff_peer_on_takeover"]),
        "metrics_file": FAILOVER_METRICS,
    }


def timespan_seconds(span: str) -> float:
    """A systemd time span as the settings allow it (SYSTEMD_TIMESPAN: "5s", "1.5min", "500ms") in seconds."""
    m = re.fullmatch(SYSTEMD_TIMESPAN, span)
    if not m:
        raise ValueError(f"{span!r} is not a time span such as 500ms, 5s, 1min or 1h")
    unit = m.group(2)
    return float(span[:-len(unit)]) * {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0}[unit]
