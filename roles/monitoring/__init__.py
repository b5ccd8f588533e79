"""The monitoring role: Prometheus scraping every exporter of every host, Alertmanager
sending what breaks to the operators, a blackbox exporter for TLS endpoints and the
site, and the third Redis Sentinel."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from hastack.ports import PRIVATE, Port
from hastack.role import Placement, Role, Section, Settings
from roles.loadbalancer import STATS_PORT as HAPROXY_METRICS_PORT
from roles.journal_shipping import PORT as JOURNAL_PORT
from roles.witness import WITNESS_PORT

PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
BLACKBOX_PORT = 9115  # loopback only: Prometheus on the same host is its one client

# Prometheus and Alertmanager stay private: admins reach them through SSH (`hastack status`).
PORTS = (
    Port("prometheus", PROMETHEUS_PORT, sources=("monitoring",), description="Prometheus"),
    Port("alertmanager", ALERTMANAGER_PORT, sources=("monitoring",), description="Alertmanager"),
    Port("witness", WITNESS_PORT, sources=("mariadb", "loadbalancer"),
         description="the pairs' third vote: writer epochs, load balancer tie-break (mutual TLS)"),
    Port("journal", JOURNAL_PORT, sources=(PRIVATE,),
         description="every host's journal, shipped as it is written over TLS (senders: the private addresses): the audit trail"),
)

PROM_DURATION = r"^\d+(ms|s|m|h|d|w|y)$"
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class AlertEmail(Section):
    """Alerts by email through an SMTP relay (no authentication: a relay that trusts the stack)."""

    to: list[str] = Field(min_length=1)
    sender: str = Field(alias="from")
    smarthost: str = Field(pattern=r"^[A-Za-z0-9.-]+:\d{1,5}$")  # host:port
    require_tls: bool = True

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if not EMAIL.match(a)]
        if bad:
            raise ValueError(f"not email addresses: {', '.join(bad)} (expected name@domain)")
        return value

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        if not EMAIL.match(value):
            raise ValueError(f"{value!r} is not an email address (expected name@domain)")
        return value


class MonitoringSettings(Settings):
    """hastack:settings.monitoring -> host data monitoring_<key>."""

    scrape_interval: str = "15s"
    retention_time: str = "30d"
    # null: half the filesystem holding Prometheus's data, measured on the host at converge
    retention_size: str | None = Field(None, pattern=r"^\d+(MB|GB|TB)$")
    # the hosts' journals shipped here (logins, sudo and its commands, services): kept this many days
    journal_retention_days: int = Field(90, ge=1, le=3650)
    # where alerts go: webhooks (Alertmanager's JSON) and/or email; at least one
    alert_webhooks: list[str] = Field(default_factory=list)
    alert_email: AlertEmail | None = None
    # the external uptime probe (`hastack uptime`): how often it checks the site
    site_probe_interval: str = "15s"

    @field_validator("scrape_interval", "retention_time", "site_probe_interval")
    @classmethod
    def _duration(cls, value: str) -> str:
        if not re.match(PROM_DURATION, value):
            raise ValueError(f"{value!r} is not a duration: a number and a unit (ms, s, m, h, d, w, y), e.g. 15s or 30d")
        return value

    @field_validator("alert_webhooks")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        bad = [u for u in value if not re.match(r"^https?://[^\s/]+(/\S*)?$", u)]
        if bad:
            raise ValueError(f"not http(s) URLs: {', '.join(bad)} (expected e.g. https://hooks.example.com/alerts)")
        return value


def _check(cfg):
    """Alerts nobody receives are no alerts: a stack with a monitoring host names a receiver."""
    s = cfg.settings.monitoring
    if cfg.role_config("monitoring").count and not s.alert_webhooks and s.alert_email is None:
        yield ("hastack:settings.monitoring: no receiver for alerts; give alertWebhooks (a list of http(s) URLs) "
               "and/or alertEmail ({to: [name@domain], from: name@domain, smarthost: host:port})")


def _host_data(topo, host):
    """Everything Prometheus scrapes, from the topology: a host added or removed changes the targets."""
    lb = topo.resolved_settings("loadbalancer") if topo.hosts_with_role("loadbalancer") else {}
    sentinels = topo.cluster("redis").sentinels if topo.hosts_with_role("redis") else ()
    return {
        "monitoring_hosts": [{"name": h.name, "role": h.role, "ip": h.private_ip} for h in topo.hosts],
        "monitoring_sentinels": [topo.host(s).private_ip for s in sentinels],
        "monitoring_sentinel_quorum": topo.resolved_settings("sentinel")["sentinel_quorum"] if sentinels else 0,
        "monitoring_site_name": topo.domain,
        "monitoring_site_internal_ca": lb.get("lb_certificate") == "internal",
        "monitoring_app_tls": topo.resolved_settings("app")["app_tls"] if topo.hosts_with_role("app") else False,
        "monitoring_witness_groups": {
            "mariadb": {h.name: None for h in topo.hosts_with_role("mariadb")},
            # a load balancer is alive for the witness while its HAProxy answers on the private network
            "lb": {h.name: [h.private_ip, HAPROXY_METRICS_PORT] for h in topo.hosts_with_role("loadbalancer")},
        },
        # a little under the masters' own patience, so a claim after `failover_after` is granted at once
        "monitoring_witness_dead_after": round(0.9 * topo.resolved_settings("mariadb")["mariadb_failover_after"], 2)
        if topo.hosts_with_role("mariadb") else 1.8,
    }


ROLE = Role(
    name="monitoring",
    ports=PORTS,
    settings=MonitoringSettings,
    settings_prefix="monitoring_",
    placement=Placement(short_name="mon", first_address=150, min_count=1, max_count=1, count_rule="exactly 1"),
    check=_check,
    host_data=_host_data,
    commands={"uptime": "roles.monitoring.uptime:app"},
)

DEFAULTS = ROLE.defaults
