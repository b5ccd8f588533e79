"""Monitoring on the lab: every exporter scraped, real faults delivered to the lab's receiver
and resolved, inhibition, the uptime probe and its status page in a real browser.

The five faults run at once, each on a different part of the stack, so the module costs one
fault's time; `scripts/measure_monitoring.py` runs them one at a time for the latencies.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hastack.lab import probe, services
from hastack.status import HttpPrometheus
from roles.monitoring import config as mc
from roles.monitoring import uptime
from tests.support import monitoring as mon
from tests.support.lab import wait_for

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
DETECT_WITHIN = 90  # seconds from a fault to its alert delivered
RESOLVE_WITHIN = 180

_run: dict = {}


def expected_targets(lab) -> dict[str, int]:
    """job -> how many targets the topology gives it."""
    mon_data = lab.inventory_entries()[mon.monitoring_host(lab)]
    hosts = [{"name": h.name, "role": h.role, "ip": h.private_ip} for h in lab.topo.hosts]
    counts = {job["name"]: len(job["targets"]) for job in mc.scrape_jobs(hosts)}
    sentinels = [lab.topo.host(s).private_ip for s in lab.topo.cluster("redis").sentinels]
    counts["tls"] = len(mc.tls_targets(hosts, sentinels, mon_data["monitoring_app_tls"]))
    counts.update(prometheus=1, alertmanager=1, site=2)
    return counts


def test_every_target_of_the_topology_is_scraped_and_up(lab):
    expected = expected_targets(lab)
    assert expected["node"] == len(lab.topo.hosts) == 12

    def all_up():
        rows = mon.prom(lab, "up")
        jobs: dict[str, list[str]] = {}
        for r in rows:
            jobs.setdefault(r["metric"]["job"], []).append(r["value"][1])
        counts = {job: len(v) for job, v in jobs.items()}
        return counts == expected and all(v == "1" for vs in jobs.values() for v in vs) and rows
    wait_for(all_up, 240, f"every target up, per job {expected}")
    # the services answer their probes too: TLS endpoints verified against the stack CA, the site
    probes = mon.prom(lab, "probe_success")
    assert probes and all(r["value"][1] == "1" for r in probes), [
        (r["metric"].get("host"), r["metric"].get("service") or r["metric"].get("probe")) for r in probes
        if r["value"][1] != "1"]
    # the agents' own metrics arrive through the node exporter's textfile collector
    owners = mon.prom(lab, "hastack_floating_ip_configured")
    assert sorted(r["value"][1] for r in owners) == ["0", "1"]
    assert {r["metric"]["host"] for r in mon.prom(lab, "hastack_mariadb_writes_held == 0")} == set(
        h.name for h in lab.topo.hosts_with_role("mariadb"))
    assert mon.prom(lab, 'cassandra_storageservice_operationmode{mode="NORMAL"}')


def test_prometheus_and_alertmanager_listen_on_the_private_address_only(lab):
    host = mon.monitoring_host(lab)
    listening = lab.exec(host, ["ss", "-Hltn"]).stdout
    ip = lab.topo.host(host).private_ip
    for port in (9090, 9093):
        addrs = {line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(f":{port}")}
        assert addrs == {f"{ip}:{port}"}, addrs
    assert {line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(":9115")} == {"127.0.0.1:9115"}
    assert ":9094" not in listening  # no Alertmanager cluster port


def test_faults_reach_the_receiver_and_resolve_and_nothing_unrelated_fires(lab):
    baseline = mon.quiet(lab)
    faults = mon.faults(lab)
    client = probe.start(lab, seconds=150, interval=0.1, timeout=1.0)  # the users' view of the site
    time.sleep(3)
    started = time.time()
    injected = {}
    for f in faults.values():
        f.inject()
        injected[f.name] = time.time()
    detected = {}
    for f in faults.values():
        alert = mon.wait_delivered(lab, started, f.alert, f.expected_host, "firing",
                                   DETECT_WITHIN - (time.time() - injected[f.name]) + 5)
        detected[f.name] = alert["received_at"] - injected[f.name]
    assert all(d <= DETECT_WITHIN for d in detected.values()), detected
    lb_fault = faults["active load balancer stopped"]
    mon.wait_delivered(lab, started, "FloatingIPMoved", None, "firing", 60)
    records = probe.records(client, timeout=240)
    _run["outage"] = probe.outage(records)
    # the five faults run at once: the client's failures may come from more than the load balancer's
    interval = uptime.duration_seconds(lab.topo.resolved_settings("monitoring")["monitoring_site_probe_interval"])
    _run["windows"] = probe.failure_windows(records, quiet=interval)
    _run["fault_started"] = injected[lb_fault.name]

    for f in faults.values():
        f.recover()
    recovered = time.time()
    for f in faults.values():
        # a fault the stack heals by itself may have resolved before `recover`
        mon.wait_delivered(lab, injected[f.name] if f.heals_itself else recovered - 1, f.alert, f.expected_host,
                           "resolved", RESOLVE_WITHIN)

    # every alert delivered while the faults lasted is one of them or a consequence they allow; a
    # stopped machine's own service alerts are inhibited by its HostDown
    window = [a for a in mon.delivered(lab, started) if a["status"] == "firing"]
    unrelated = sorted({(a["alertname"], a["labels"].get("host", "")) for a in window
                        if (a["alertname"], a["labels"].get("host", "")) not in baseline
                        and not any(f.permits(a["alertname"], a["labels"].get("host", "")) for f in faults.values())})
    assert not unrelated, f"unrelated alerts delivered: {unrelated}; detection times {detected}"
    for victim in (faults["MariaDB writer's machine stopped"].victim, lb_fault.victim):
        own = {a["alertname"] for a in window if a["labels"].get("host") == victim}
        assert own == {"HostDown"}, f"{victim}: {own} delivered; its HostDown should silence the rest"
    _run["detected"] = detected


def _page(lab) -> Path:
    out = services.status_dir(lab.paths)
    proc = subprocess.run([sys.executable, "-m", "hastack.cli", "uptime", "page", "--stack", "lab",
                           "--out", str(out), "--uptime-url", services.uptime_url(lab.addr)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / "index.html"


def _browser(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["chromium", "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--user-data-dir=/tmp/hastack-chromium", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_status_page_shows_the_failover_as_an_incident_in_a_browser(lab):
    if "outage" not in _run:
        pytest.fail("the fault test did not run or failed before measuring the outage")
    page = _page(lab)
    assert page.stat().st_mode & 0o777 == 0o644
    html = page.read_text()
    # self-contained: nothing fetched from elsewhere, works offline
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html) and "url(" not in html

    # served where it survives the stack (the operator host in the lab), rendered by a real browser
    url = services.status_url(lab.addr)
    dom = _browser(["--dump-dom", url]).stdout
    assert 'data-service="site"' in dom, dom[:500]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    _browser([f"--screenshot={shot}", "--window-size=1280,2000", url])
    assert shot.exists() and shot.stat().st_size > 10_000

    # the numbers are Prometheus's: uptime over 24 h as the probe's Prometheus computes it
    prom = HttpPrometheus(services.uptime_url(lab.addr))
    up24 = float(prom.query('avg_over_time(probe_success{job="site",probe="https"}[24h])')[0]["value"][1]) * 100
    shown = float(re.search(r'data-uptime="24h"[^>]*data-value="([0-9.]+)"', dom).group(1))
    assert abs(shown - up24) < 0.5, (shown, up24)

    # the load balancer failover is an incident lasting about what the users' client measured
    incidents = [(float(m.group(1)), float(m.group(2))) for m in re.finditer(
        r'data-incident-start="([0-9.]+)"[^>]*data-duration-seconds="([0-9.]+)"', dom)]
    interval = uptime.duration_seconds(lab.topo.resolved_settings("monitoring")["monitoring_site_probe_interval"])
    near = [(s, d) for s, d in incidents if abs(s - _run["fault_started"]) < 30]
    windows = _run["windows"]
    assert near, f"no incident near the failover at {_run['fault_started']:.0f}; incidents {incidents}; client {windows}"
    start, shown_s = near[0]
    # the client's failing stretch this incident is: the one that starts closest to it
    seen = min(windows, key=lambda w: abs(w["start"] - start), default=None)
    assert seen, f"the client saw no failure; the page shows {near}"
    assert abs(shown_s - seen["seconds"]) <= 2 * interval + 1.0, (near, windows)
    _run["incident"] = {"shown_s": shown_s, "outage_s": seen["seconds"]}


def test_hastack_status_shows_the_same_summary_in_the_terminal(lab):
    hastack = [sys.executable, "-m", "hastack.cli"]
    proc = subprocess.run([*hastack, "status", "--stack", "lab", "--json", "--uptime-url", services.uptime_url(lab.addr)],
                          capture_output=True, text=True, timeout=120)
    data = json.loads(proc.stdout)
    states = {s["key"]: s["state"] for s in data["services"]}
    assert list(states) == ["site", "loadbalancers", "app", "mariadb", "redis", "cassandra", "backups"]
    # the faults are over: everything serves again (backups depend on which tests ran before)
    assert all(states[k] == "ok" for k in list(states)[:6]), (data["services"], proc.stderr)
    assert states["backups"] in ("ok", "degraded"), data["services"]
    assert proc.returncode == (0 if data["ok"] else 1)
    text = subprocess.run([*hastack, "status", "--stack", "lab", "--uptime-url", services.uptime_url(lab.addr)],
                          capture_output=True, text=True, timeout=120).stdout
    assert "MariaDB" in text and "Cassandra" in text
