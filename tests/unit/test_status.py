"""The status summary: services from the stack's Prometheus, the site from the uptime
Prometheus, incidents to the probe's sample, and the page and terminal views of it."""

import bisect
import http.server
import json
import os
import re
import stat
import threading
import urllib.parse
from contextlib import contextmanager

import pytest
from rich.console import Console

from hastack import status as st
from hastack.status import (NO_UPTIME_PROBE, STACK_UNREACHABLE, HttpPrometheus, SshPrometheus, StatusError, collect,
                            find_incidents, format_duration, render_html, render_terminal, response_chart_svg,
                            write_page)

NOW = 1_717_000_000.0
SUCCESS = 'probe_success{job="site",probe="https"}'
SITE_LABELS = {"instance": "https://www.hastack.lab/", "job": "site", "probe": "https"}


def num(v: float) -> str:
    """A sample value as Prometheus writes it."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


# -- a fake uptime Prometheus: probe samples, answered as the HTTP API would


class FakeUptime:
    """Probe samples (time, 0/1) with PromQL's window semantics for the queries the status makes."""

    def __init__(self, samples, duration=0.042, cert_expiry=NOW + 80 * 86400, redirect=1):
        self.ts = [t for t, _ in samples]
        self.vs = [v for _, v in samples]
        self.duration = duration
        self.cert_expiry = cert_expiry
        self.redirect = redirect
        self.range_calls = []
        self.raw_calls = []

    def _window(self, lo, hi):
        """Samples in (lo, hi]."""
        i, j = bisect.bisect_right(self.ts, lo), bisect.bisect_right(self.ts, hi)
        return list(zip(self.ts[i:j], self.vs[i:j], strict=True))

    def query(self, expr, at=None):
        at = NOW if at is None else at
        if m := re.fullmatch(re.escape(SUCCESS) + r"\[(\d+)ms\]", expr):
            window = self._window(at - int(m[1]) / 1000, at)
            self.raw_calls.append((at - int(m[1]) / 1000, at))
            if not window:
                return []
            return [{"metric": {"__name__": "probe_success", **SITE_LABELS},
                     "values": [[t, num(v)] for t, v in window]}]
        if m := re.fullmatch(r"avg_over_time\(" + re.escape(SUCCESS) + r"\[(\d+)([hd])\]\)", expr):
            seconds = int(m[1]) * (3600 if m[2] == "h" else 86400)
            window = self._window(at - seconds, at)
            if not window:
                return []
            return [{"metric": SITE_LABELS, "value": [at, num(sum(v for _, v in window) / len(window))]}]
        latest = self._window(at - 300, at)  # the 5 minute lookback
        if not latest:
            return []
        if expr == SUCCESS:
            return [{"metric": {"__name__": "probe_success", **SITE_LABELS}, "value": [at, num(latest[-1][1])]}]
        if expr == 'probe_duration_seconds{job="site",probe="https"}':
            return [{"metric": {"__name__": "probe_duration_seconds", **SITE_LABELS}, "value": [at, num(self.duration)]}]
        if expr == 'probe_ssl_earliest_cert_expiry{job="site",probe="https"}' and latest[-1][1] == 1:
            return [{"metric": {"__name__": "probe_ssl_earliest_cert_expiry", **SITE_LABELS},
                     "value": [at, num(self.cert_expiry)]}]
        if expr == 'probe_success{job="site",probe="http-redirect"}':
            return [{"metric": {"__name__": "probe_success", **SITE_LABELS, "probe": "http-redirect"},
                     "value": [at, num(self.redirect)]}]
        return []

    def query_range(self, expr, start, end, step):
        points = int((end - start) / step) + 1
        assert points <= 11000, f"{points} points: Prometheus refuses more than 11000"
        self.range_calls.append((expr, start, end, step))
        m = re.fullmatch(r"(min|avg)_over_time\((.*)\[(\d+)ms\]\)", expr)
        assert m, expr
        window_s = int(m[3]) / 1000
        values = []
        for k in range(points):
            t = start + k * step
            window = self._window(t - window_s, t)
            if not window:
                continue
            if m[1] == "min":
                values.append([t, num(min(v for _, v in window))])
            else:
                values.append([t, num(self.duration)])
        return [{"metric": SITE_LABELS, "values": values}] if values else []

    def alerts(self):
        return []


def probe_samples(start, end, interval, failing=(), phase=0.137):
    """A sample every ``interval`` seconds from start to end; those in any [a, b) of ``failing`` failed."""
    samples, t = [], start + phase
    while t <= end:
        samples.append((round(t, 3), 0 if any(a <= t < b for a, b in failing) else 1))
        t += interval
    return samples


# -- a fake stack Prometheus: instant query answers by expression


def vec(name, value, **labels):
    return {"metric": {"__name__": name, **labels}, "value": [NOW, num(value)]}


ROLE_OF_JOB = {"haproxy": "loadbalancer", "mysqld": "mariadb", "redis": "redis", "cassandra": "cassandra"}
HOSTS = {"haproxy": ["lab-lb1", "lab-lb2"], "mysqld": ["lab-db1", "lab-db2"], "redis": ["lab-redis1", "lab-redis2"],
         "cassandra": ["lab-cass1", "lab-cass2", "lab-cass3"]}


def healthy_stack():
    """name -> result of every query the status makes of a healthy lab stack."""
    q = {}
    q["up"] = [vec("up", 1, job=job, host=h, role=ROLE_OF_JOB[job], instance=f"{h}:9100")
               for job, hosts in HOSTS.items() for h in hosts]
    q["up"] += [vec("up", 1, job=job, host="lab-mon1", role="monitoring", instance="lab-mon1:9090")
                for job in ("prometheus", "alertmanager")]
    q["up"] += [vec("up", 1, job="node", host=h, role=ROLE_OF_JOB[job], instance=f"{h}:9100")
                for job, hosts in HOSTS.items() for h in hosts]
    q["hastack_floating_ip_configured"] = [
        vec("hastack_floating_ip_configured", 1 if h == "lab-lb1" else 0, job="node", host=h, role="loadbalancer")
        for h in HOSTS["haproxy"]]
    q['haproxy_server_status{proxy="app"}'] = [
        vec("haproxy_server_status", 1 if state == "UP" else 0, job="haproxy", host=lb, role="loadbalancer",
            proxy="app", server=app, state=state)
        for lb in HOSTS["haproxy"] for app in ("lab-app1", "lab-app2") for state in ("DOWN", "UP", "MAINT")]
    q['haproxy_backend_active_servers{proxy="app"}'] = [
        vec("haproxy_backend_active_servers", 2, job="haproxy", host=lb, proxy="app") for lb in HOSTS["haproxy"]]
    db = {"job": "mysqld", "role": "mariadb"}
    q["mysql_up"] = [vec("mysql_up", 1, host=h, **db) for h in HOSTS["mysqld"]]
    q["mysql_global_variables_read_only"] = [
        vec("mysql_global_variables_read_only", 0 if h == "lab-db1" else 1, host=h, **db) for h in HOSTS["mysqld"]]
    for metric, value in (("slave_io_running", 1), ("slave_sql_running", 1), ("seconds_behind_master", 0)):
        q[f"mysql_slave_status_{metric}"] = [
            vec(f"mysql_slave_status_{metric}", value, host=h, channel_name="", connection_name="",
                master_host="lab-db2" if h == "lab-db1" else "lab-db1", **db) for h in HOSTS["mysqld"]]
    q["redis_up"] = [vec("redis_up", 1, job="redis", role="redis", host=h) for h in HOSTS["redis"]]
    q["redis_instance_info"] = [
        vec("redis_instance_info", 1, job="redis", role="redis", host=h, redis_version="7.0.15",
            redis_mode="standalone", exported_role="master" if h == "lab-redis1" else "slave") for h in HOSTS["redis"]]
    q['probe_success{job="tls",service="sentinel"}'] = [
        vec("probe_success", 1, job="tls", service="sentinel", host=h, role=r)
        for h, r in (("lab-redis1", "redis"), ("lab-redis2", "redis"), ("lab-mon1", "monitoring"))]
    cass = {"job": "cassandra", "role": "cassandra"}
    q["cassandra_storageservice_operationmode"] = [
        vec("cassandra_storageservice_operationmode", 1 if mode == "NORMAL" else 0, host=h, mode=mode, **cass)
        for h in HOSTS["cassandra"] for mode in ("NORMAL", "JOINING", "LEAVING")]
    q["cassandra_failuredetector_upendpointcount"] = [
        vec("cassandra_failuredetector_upendpointcount", len(HOSTS["cassandra"]), host=h, **cass)
        for h in HOSTS["cassandra"]]
    backups = [("lab-db1", "mariadb-full", 3 * 3600), ("lab-db2", "mariadb-full", 4 * 3600),
               ("lab-db1", "mariadb-binlog", 40), ("lab-db2", "mariadb-binlog", 20),
               *((h, "cassandra-snapshot", 5 * 3600) for h in HOSTS["cassandra"]), ("lab-redis2", "redis-rdb", 4 * 3600)]
    q["hastack_backup_last_success_timestamp_seconds"] = [
        vec("hastack_backup_last_success_timestamp_seconds", NOW - age, job="node", host=h, kind=k)
        for h, k, age in backups]
    q["hastack_backup_last_run_success"] = [
        vec("hastack_backup_last_run_success", 1, job="node", host=h, kind=k) for h, k, _ in backups]
    q["hastack_backup_verify_last_success_timestamp_seconds"] = [
        vec("hastack_backup_verify_last_success_timestamp_seconds", NOW - 2 * 86400, job="node", host="lab-mon1")]
    q["hastack_backup_verify_last_run_success"] = [
        vec("hastack_backup_verify_last_run_success", 1, job="node", host="lab-mon1")]
    return q


class FakeStack:
    def __init__(self, answers, alerts=()):
        self.answers = answers
        self.api_alerts = list(alerts)
        self.queries = []

    def query(self, expr, at=None):
        self.queries.append(expr)
        return self.answers.get(expr, [])

    def query_range(self, expr, start, end, step):
        raise AssertionError("the stack's Prometheus is only asked instant queries")

    def alerts(self):
        return self.api_alerts


def set_value(answers, expr, host, value, **match):
    for s in answers[expr]:
        if s["metric"].get("host") == host and all(s["metric"].get(k) == v for k, v in match.items()):
            s["value"][1] = num(value)


def healthy_uptime():
    return FakeUptime(probe_samples(NOW - 3 * 3600, NOW, 1.0))


def service(status, key):
    return status.service(key)


# -- the services


def test_a_healthy_stack_is_ok_everywhere():
    status = collect(FakeStack(healthy_stack()), healthy_uptime(), 1.0, now=NOW, stack="lab")
    assert [s.key for s in status.services] == ["site", "loadbalancers", "app", "mariadb", "redis", "cassandra",
                                                "backups"]
    assert {s.key: s.state for s in status.services} == dict.fromkeys(
        ("site", "loadbalancers", "app", "mariadb", "redis", "cassandra", "backups"), "ok"), status.services
    assert service(status, "site").detail == "https answers in 42 ms; certificate expires in 80 d"
    assert service(status, "loadbalancers").detail == "lab-lb1 holds the floating IP; 2/2 up"
    assert service(status, "app").detail == "2/2 servers up (as lab-lb1 sees them)"
    assert service(status, "mariadb").detail == "writer lab-db1; replication running both ways, lag 0 s"
    assert service(status, "redis").detail == "master lab-redis1; 2/2 up; sentinels 3/3"
    assert service(status, "cassandra").detail == "3/3 nodes Up/Normal"
    assert service(status, "backups").detail == "newest mariadb-full 3 h ago; 4 kinds fresh; verified 2 d ago"
    assert status.incidents == [] and status.alerts == [] and status.notes == []
    assert status.exit_code == 0


@pytest.mark.parametrize("change, key, state, detail", [
    (lambda q: set_value(q, "up", "lab-cass3", 0, job="cassandra"), "cassandra", "degraded",
     "2/3 nodes Up/Normal; not: lab-cass3 (down)"),
    (lambda q: [set_value(q, "up", h, 0, job="cassandra") for h in ("lab-cass2", "lab-cass3")], "cassandra", "down",
     "1/3 nodes Up/Normal; not: lab-cass2 (down), lab-cass3 (down)"),
    (lambda q: (set_value(q, "cassandra_storageservice_operationmode", "lab-cass2", 0, mode="NORMAL"),
                set_value(q, "cassandra_storageservice_operationmode", "lab-cass2", 1, mode="JOINING")),
     "cassandra", "degraded", "2/3 nodes Up/Normal; not: lab-cass2 (JOINING)"),
    (lambda q: set_value(q, "hastack_floating_ip_configured", "lab-lb1", 0), "loadbalancers", "down",
     "no load balancer holds the floating IP; 2/2 up"),
    (lambda q: set_value(q, "hastack_floating_ip_configured", "lab-lb2", 1), "loadbalancers", "degraded",
     "lab-lb1 and lab-lb2 all hold the floating IP; 2/2 up"),
    (lambda q: set_value(q, "up", "lab-lb2", 0, job="haproxy"), "loadbalancers", "degraded",
     "lab-lb1 holds the floating IP; 1/2 up"),
    (lambda q: (set_value(q, 'haproxy_server_status{proxy="app"}', "lab-lb1", 0, server="lab-app2", state="UP"),
                set_value(q, 'haproxy_server_status{proxy="app"}', "lab-lb1", 1, server="lab-app2", state="DOWN")),
     "app", "degraded", "1/2 servers up (as lab-lb1 sees them); not up: lab-app2 (DOWN)"),
    (lambda q: set_value(q, "mysql_slave_status_slave_sql_running", "lab-db2", 0), "mariadb", "degraded",
     "writer lab-db1; replication stopped on lab-db2 (io yes, sql no), lag 0 s"),
    (lambda q: (set_value(q, "mysql_up", "lab-db1", 0)), "mariadb", "down",
     "no writer (all read-only); lab-db1 down; replication running on 1/1, lag 0 s"),
    (lambda q: set_value(q, "mysql_global_variables_read_only", "lab-db2", 0), "mariadb", "degraded",
     "2 writers: lab-db1, lab-db2"),
    (lambda q: set_value(q, "mysql_slave_status_seconds_behind_master", "lab-db2", 300), "mariadb", "degraded",
     "writer lab-db1; replication running both ways, lag 300 s"),
    (lambda q: (set_value(q, "redis_up", "lab-redis1", 0)), "redis", "down", "no master; 1/2 up; sentinels 3/3"),
    (lambda q: set_value(q, 'probe_success{job="tls",service="sentinel"}', "lab-mon1", 0), "redis", "degraded",
     "master lab-redis1; 2/2 up; sentinels 2/3"),
    (lambda q: set_value(q, "hastack_backup_last_success_timestamp_seconds", "lab-db1", NOW - 30 * 3600,
                         kind="mariadb-full"), "backups", "degraded", "newest mariadb-full of lab-db1 30 h ago"),
    (lambda q: set_value(q, "hastack_backup_last_success_timestamp_seconds", "lab-db2", NOW - 400,
                         kind="mariadb-binlog"), "backups", "degraded", "newest mariadb-binlog of lab-db2 7 min ago"),
    (lambda q: set_value(q, "hastack_backup_last_run_success", "lab-db1", 0, kind="mariadb-full"), "backups",
     "degraded", "last mariadb-full on lab-db1 failed"),
    (lambda q: q.update({"hastack_backup_last_success_timestamp_seconds": [
        s for s in q["hastack_backup_last_success_timestamp_seconds"]
        if (s["metric"]["kind"], s["metric"]["host"]) != ("cassandra-snapshot", "lab-cass3")]}),
     "backups", "degraded", "no cassandra-snapshot backup on lab-cass3 yet"),
    (lambda q: q.update({"hastack_backup_last_success_timestamp_seconds": [
        s for s in q["hastack_backup_last_success_timestamp_seconds"] if s["metric"]["kind"] != "redis-rdb"]}),
     "backups", "degraded", "no redis-rdb backup yet"),
    (lambda q: set_value(q, "hastack_backup_verify_last_run_success", "lab-mon1", 0), "backups", "degraded",
     "last test restore failed"),
    # a partition: every node runs, one sees only two of the three up
    (lambda q: set_value(q, "cassandra_failuredetector_upendpointcount", "lab-cass2", 2), "cassandra", "degraded",
     "3/3 nodes Up/Normal; 1 seen down by the ring"),
])
def test_a_failure_shows_in_its_service(change, key, state, detail):
    answers = healthy_stack()
    change(answers)
    status = collect(FakeStack(answers), healthy_uptime(), 1.0, now=NOW, stack="lab")
    assert (service(status, key).state, service(status, key).detail) == (state, detail)
    assert status.exit_code == 1
    assert all(s.state == "ok" for s in status.services if s.key != key)


def test_backups_not_expected_of_a_host_that_is_down_nor_a_single_failed_binlog_run():
    answers = healthy_stack()
    set_value(answers, "up", "lab-cass3", 0, job="node")
    answers["hastack_backup_last_success_timestamp_seconds"] = [
        s for s in answers["hastack_backup_last_success_timestamp_seconds"] if s["metric"]["host"] != "lab-cass3"]
    set_value(answers, "hastack_backup_last_run_success", "lab-db1", 0, kind="mariadb-binlog")
    backups = service(collect(FakeStack(answers), healthy_uptime(), 1.0, now=NOW), "backups")
    assert (backups.state, backups.detail) == ("ok", "newest mariadb-full 3 h ago; 4 kinds fresh; verified 2 d ago")


def test_without_metrics_a_service_is_unknown():
    status = collect(FakeStack({}), healthy_uptime(), 1.0, now=NOW)
    assert {s.key: s.state for s in status.services if s.key != "site"} == dict.fromkeys(
        ("loadbalancers", "app", "mariadb", "redis", "cassandra", "backups"), "unknown")
    assert service(status, "site").state == "ok"
    assert status.exit_code == 1


def test_an_unreachable_stack_leaves_the_site_to_the_external_probe():
    failing = (NOW - 100, NOW + 1)
    status = collect(None, FakeUptime(probe_samples(NOW - 3600, NOW, 1.0, [failing])), 1.0, now=NOW, stack="lab",
                     stack_error="monitoring host unreachable: lab-mon1: could not connect over SSH to lab-mon1")
    assert [(s.state, s.detail) for s in status.services[1:]] == [("unknown", STACK_UNREACHABLE)] * 6
    site = service(status, "site")
    assert site.state == "down" and site.detail.startswith("https probe failing since ")
    assert status.incidents[0].end is None
    assert status.notes == ["monitoring host unreachable: lab-mon1: could not connect over SSH to lab-mon1"]


def test_a_stack_prometheus_that_fails_to_answer_is_unreachable():
    def run(host, command, timeout):
        return False, "", "curl: (7) Failed to connect to 10.77.1.150 port 9090: Connection refused"

    status = collect(SshPrometheus(run, "lab-mon1", "http://10.77.1.150:9090"), healthy_uptime(), 1.0, now=NOW)
    assert [(s.state, s.detail) for s in status.services[1:]] == [("unknown", STACK_UNREACHABLE)] * 6
    assert service(status, "site").state == "ok"
    assert "Connection refused" in status.notes[0]


def test_without_uptime_prometheus_the_site_is_unknown():
    status = collect(FakeStack(healthy_stack()), None, 15.0, now=NOW, uptime_error=NO_UPTIME_PROBE)
    assert (service(status, "site").state, service(status, "site").detail) == ("unknown", NO_UPTIME_PROBE)
    assert status.uptime == {"24h": None, "7d": None, "30d": None}
    assert status.response_times == [] and status.incidents == []
    assert status.exit_code == 1

    def refused(*args, **kwargs):
        raise StatusError("Prometheus at http://127.0.0.1:9 unreachable: [Errno 111] Connection refused")

    broken = FakeUptime([])
    broken.query = broken.query_range = refused
    status = collect(FakeStack(healthy_stack()), broken, 15.0, now=NOW)
    assert (service(status, "site").state, service(status, "site").detail) == ("unknown", st.UPTIME_UNREACHABLE)
    assert "Connection refused" in status.notes[0]


def test_site_degraded_by_certificate_or_redirect():
    uptime = FakeUptime(probe_samples(NOW - 600, NOW, 1.0), cert_expiry=NOW + 5 * 86400)
    site = service(collect(FakeStack(healthy_stack()), uptime, 1.0, now=NOW), "site")
    assert (site.state, site.detail) == ("degraded", "https answers in 42 ms; certificate expires in 5 d")
    uptime = FakeUptime(probe_samples(NOW - 600, NOW, 1.0), redirect=0)
    site = service(collect(FakeStack(healthy_stack()), uptime, 1.0, now=NOW), "site")
    assert site.state == "degraded" and site.detail.endswith("http to https redirect failing")


def test_alerts_with_their_summaries_and_a_critical_one_fails_the_exit_code():
    answers = healthy_stack()
    answers['ALERTS{alertstate="firing"}'] = [
        vec("ALERTS", 1, alertname="BackupStale", alertstate="firing", severity="warning", host="lab-db1",
            kind="mariadb-full"),
        vec("ALERTS", 1, alertname="SiteDown", alertstate="firing", severity="critical"),
    ]
    api = [
        {"labels": {"alertname": "BackupStale", "severity": "warning", "host": "lab-db1", "kind": "mariadb-full"},
         "annotations": {"summary": "no mariadb-full backup for 27 h"}, "state": "firing",
         "activeAt": "2024-05-29T10:00:00Z", "value": "9.7e+04"},
        {"labels": {"alertname": "SiteDown", "severity": "critical"},
         "annotations": {"summary": "the site does not answer"}, "state": "firing",
         "activeAt": "2024-05-29T16:00:00Z", "value": "0e+00"},
    ]
    status = collect(FakeStack(answers, api), healthy_uptime(), 1.0, now=NOW)
    assert [(a.name, a.severity, a.host, a.summary) for a in status.alerts] == [
        ("SiteDown", "critical", "", "the site does not answer"),
        ("BackupStale", "warning", "lab-db1", "no mariadb-full backup for 27 h")]
    assert all(s.state == "ok" for s in status.services)
    assert status.exit_code == 1
    answers['ALERTS{alertstate="firing"}'].pop()
    assert collect(FakeStack(answers, api), healthy_uptime(), 1.0, now=NOW).exit_code == 0


# -- uptime, response times, incidents


def test_uptime_percentages():
    # 3 h of probes every second; 36 s failed: 24 h and 7 d see the same 3 h of data
    samples = probe_samples(NOW - 3 * 3600, NOW, 1.0, [(NOW - 3600, NOW - 3564)])
    status = collect(FakeStack(healthy_stack()), FakeUptime(samples), 1.0, now=NOW)
    expected = 100 * (1 - 36 / len(samples))
    assert status.uptime["24h"] == pytest.approx(expected)
    assert status.uptime["30d"] == pytest.approx(expected)
    assert set(status.uptime) == {"24h", "7d", "30d"}


def test_response_times_have_at_most_300_points():
    uptime = FakeUptime(probe_samples(NOW - 2 * 86400, NOW, 15.0))
    points = st.response_times(uptime, 15.0, NOW)
    assert 250 <= len(points) <= 301
    assert all(v == pytest.approx(0.042) for _, v in points)
    assert points[-1][0] <= NOW and points[0][0] >= NOW - 86400


def test_incident_duration_is_the_probes_own_times():
    # probes every second at .137 past; the five from NOW-5000 on fail: 5.0 s
    samples = probe_samples(NOW - 3 * 3600, NOW, 1.0, [(NOW - 5000, NOW - 4995)])
    incidents = find_incidents(FakeUptime(samples), 1.0, NOW)
    assert len(incidents) == 1
    assert incidents[0].start == pytest.approx(NOW - 5000 + 0.137)
    assert incidents[0].end == pytest.approx(NOW - 4995 + 0.137)
    assert incidents[0].duration_seconds == pytest.approx(5.0)


def test_incidents_newest_first_split_and_ongoing():
    failing = [
        (NOW - 9000, NOW - 8996),  # 4 s
        (NOW - 7230, NOW - 7140),  # 90 s across coarse minutes: one incident
        (NOW - 3010, NOW - 3008), (NOW - 3000, NOW - 2997),  # two within a minute: two incidents
        (NOW - 6.5, NOW + 10),  # still failing
    ]
    incidents = find_incidents(FakeUptime(probe_samples(NOW - 3 * 3600, NOW, 1.0, failing)), 1.0, NOW)
    assert [round(i.duration_seconds, 3) for i in incidents[1:]] == [3.0, 2.0, 90.0, 4.0]
    assert incidents[0].end is None
    assert incidents[0].duration_seconds == pytest.approx(6 - 0.137)  # since the sample at NOW - 5.863
    starts = [i.start for i in incidents]
    assert starts == sorted(starts, reverse=True)


def test_thirty_days_in_chunks_under_the_point_limit():
    interval = 15.0
    start = NOW - 30 * 86400
    uptime = FakeUptime([])
    # the first coarse chunk ends 9999 minutes in: an outage across it is still one incident
    boundary = start + 9999 * 60
    failing = [(start + 3600, start + 3600 + 150), (boundary - 40, boundary + 50), (NOW - 86400, NOW - 86400 + 30)]
    uptime = FakeUptime(probe_samples(start, NOW, interval, failing))
    incidents = find_incidents(uptime, interval, NOW)
    assert [i.duration_seconds for i in incidents] == [30.0, 90.0, 150.0]
    coarse = [c for c in uptime.range_calls if c[0].startswith("min_over_time")]
    assert len(coarse) == 5
    assert all((end - begin) / step + 1 <= 11000 for _, begin, end, step in coarse)
    assert len(uptime.raw_calls) == 3  # one sample-by-sample read per window


def test_a_long_outage_is_read_in_chunks():
    failing = [(NOW - 30000, NOW - 3000)]
    uptime = FakeUptime(probe_samples(NOW - 40000, NOW, 1.0, failing))
    incidents = find_incidents(uptime, 1.0, NOW)
    assert len(incidents) == 1 and incidents[0].duration_seconds == pytest.approx(27000.0)
    assert len(uptime.raw_calls) >= 3


def test_format_duration():
    assert format_duration(4.0) == "4.0 s"
    assert format_duration(4.04) == "4.0 s"
    assert format_duration(192) == "3 min 12 s"
    assert format_duration(7500) == "2 h 5 min"
    assert format_duration(2 * 86400 + 3 * 3600) == "2 d 3 h"


# -- the Prometheus clients


def answer(result, result_type="vector"):
    return json.dumps({"status": "success", "data": {"resultType": result_type, "result": result}})


def test_ssh_prometheus_runs_curl_on_the_monitoring_host():
    calls = []

    def run(host, command, timeout):
        calls.append((host, command, timeout))
        return True, answer([vec("up", 1, job="node", host="lab-db1")]), ""

    prom = SshPrometheus(run, "lab-mon1", "http://10.77.1.150:9090")
    assert prom.query('up{job="node"}', at=NOW) == [vec("up", 1, job="node", host="lab-db1")]
    host, command, _ = calls[0]
    assert host == "lab-mon1"
    assert command.startswith("curl -sS ") and " --get " in command
    assert "--data-urlencode 'query=up{job=\"node\"}'" in command
    assert f"--data-urlencode time={NOW:.3f}" in command
    assert command.endswith("http://10.77.1.150:9090/api/v1/query")

    prom.query_range("up", NOW - 60, NOW, 15)
    assert "--data-urlencode step=15" in calls[-1][1] and calls[-1][1].endswith("/api/v1/query_range")


def test_ssh_prometheus_errors():
    def bad_query(host, command, timeout):
        return True, json.dumps({"status": "error", "errorType": "bad_data",
                                 "error": "1:4: parse error: unexpected end of input"}), ""

    with pytest.raises(StatusError, match="bad_data: 1:4: parse error"):
        SshPrometheus(bad_query, "lab-mon1", "http://10.77.1.150:9090").query("up{")

    def not_json(host, command, timeout):
        return True, "<html>502 Bad Gateway</html>", ""

    with pytest.raises(StatusError, match="not a Prometheus answer"):
        SshPrometheus(not_json, "lab-mon1", "http://10.77.1.150:9090").query("up")

    def dropped(host, command, timeout):
        raise EOFError("SSH session closed")

    with pytest.raises(StatusError, match="SSH session closed"):
        SshPrometheus(dropped, "lab-mon1", "http://10.77.1.150:9090").query("up")


@pytest.fixture
def prometheus_http():
    """A local HTTP server answering as Prometheus: /api/v1/query for `up`, 400 otherwise."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            params = dict(urllib.parse.parse_qsl(url.query))
            seen.append((url.path, params))
            if url.path == "/api/v1/alerts":
                body, code = json.dumps({"status": "success", "data": {"alerts": []}}), 200
            elif params.get("query") == "up":
                body, code = answer([vec("up", 1, job="site-probe", instance="localhost:9115")]), 200
            else:
                body, code = json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}), 400
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", seen
    server.shutdown()
    server.server_close()


def test_http_prometheus(prometheus_http):
    url, seen = prometheus_http
    prom = HttpPrometheus(url)
    assert prom.query("up", at=NOW)[0]["metric"]["job"] == "site-probe"
    assert seen[-1] == ("/api/v1/query", {"query": "up", "time": f"{NOW:.3f}"})
    assert prom.alerts() == []
    with pytest.raises(StatusError, match="bad_data: parse error"):
        prom.query("up{")


def test_http_prometheus_unreachable():
    with pytest.raises(StatusError, match="unreachable"):
        HttpPrometheus("http://127.0.0.1:9", timeout=2).query("up")


# -- a stack: the monitoring host over SSH


def test_collect_for_stack_asks_the_monitoring_host(monkeypatch):
    fake = FakeStack(healthy_stack())

    def run(host, command, timeout):
        assert host == "lab-mon1" and "http://10.77.1.150:9090/api/v1/" in command
        query = re.search(r"--data-urlencode (?:'query=(.*?)'|query=(\S+))", command)
        if command.endswith("/api/v1/alerts"):
            return True, json.dumps({"status": "success", "data": {"alerts": []}}), ""
        return True, answer(fake.query((query[1] or query[2]).replace("'\\''", "'"))), ""

    connected_to = []

    @contextmanager
    def connected(entries):
        connected_to.append(sorted(entries))
        yield run

    monkeypatch.setattr("hastack.converge.connected", connected)
    entries = {"lab-db1": {"role": "mariadb", "private_ip": "10.77.1.60"},
               "lab-mon1": {"role": "monitoring", "private_ip": "10.77.1.150"}}
    status = st.collect_for_stack("lab", entries, None, 1.0, now=NOW)
    assert connected_to == [["lab-mon1"]]
    assert [s.state for s in status.services] == ["unknown"] + ["ok"] * 6
    assert service(status, "site").detail == NO_UPTIME_PROBE

    @contextmanager
    def unreachable(entries):
        raise ConnectionError("could not connect over SSH to lab-mon1")
        yield

    monkeypatch.setattr("hastack.converge.connected", unreachable)
    status = st.collect_for_stack("lab", entries, None, 1.0)
    assert [s.detail for s in status.services[1:]] == [STACK_UNREACHABLE] * 6
    assert "could not connect over SSH to lab-mon1" in status.notes[0]


def test_no_lab_uptime_url_for_a_cloud_stack():
    assert st.lab_uptime_url("prod") is None


# -- showing it


def sample_status():
    failing = [(NOW - 5000, NOW - 4990), (NOW - 2000, NOW - 1808)]
    answers = healthy_stack()
    set_value(answers, "up", "lab-cass3", 0, job="cassandra")
    answers['ALERTS{alertstate="firing"}'] = [
        vec("ALERTS", 1, alertname="CassandraDown", alertstate="firing", severity="warning", host="lab-cass3")]
    api = [{"labels": {"alertname": "CassandraDown", "severity": "warning", "host": "lab-cass3"},
            "annotations": {"summary": "Cassandra on lab-cass3 is down <b>now</b>"}, "state": "firing"}]
    return collect(FakeStack(answers, api), FakeUptime(probe_samples(NOW - 86400, NOW, 15.0, failing)), 15.0, now=NOW,
                   stack="lab")


def test_html_is_a_self_contained_page_with_readable_numbers():
    status = sample_status()
    page = render_html(status)
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>lab status</title>" in page
    assert '<meta http-equiv="refresh" content="60">' in page
    # nothing fetched: no external source or link, no script, no CSS url()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"\b(src|href)\s*=", page, re.I)
    assert "<script" not in page.lower()
    assert "url(" not in page.lower()
    assert "@import" not in page
    assert '<tr data-service="site" data-state="ok">' in page
    assert '<tr data-service="cassandra" data-state="degraded">' in page
    assert "2/3 nodes Up/Normal; not: lab-cass3 (down)" in page
    uptime = dict(re.findall(r'data-uptime="(\w+)" data-value="([^"]*)"', page))
    assert set(uptime) == {"24h", "7d", "30d"}
    assert float(uptime["24h"]) == pytest.approx(status.uptime["24h"], abs=1e-6)
    assert f"{status.uptime['24h']:.2f} %" in page
    durations = [float(d) for d in re.findall(r'data-duration-seconds="([^"]+)"', page)]
    assert durations == [195.0, 15.0]  # to the 15 s probe: 192 s and 10 s outages
    assert "3 min 15 s" in page and "15.0 s" in page
    # every text escaped
    assert "is down &lt;b&gt;now&lt;/b&gt;" in page and "<b>now" not in page
    assert "generated at 2024-05-29 16:26:40 UTC in " in page
    assert "<svg" in page and "ms</text>" in page
    # as a browser test reads them: start and duration of each incident
    incidents = re.findall(r'data-incident-start="([0-9.]+)"[^>]*data-duration-seconds="([0-9.]+)"', page)
    assert [(float(a), float(b)) for a, b in incidents] == [
        (pytest.approx(i.start, abs=1e-3), pytest.approx(i.duration_seconds, abs=1e-3)) for i in status.incidents]


def test_html_escapes_the_stack_and_details():
    status = sample_status()
    status.stack = "<lab>"
    status.services[1].detail = '"><script>alert(1)</script>'
    page = render_html(status)
    assert "<title>&lt;lab&gt; status</title>" in page
    assert "<script" not in page


def test_html_without_data():
    status = collect(None, None, 15.0, now=NOW, stack="prod", uptime_error=NO_UPTIME_PROBE)
    page = render_html(status)
    assert "no response time data" in page and "no incidents" in page
    assert re.findall(r'data-uptime="(\w+)" data-value=""', page) == ["24h", "7d", "30d"]
    assert page.count('data-state="unknown"') == 7


def test_chart_has_ms_and_time_axes():
    points = [(NOW - 86400 + i * 288, 0.040 + (i % 10) / 1000) for i in range(300)]
    svg = response_chart_svg(points)
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert re.findall(r">(\d+(?:\.\d+)? ms)</text>", svg) == ["0 ms", "12.5 ms", "25 ms", "37.5 ms", "50 ms"]
    assert "time (UTC)" in svg and ">16:26</text>" in svg
    path = re.search(r'<path class="line" d="([^"]+)"', svg)[1]
    assert path.count("M") == 1 and path.count("L") == 299
    # a gap in the probes breaks the line
    gap = points[:100] + points[150:]
    assert re.search(r'<path class="line" d="([^"]+)"', response_chart_svg(gap))[1].count("M") == 2


def test_terminal_summary():
    console = Console(record=True, width=200, color_system=None)
    render_terminal(sample_status(), console)
    text = console.export_text()
    for expected in ("lab status", "site", "load balancers", "MariaDB", "Redis", "Cassandra", "backups",
                     "lab-lb1 holds the floating IP; 2/2 up", "degraded", "2/3 nodes Up/Normal",
                     "uptime of the site: 24h", "3 min 15 s", "CassandraDown", "Cassandra on lab-cass3 is down <b>now</b>",
                     "generated at 2024-05-29 16:26:40 UTC"):
        assert expected in text, expected


def test_json_output():
    status = sample_status()
    doc = json.loads(json.dumps(status.to_dict()))
    assert doc["stack"] == "lab" and doc["ok"] is False
    assert doc["generated_at"] == NOW and doc["generated_at_utc"] == "2024-05-29 16:26:40 UTC"
    assert [s["key"] for s in doc["services"]] == ["site", "loadbalancers", "app", "mariadb", "redis", "cassandra",
                                                   "backups"]
    assert doc["services"][5] == {"key": "cassandra", "name": "Cassandra", "state": "degraded",
                                  "detail": "2/3 nodes Up/Normal; not: lab-cass3 (down)"}
    assert set(doc["uptime"]) == {"24h", "7d", "30d"}
    assert doc["incidents"][0]["duration_seconds"] == 195.0 and doc["incidents"][0]["ongoing"] is False
    assert doc["alerts"] == [{"name": "CassandraDown", "severity": "warning", "host": "lab-cass3",
                              "summary": "Cassandra on lab-cass3 is down <b>now</b>"}]
    assert len(doc["response_times"]) > 200 and doc["generation_seconds"] >= 0


def test_write_page_is_atomic_and_world_readable(tmp_path):
    path = tmp_path / "index.html"
    path.write_text("old")
    old_umask = os.umask(0o077)
    try:
        write_page(sample_status(), path)
    finally:
        os.umask(old_umask)
    assert path.read_text().startswith("<!DOCTYPE html>")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]


def test_alerts_that_fail_to_load_leave_the_services():
    class NoAlerts(FakeStack):
        def query(self, expr, at=None):
            if expr.startswith("ALERTS"):
                raise StatusError("Prometheus at http://10.77.1.150:9090 (via lab-mon1): query timed out")
            return super().query(expr, at)

    status = collect(NoAlerts(healthy_stack()), healthy_uptime(), 1.0, now=NOW)
    assert all(s.state == "ok" for s in status.services) and status.alerts == []
    assert status.notes == ["Prometheus at http://10.77.1.150:9090 (via lab-mon1): query timed out"]
