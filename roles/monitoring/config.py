"""What the monitoring role writes: each target file and its template variables.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here, so the tests render exactly what hosts receive. The
scrape targets come from the topology, so a converge that adds or removes a
host adds or removes its targets.
"""

from __future__ import annotations

from typing import Any, Mapping

from roles.app import APP_PORT
from roles.base.config import stack_ca_file
from roles.cassandra import CQL_PORT
from roles.monitoring import ALERTMANAGER_PORT, BLACKBOX_PORT, PROMETHEUS_PORT
from roles.monitoring import rules
from roles.redis import REDIS_PORT

PROMETHEUS_YML = "/etc/prometheus/prometheus.yml"
ALERTMANAGER_YML = "/etc/prometheus/alertmanager.yml"
BLACKBOX_YML = "/etc/prometheus/blackbox.yml"
PROMETHEUS_ARGS = "/etc/default/prometheus"
ALERTMANAGER_ARGS = "/etc/default/prometheus-alertmanager"
BLACKBOX_ARGS = "/etc/default/prometheus-blackbox-exporter"
DATA_DIR = "/var/lib/prometheus/metrics2"

# (job, the roles whose hosts serve it, port, metrics path): one exporter per line
EXPORTERS = (
    ("node", None, 9100, "/metrics"),  # None: every host
    ("haproxy", ("loadbalancer",), 8404, "/metrics"),
    ("mysqld", ("mariadb",), 9104, "/metrics"),
    ("redis", ("redis",), 9121, "/metrics"),
    ("cassandra", ("cassandra",), 7070, "/metrics"),
)
# TLS endpoints the blackbox exporter handshakes with (certificate valid, expiry): service -> (roles, port)
TLS_ENDPOINTS = {"redis": (("redis",), REDIS_PORT), "cassandra": (("cassandra",), CQL_PORT), "app": (("app",), APP_PORT)}
SENTINEL_PORT = 26379


def scrape_jobs(hosts: list[Mapping[str, str]]) -> list[dict[str, Any]]:
    """job -> its targets, each labelled with its host and role (alerts name the host)."""
    jobs = []
    for job, roles, port, path in EXPORTERS:
        targets = [{"address": f"{h['ip']}:{port}", "host": h["name"], "role": h["role"]}
                   for h in hosts if roles is None or h["role"] in roles]
        if targets:
            jobs.append({"name": job, "path": path, "targets": targets})
    return jobs


def tls_targets(hosts: list[Mapping[str, str]], sentinels: list[str], app_tls: bool) -> list[dict[str, str]]:
    by_ip = {h["ip"]: h for h in hosts}
    out = []
    for service, (roles, port) in TLS_ENDPOINTS.items():
        if service == "app" and not app_tls:
            continue
        out += [{"address": f"{h['ip']}:{port}", "host": h["name"], "role": h["role"], "service": service}
                for h in hosts if h["role"] in roles]
    out += [{"address": f"{ip}:{SENTINEL_PORT}", "host": by_ip[ip]["name"], "role": by_ip[ip]["role"],
             "service": "sentinel"} for ip in sentinels]
    return out


def site_target(data: Mapping[str, Any]) -> dict[str, str]:
    """The site as clients reach it: the floating IP, with the site's name for TLS and Host."""
    name = data["monitoring_site_name"] or data["floating_ip"]
    return {"https": f"https://{data['floating_ip']}/", "http": f"http://{data['floating_ip']}/", "name": name}


def prometheus_vars(data: Mapping[str, Any]) -> dict[str, Any]:
    hosts = data["monitoring_hosts"]
    return {
        "stack": data["stack"],
        "scrape_interval": data["monitoring_scrape_interval"],
        "private_ip": data["private_ip"],
        "prometheus_port": PROMETHEUS_PORT,
        "alertmanager_port": ALERTMANAGER_PORT,
        "blackbox": f"127.0.0.1:{BLACKBOX_PORT}",
        "jobs": scrape_jobs(hosts),
        "tls_targets": tls_targets(hosts, data["monitoring_sentinels"], data["monitoring_app_tls"]),
        "site": site_target(data),
        "rule_files": [rules.RULES_FILE],
        "hostname_self": next(h["name"] for h in hosts if h["ip"] == data["private_ip"]),
    }


def alertmanager_vars(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "stack": data["stack"],
        "webhooks": list(data["monitoring_alert_webhooks"]),
        "email": data["monitoring_alert_email"],
    }


def blackbox_vars(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "ca_file": stack_ca_file(data["stack"]),
        "site_name": site_target(data)["name"],
        "site_internal_ca": data["monitoring_site_internal_ca"],
    }


def prometheus_args_vars(data: Mapping[str, Any], retention_size: str) -> dict[str, Any]:
    return {
        "listen": f"{data['private_ip']}:{PROMETHEUS_PORT}",
        "retention_time": data["monitoring_retention_time"],
        "retention_size": data["monitoring_retention_size"] or retention_size,
        "data_dir": DATA_DIR,
    }


def retention_size_for(filesystem_bytes: int) -> str:
    """Half the filesystem holding the data: room for the rest of the host and for compaction."""
    return f"{max(1, filesystem_bytes // 2 // 1024 ** 3)}GB"


def template_vars(data: Mapping[str, Any], filesystem_bytes: int = 40 * 1024 ** 3) -> dict[str, dict[str, Any]]:
    """target path -> the variables its template (templates/monitoring/<target>.j2) gets.

    ``data`` is the host's data over the role DEFAULTS; ``filesystem_bytes`` the size of
    the filesystem holding Prometheus's data (a fact of the host).
    """
    hosts = data["monitoring_hosts"]
    return {
        PROMETHEUS_YML: prometheus_vars(data),
        ALERTMANAGER_YML: alertmanager_vars(data),
        BLACKBOX_YML: blackbox_vars(data),
        PROMETHEUS_ARGS: prometheus_args_vars(data, retention_size_for(filesystem_bytes)),
        ALERTMANAGER_ARGS: {"listen": f"{data['private_ip']}:{ALERTMANAGER_PORT}"},
        BLACKBOX_ARGS: {"listen": f"127.0.0.1:{BLACKBOX_PORT}"},
        rules.RULES_FILE: rules.rules_vars(
            sentinel_quorum=data["monitoring_sentinel_quorum"],
            mariadb_hosts=sum(1 for h in hosts if h["role"] == "mariadb"),
            cassandra_nodes=sum(1 for h in hosts if h["role"] == "cassandra")),
    }
