"""Monitoring on the lab, as the tests and the measurement script see it: the stack's
Prometheus, the alerts the lab's receiver got, and the faults that should raise them."""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from typing import Callable

from hastack.lab import alert_receiver, services
from roles.monitoring import PROMETHEUS_PORT
from tests.support import failover, mariadb_pair


def monitoring_host(lab) -> str:
    return lab.topo.hosts_with_role("monitoring")[0].name


def prom(lab, expr: str) -> list[dict]:
    """An instant query of the stack's Prometheus, from the monitoring host itself."""
    mon = lab.topo.host(monitoring_host(lab))
    cmd = (f"curl -sf --max-time 10 --get --data-urlencode query={shlex.quote(expr)} "
           f"http://{mon.private_ip}:{PROMETHEUS_PORT}/api/v1/query")
    proc = lab.exec(mon.name, ["sh", "-c", cmd])
    if proc.returncode != 0:
        raise RuntimeError(f"Prometheus query {expr!r} failed: {proc.stderr.strip() or proc.returncode}")
    return json.loads(proc.stdout)["data"]["result"]


def firing(lab) -> set[tuple[str, str]]:
    """(alertname, host) of every alert Prometheus has firing now."""
    return {(r["metric"]["alertname"], r["metric"].get("host", "")) for r in prom(lab, 'ALERTS{alertstate="firing"}')}


def delivered(lab, since: float) -> list[dict]:
    """Alerts the receiver got since ``since`` (epoch seconds), oldest first."""
    return [a for a in alert_receiver.read(services.alerts_log(lab.paths)) if a["received_at"] >= since]


def wait_delivered(lab, since: float, alertname: str, host: str | None, status: str, timeout: float) -> dict:
    """The first notification of ``alertname`` (on ``host``) with ``status`` received since ``since``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for a in delivered(lab, since):
            if a["alertname"] == alertname and a["status"] == status and (host is None or a["labels"].get("host") == host):
                return a
        time.sleep(1)
    got = sorted({(a["alertname"], a["labels"].get("host"), a["status"]) for a in delivered(lab, since)})
    raise AssertionError(f"no {status} {alertname} for {host} delivered within {timeout:.0f} s; delivered: {got}")


@dataclass
class Fault:
    """A fault to inject: what breaks, the alert it must raise, what may also fire meanwhile."""

    name: str
    victim: str
    alert: str
    inject: Callable[[], None]
    recover: Callable[[], None]
    # (alertname, host or None for any) that may fire too: consequences elsewhere, not noise
    allowed: set[tuple[str, str | None]] = field(default_factory=set)
    alert_host: str | None = None  # the alert's host label, when not the victim
    # the stack undoes it by itself before `recover` runs: the new MariaDB writer powers its fenced
    # peer on again after a minute (the writer agent's restart_fenced_after)
    heals_itself: bool = False

    @property
    def expected_host(self) -> str:
        return self.alert_host or self.victim

    def permits(self, alertname: str, host: str) -> bool:
        return (alertname, host) == (self.alert, self.expected_host) or any(
            a == alertname and (h is None or h == host) for a, h in self.allowed)


def systemctl(lab, host: str, action: str, unit: str) -> Callable[[], None]:
    def run() -> None:
        proc = lab.exec(host, ["systemctl", action, unit])
        assert proc.returncode == 0, f"{host}: systemctl {action} {unit}: {proc.stderr.strip()}"
    return run


def redis_primary(lab) -> str:
    rows = prom(lab, 'redis_instance_info{exported_role="master"} * on(instance) group_left redis_up')
    primaries = [r["metric"]["host"] for r in rows if r["value"][1] == "1"]
    assert len(primaries) == 1, f"expected one Redis primary, Prometheus sees {primaries}"
    return primaries[0]


def faults(lab) -> dict[str, Fault]:
    """The five faults of the monitoring tests, each on a different part of the stack."""
    app = lab.topo.hosts_with_role("app")[0].name
    cass = lab.topo.hosts_with_role("cassandra")[-1].name
    redis = redis_primary(lab)
    writer = mariadb_pair.settled(lab)
    peer = next(h for h in mariadb_pair.masters(lab) if h != writer)
    lb = failover.settle(lab)

    def restart_machine(name: str, then: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            lab.start(name)
            then()
        return run

    return {
        "app server stopped": Fault(
            "app server stopped", app, "AppServerDown",
            systemctl(lab, app, "stop", "hastack-app.service"), systemctl(lab, app, "start", "hastack-app.service")),
        "Cassandra node stopped": Fault(
            "Cassandra node stopped", cass, "CassandraNodeDown",
            systemctl(lab, cass, "stop", "cassandra.service"), systemctl(lab, cass, "start", "cassandra.service"),
            allowed={("CassandraNodeSeesPeersDown", None), ("TargetDown", cass)}),
        "Redis primary stopped": Fault(
            "Redis primary stopped", redis, "RedisDown",
            systemctl(lab, redis, "stop", "redis-server.service"), systemctl(lab, redis, "start", "redis-server.service")),
        "MariaDB writer's machine stopped": Fault(
            "MariaDB writer's machine stopped", writer, "HostDown",
            lambda: lab.stop(writer, hard=True), restart_machine(writer, lambda: mariadb_pair.settled(lab, timeout=240)),
            allowed={("MariaDBReplicationStopped", peer), ("MariaDBNoWriter", None)}, heals_itself=True),
        "active load balancer stopped": Fault(
            "active load balancer stopped", lb, "HostDown",
            lambda: lab.stop(lb, hard=True), restart_machine(lb, lambda: failover.settle(lab, timeout=120)),
            allowed={("FloatingIPMoved", None), ("LoadBalancerFloatingIPOwners", None)}),
    }


def quiet(lab, timeout: float = 300) -> set[tuple[str, str]]:
    """Wait until nothing but information alerts fires (earlier tests' failovers are over); what fires."""
    def calm():
        now = firing(lab)
        serious = {a for a in now if a[0] not in ("FloatingIPMoved", "RebootRequired")}
        return (not serious, now)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok, now = calm()
        if ok:
            return now
        time.sleep(2)
    raise AssertionError(f"alerts still firing after {timeout:.0f} s: {sorted(firing(lab))}")
