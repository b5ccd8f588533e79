"""The stack's status: what `hastack status` prints and the static status page shows.

Two Prometheus servers answer: the stack's own (on the monitoring host, private
network only, reached over SSH) knows the services; the uptime Prometheus
outside the stack knows what a visitor sees of the site (a blackbox exporter
probing it). The site part works while the stack is down: that is what the
external probe is for.

`collect` gathers a `Status` from both (either may be None: unreachable);
`render_terminal`, `render_html` and `write_page` show it.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import shlex
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

STATES = ("ok", "degraded", "down", "unknown")
SITE_SUCCESS = 'probe_success{job="site",probe="https"}'
SITE_DURATION = 'probe_duration_seconds{job="site",probe="https"}'
SITE_CERT_EXPIRY = 'probe_ssl_earliest_cert_expiry{job="site",probe="https"}'
SITE_REDIRECT = 'probe_success{job="site",probe="http-redirect"}'
UPTIME_WINDOWS = (("24h", "24h"), ("7d", "7d"), ("30d", "30d"))
INCIDENT_DAYS = 30
COARSE_STEP = 60.0  # seconds; the first pass over 30 days only finds the minutes a probe failed in
MAX_POINTS = 10000  # per query_range: Prometheus refuses more than 11000
MAX_INCIDENTS = 50  # the newest ones are scanned to the sample; older ones are left out
CHART_POINTS = 300
CERT_WARN_DAYS = 21  # certificates are renewed 30 days before they expire
MAX_LAG_SECONDS = 60
BACKUP_MAX_AGE = {"mariadb-binlog": 5 * 60}  # shipped every minute
DAILY_BACKUP_MAX_AGE = 26 * 3600  # daily, with slack for a slow run
VERIFY_MAX_AGE = 8 * 86400  # weekly test restore
# the backups each host of a data store takes (while its node exporter answers), and those one host
# of the stack takes
BACKUP_KINDS_PER_HOST = {"mysqld": ("mariadb-full", "mariadb-binlog"), "cassandra": ("cassandra-snapshot",)}
BACKUP_KIND_PER_STACK = {"redis": "redis-rdb"}
STACK_UNREACHABLE = "monitoring host unreachable"
UPTIME_UNREACHABLE = "uptime Prometheus unreachable"
NO_UPTIME_PROBE = "no uptime probe configured (--uptime-url)"


class StatusError(Exception):
    pass


class Prometheus(Protocol):
    def query(self, expr: str, at: float | None = None) -> list[dict]: ...

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]: ...

    def alerts(self) -> list[dict]: ...


def _answer(body: str, where: str) -> Any:
    """The "data" of a Prometheus API answer, or a StatusError saying why there is none."""
    try:
        doc = json.loads(body)
    except ValueError:
        raise StatusError(f"{where}: not a Prometheus answer: {body.strip()[:200]!r}") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        error = doc.get("error") if isinstance(doc, dict) else None
        kind = doc.get("errorType") if isinstance(doc, dict) else None
        raise StatusError(f"{where}: query failed: {kind or 'error'}: {error or body.strip()[:200]}")
    return doc.get("data")


def _query_params(expr: str, at: float | None) -> dict[str, str]:
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    return params


def _range_params(expr: str, start: float, end: float, step: float) -> dict[str, str]:
    return {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}


class _PrometheusAPI:
    """The three calls of Prometheus's HTTP API used here; subclasses say how a GET gets there."""

    def _get(self, path: str, params: dict[str, str]) -> Any:
        raise NotImplementedError

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        return self._get("/api/v1/query", _query_params(expr, at))["result"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self._get("/api/v1/query_range", _range_params(expr, start, end, step))["result"]

    def alerts(self) -> list[dict]:
        return self._get("/api/v1/alerts", {})["alerts"]


class HttpPrometheus(_PrometheusAPI):
    """A Prometheus reached over plain HTTP (the uptime Prometheus)."""

    def __init__(self, base_url: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        # straight to the server: a proxy from the environment does not know the lab's or the stack's addresses
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _get(self, path: str, params: dict[str, str]) -> Any:
        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with self._opener.open(url, timeout=self.timeout) as resp:
                body = resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")  # Prometheus says what was wrong in a JSON body
        except (OSError, ValueError) as e:  # URLError, refused, timed out, a malformed URL
            reason = getattr(e, "reason", None) or e
            raise StatusError(f"Prometheus at {self.base_url} unreachable: {reason}") from None
        return _answer(body, f"Prometheus at {self.base_url}")


class SshPrometheus(_PrometheusAPI):
    """A Prometheus on a private network, asked with curl on a host reached over SSH
    (``run(host, command, timeout) -> (ok, stdout, stderr)``, hastack.converge.connected)."""

    def __init__(self, run: Callable[[str, str, float], tuple[bool, str, str]], host: str, base_url: str,
                 timeout: float = 20.0):
        self.run = run
        self.host = host
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> Any:
        where = f"Prometheus at {self.base_url} (via {self.host})"
        args = " ".join(f"--data-urlencode {shlex.quote(f'{k}={v}')}" for k, v in params.items())
        # no --fail: Prometheus explains a refused query in the body of its 4xx answer
        command = f"curl -sS --max-time {self.timeout:g} --get {args} {shlex.quote(self.base_url + path)}"
        try:
            ok, out, err = self.run(self.host, command, self.timeout + 10)
        except Exception as e:  # a dropped SSH connection or a command timeout: either way no answer
            raise StatusError(f"{where}: {type(e).__name__}: {e}") from None
        if not ok:
            raise StatusError(f"{where} unreachable: {(err or out).strip()[:300]}")
        return _answer(out, where)


# -- the summary


@dataclass
class Service:
    key: str  # stable name for scripts and the page's data-service attribute
    name: str
    state: str  # ok | degraded | down | unknown
    detail: str


@dataclass
class Incident:
    start: float
    end: float | None  # None: still failing
    duration_seconds: float

    def to_dict(self) -> dict:
        return {"start": self.start, "start_utc": _utc(self.start), "end": self.end,
                "end_utc": None if self.end is None else _utc(self.end), "ongoing": self.end is None,
                "duration_seconds": round(self.duration_seconds, 3)}


@dataclass
class Alert:
    name: str
    severity: str
    host: str
    summary: str


@dataclass
class Status:
    stack: str
    generated_at: float
    generation_seconds: float
    services: list[Service]
    uptime: dict[str, float | None]  # "24h", "7d", "30d" -> percent, None without data
    response_times: list[tuple[float, float]]  # (time, seconds) over the last 24 h
    incidents: list[Incident]  # newest first
    alerts: list[Alert]
    notes: list[str] = field(default_factory=list)  # why a part is missing

    def service(self, key: str) -> Service:
        return next(s for s in self.services if s.key == key)

    @property
    def ok(self) -> bool:
        return all(s.state == "ok" for s in self.services) and not any(a.severity == "critical" for a in self.alerts)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def to_dict(self) -> dict:
        return {
            "stack": self.stack,
            "generated_at": self.generated_at,
            "generated_at_utc": _utc(self.generated_at),
            "generation_seconds": round(self.generation_seconds, 3),
            "ok": self.ok,
            "services": [{"key": s.key, "name": s.name, "state": s.state, "detail": s.detail} for s in self.services],
            "uptime": dict(self.uptime),
            "response_times": [[t, v] for t, v in self.response_times],
            "incidents": [i.to_dict() for i in self.incidents],
            "alerts": [{"name": a.name, "severity": a.severity, "host": a.host, "summary": a.summary}
                       for a in self.alerts],
            "notes": list(self.notes),
        }


STACK_SERVICES = (("loadbalancers", "load balancers"), ("app", "app"), ("mariadb", "MariaDB"), ("redis", "Redis"),
                  ("cassandra", "Cassandra"), ("backups", "backups"))


def collect(stack_prom: Prometheus | None, uptime_prom: Prometheus | None, interval: float,
            now: float | None = None, *, stack: str = "", stack_error: str | None = None,
            uptime_error: str | None = None) -> Status:
    """The status from the stack's Prometheus and the uptime Prometheus (None: unreachable, for the
    reason in ``stack_error``/``uptime_error``). ``interval``: seconds between the uptime probes."""
    started = time.monotonic()
    now = time.time() if now is None else now
    notes: list[str] = []

    site = Service("site", "site", "unknown", uptime_error or UPTIME_UNREACHABLE)
    uptime: dict[str, float | None] = {label: None for label, _ in UPTIME_WINDOWS}
    response: list[tuple[float, float]] = []
    incidents: list[Incident] = []
    if uptime_prom is not None:
        try:
            incidents = find_incidents(uptime_prom, interval, now)
            site = _site(uptime_prom, now, incidents)
        except StatusError as e:
            notes.append(str(e))
            uptime_prom = None
    elif uptime_error is None:
        notes.append(UPTIME_UNREACHABLE)
    if uptime_prom is not None:
        try:
            uptime = site_uptime(uptime_prom, now)
            response = response_times(uptime_prom, interval, now)
        except StatusError as e:
            notes.append(str(e))

    services = [Service(key, name, "unknown", STACK_UNREACHABLE) for key, name in STACK_SERVICES]
    alerts: list[Alert] = []
    if stack_prom is None:
        notes.append(stack_error or STACK_UNREACHABLE)
    else:
        try:
            services = _stack_services(stack_prom, now)
            alerts = firing_alerts(stack_prom)
        except StatusError as e:
            notes.append(str(e))

    return Status(stack=stack, generated_at=now, generation_seconds=time.monotonic() - started,
                  services=[site, *services], uptime=uptime, response_times=response, incidents=incidents,
                  alerts=alerts, notes=notes)


# -- Prometheus results


def _value(sample: dict) -> float:
    return float(sample["value"][1])


def _host(sample: dict) -> str:
    labels = sample.get("metric", {})
    return labels.get("host") or labels.get("instance") or "?"


def _by_host(results: list[dict]) -> dict[str, float]:
    return {_host(s): _value(s) for s in results}


def _finite(v: float) -> bool:
    return not (math.isnan(v) or math.isinf(v))


def _dur(seconds: float) -> str:
    """A PromQL duration: integer milliseconds."""
    return f"{max(1, round(seconds * 1000))}ms"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def format_duration(seconds: float) -> str:
    """4.0 s, 3 min 12 s, 2 h 5 min, 1 d 3 h."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60} min"
    return f"{whole // 86400} d {whole % 86400 // 3600} h"


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- the site, from the uptime Prometheus


def _site(prom: Prometheus, now: float, incidents: list[Incident]) -> Service:
    success = [_value(s) for s in prom.query(SITE_SUCCESS, at=now)]
    if not success:
        return Service("site", "site", "unknown", "no https probe data")
    if min(success) < 1:
        ongoing = next((i for i in incidents if i.end is None), None)
        since = f" since {_utc(ongoing.start)} ({format_duration(ongoing.duration_seconds)})" if ongoing else ""
        return Service("site", "site", "down", f"https probe failing{since}")
    state, parts = "ok", []
    durations = [_value(s) for s in prom.query(SITE_DURATION, at=now)]
    if durations:
        parts.append(f"https answers in {max(durations) * 1000:.0f} ms")
    expiries = [_value(s) for s in prom.query(SITE_CERT_EXPIRY, at=now)]
    if expiries:
        days = (min(expiries) - now) / 86400
        if days < 0:
            state = "down"
            parts.append("certificate expired")
        else:
            if days < CERT_WARN_DAYS:
                state = "degraded"
            parts.append(f"certificate expires in {days:.0f} d")
    redirect = [_value(s) for s in prom.query(SITE_REDIRECT, at=now)]
    if redirect and min(redirect) < 1:
        state = "degraded" if state == "ok" else state
        parts.append("http to https redirect failing")
    return Service("site", "site", state, "; ".join(parts) or "https probe ok")


def site_uptime(prom: Prometheus, now: float) -> dict[str, float | None]:
    """Percent of successful https probes over 24 h, 7 d and 30 d (None: no probes then)."""
    uptime: dict[str, float | None] = {}
    for label, window in UPTIME_WINDOWS:
        values = [_value(s) for s in prom.query(f"avg_over_time({SITE_SUCCESS}[{window}])", at=now)]
        values = [v for v in values if _finite(v)]
        uptime[label] = 100 * sum(values) / len(values) if values else None
    return uptime


def response_times(prom: Prometheus, interval: float, now: float) -> list[tuple[float, float]]:
    """The https probe's duration over the last 24 h, averaged into at most ~300 points."""
    step = max(interval, math.ceil(86400 / CHART_POINTS))
    results = prom.query_range(f"avg_over_time({SITE_DURATION}[{_dur(step)}])", now - 86400, now, step)
    by_time: dict[float, list[float]] = {}
    for series in results:
        for t, v in series.get("values", []):
            if _finite(float(v)):
                by_time.setdefault(float(t), []).append(float(v))
    return [(t, sum(vs) / len(vs)) for t, vs in sorted(by_time.items())]


def _range_min(prom: Prometheus, expr: str, start: float, end: float, step: float) -> list[tuple[float, float]]:
    """query_range in chunks of at most MAX_POINTS steps; per time the lowest value of any series."""
    by_time: dict[float, float] = {}
    chunk_start = start
    while chunk_start <= end:
        chunk_end = min(chunk_start + step * (MAX_POINTS - 1), end)
        for series in prom.query_range(expr, chunk_start, chunk_end, step):
            for t, v in series.get("values", []):
                t, v = float(t), float(v)
                by_time[t] = min(v, by_time.get(t, v))
        chunk_start = chunk_end + step
    return sorted(by_time.items())


def _raw_samples(prom: Prometheus, expr: str, start: float, end: float, interval: float) -> list[tuple[float, float]]:
    """Every stored sample of ``expr`` in (start, end], with its own timestamp (a range selector asked
    as an instant query), in chunks of about MAX_POINTS samples."""
    chunk = max(interval * MAX_POINTS, 60.0)
    samples: dict[float, float] = {}
    lo = start
    while lo < end:
        hi = min(lo + chunk, end)
        for series in prom.query(f"{expr}[{_dur(hi - lo)}]", at=hi):
            for t, v in series.get("values", []):
                t, v = float(t), float(v)
                samples[t] = min(v, samples.get(t, v))
        lo = hi
    return sorted(samples.items())


def _failures(samples: list[tuple[float, float]], now: float) -> list[Incident]:
    """Each run of failed samples: from its first failed sample to the first success after it."""
    incidents, start = [], None
    for t, v in samples:
        if v < 1 and start is None:
            start = t
        elif v >= 1 and start is not None:
            incidents.append(Incident(start, t, t - start))
            start = None
    if start is not None:
        incidents.append(Incident(start, None, max(0.0, now - start)))
    return incidents


def find_incidents(prom: Prometheus, interval: float, now: float, days: int = INCIDENT_DAYS) -> list[Incident]:
    """Periods the https probe failed in the last ``days`` days, newest first. A coarse pass
    (the minimum per COARSE_STEP) finds the windows with a failure; each is then read sample
    by sample, so start and end are the probes' own times."""
    step = max(COARSE_STEP, 2 * interval)
    coarse = _range_min(prom, f"min_over_time({SITE_SUCCESS}[{_dur(step)}])", now - days * 86400, now, step)
    runs: list[tuple[int, int]] = []  # index of the first and last failed coarse point
    for i, (_, v) in enumerate(coarse):
        if v >= 1:
            continue
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    found: list[Incident] = []
    for first, last in reversed(runs[-MAX_INCIDENTS:]):
        # failures lie after the point before (all its samples succeeded); the point after the run
        # holds only successes, so the window ends with the first success
        lo = coarse[first][0] - step - interval
        hi = coarse[last + 1][0] if last + 1 < len(coarse) else now
        found.extend(_failures(_raw_samples(prom, SITE_SUCCESS, lo, hi, interval), now))
    return _merge(found, now)[:MAX_INCIDENTS]


def _merge(incidents: list[Incident], now: float) -> list[Incident]:
    """Overlapping or touching incidents as one, newest first."""
    merged: list[Incident] = []
    for inc in sorted(incidents, key=lambda i: i.start):
        prev = merged[-1] if merged else None
        if prev is not None and (prev.end is None or inc.start <= prev.end):
            end = None if prev.end is None or inc.end is None else max(prev.end, inc.end)
            merged[-1] = Incident(prev.start, end, (now if end is None else end) - prev.start)
        else:
            merged.append(inc)
    return list(reversed(merged))


# -- the services, from the stack's Prometheus


def _stack_services(prom: Prometheus, now: float) -> list[Service]:
    """Every stack service, or a StatusError when the stack's Prometheus does not answer."""
    up: dict[str, dict[str, float]] = {}
    for s in prom.query("up"):
        up.setdefault(s["metric"].get("job", "?"), {})[_host(s)] = _value(s)
    fip = _by_host(prom.query("hastack_floating_ip_configured"))
    holder = next((h for h in sorted(fip) if fip[h] == 1), None)
    return [
        _loadbalancers(up.get("haproxy", {}), fip),
        _app(prom, holder),
        _mariadb(prom, up.get("mysqld", {})),
        _redis(prom, up.get("redis", {})),
        _cassandra(prom, up.get("cassandra", {})),
        _backups(prom, up, now),
    ]


def _loadbalancers(haproxy: dict[str, float], fip: dict[str, float]) -> Service:
    hosts = sorted(set(haproxy) | set(fip))
    if not hosts:
        return Service("loadbalancers", "load balancers", "unknown", "no load balancer metrics")
    holders = [h for h in hosts if fip.get(h) == 1]
    running = [h for h in hosts if haproxy.get(h) == 1]
    count = f"{len(running)}/{len(hosts)} up"
    if not holders:
        return Service("loadbalancers", "load balancers", "down", f"no load balancer holds the floating IP; {count}")
    if len(holders) > 1:
        return Service("loadbalancers", "load balancers", "degraded",
                       f"{' and '.join(holders)} all hold the floating IP; {count}")
    if holders[0] not in running:
        return Service("loadbalancers", "load balancers", "down",
                       f"{holders[0]} holds the floating IP but its HAProxy is down; {count}")
    state = "ok" if len(running) == len(hosts) else "degraded"
    return Service("loadbalancers", "load balancers", state, f"{holders[0]} holds the floating IP; {count}")


def _app(prom: Prometheus, holder: str | None) -> Service:
    views: dict[str, dict[str, str]] = {}  # load balancer -> app server -> its state there
    for s in prom.query('haproxy_server_status{proxy="app"}'):
        if _value(s) == 1:
            views.setdefault(_host(s), {})[s["metric"].get("server", "?")] = s["metric"].get("state", "?")
    if not views:
        active = _by_host(prom.query('haproxy_backend_active_servers{proxy="app"}'))
        if not active:
            return Service("app", "app", "unknown", "no HAProxy metrics for the app servers")
        lb = holder if holder in active else sorted(active)[0]
        n = int(active[lb])
        return Service("app", "app", "ok" if n else "down", f"{n} servers up (as {lb} sees them)")
    lb = holder if holder in views else sorted(views)[0]
    servers = views[lb]
    down = sorted(name for name, state in servers.items() if state.upper() != "UP")
    n_up = len(servers) - len(down)
    detail = f"{n_up}/{len(servers)} servers up (as {lb} sees them)"
    if down:
        detail += f"; not up: {', '.join(f'{name} ({servers[name]})' for name in down)}"
    state = "down" if n_up == 0 else "degraded" if down else "ok"
    return Service("app", "app", state, detail)


def _mariadb(prom: Prometheus, exporter: dict[str, float]) -> Service:
    mysql_up = _by_host(prom.query("mysql_up"))
    read_only = _by_host(prom.query("mysql_global_variables_read_only"))
    hosts = sorted(set(exporter) | set(mysql_up))
    if not hosts:
        return Service("mariadb", "MariaDB", "unknown", "no MariaDB metrics")
    running = [h for h in hosts if exporter.get(h, 1) == 1 and mysql_up.get(h) == 1]
    if not running:
        return Service("mariadb", "MariaDB", "down", f"no MariaDB server up (0/{len(hosts)})")
    writers = [h for h in running if read_only.get(h) == 0]
    io: dict[str, list[float]] = {}
    sql: dict[str, list[float]] = {}
    for s in prom.query("mysql_slave_status_slave_io_running"):
        io.setdefault(_host(s), []).append(_value(s))
    for s in prom.query("mysql_slave_status_slave_sql_running"):
        sql.setdefault(_host(s), []).append(_value(s))
    lags = [_value(s) for s in prom.query("mysql_slave_status_seconds_behind_master") if _host(s) in running]
    lag = max((v for v in lags if _finite(v)), default=None)

    problems = []
    for h in running:
        if h not in io and h not in sql:
            problems.append(f"no replication on {h}")
        elif not (io.get(h) and all(v == 1 for v in io[h]) and sql.get(h) and all(v == 1 for v in sql[h])):
            io_ok = "yes" if io.get(h) and all(v == 1 for v in io[h]) else "no"
            sql_ok = "yes" if sql.get(h) and all(v == 1 for v in sql[h]) else "no"
            problems.append(f"replication stopped on {h} (io {io_ok}, sql {sql_ok})")
    if len(running) == 2 and not problems:
        replication = "replication running both ways"
    elif not problems:
        replication = f"replication running on {len(running)}/{len(running)}"
    else:
        replication = "; ".join(problems)
    lag_text = "" if lag is None else f", lag {lag:.0f} s"
    missing = [h for h in hosts if h not in running]
    down_text = f"; {', '.join(missing)} down" if missing else ""

    if not writers:
        return Service("mariadb", "MariaDB", "down", f"no writer (all read-only){down_text}; {replication}{lag_text}")
    if len(writers) > 1:
        return Service("mariadb", "MariaDB", "degraded", f"{len(writers)} writers: {', '.join(writers)}{down_text}")
    lagging = lag is not None and lag > MAX_LAG_SECONDS
    state = "degraded" if missing or problems or lagging else "ok"
    return Service("mariadb", "MariaDB", state, f"writer {writers[0]}{down_text}; {replication}{lag_text}")


def _redis(prom: Prometheus, exporter: dict[str, float]) -> Service:
    redis_up = _by_host(prom.query("redis_up"))
    hosts = sorted(set(exporter) | set(redis_up))
    if not hosts:
        return Service("redis", "Redis", "unknown", "no Redis metrics")
    running = [h for h in hosts if exporter.get(h, 1) == 1 and redis_up.get(h) == 1]
    # the exporter's "role" label is renamed exported_role: the target's own role label (redis) wins
    masters = sorted({_host(s) for s in prom.query("redis_instance_info")
                      if s["metric"].get("exported_role", s["metric"].get("role")) == "master"
                      and _value(s) == 1 and _host(s) in running})
    sentinels = _by_host(prom.query('probe_success{job="tls",service="sentinel"}'))
    sentinels_up = sum(1 for v in sentinels.values() if v == 1)
    parts = [f"{len(running)}/{len(hosts)} up"]
    if sentinels:
        quorum = "" if sentinels_up * 2 > len(sentinels) else " (no majority: no failover)"
        parts.append(f"sentinels {sentinels_up}/{len(sentinels)}{quorum}")
    if not running:
        return Service("redis", "Redis", "down", "; ".join(["no Redis server up", *parts[1:]]))
    if not masters:
        return Service("redis", "Redis", "down", "; ".join(["no master", *parts]))
    if len(masters) > 1:
        split = f"{len(masters)} masters: {', '.join(masters)}"
        return Service("redis", "Redis", "degraded", "; ".join([split, *parts]))
    degraded = len(running) < len(hosts) or (sentinels and sentinels_up < len(sentinels))
    return Service("redis", "Redis", "degraded" if degraded else "ok", "; ".join([f"master {masters[0]}", *parts]))


def _cassandra(prom: Prometheus, exporter: dict[str, float]) -> Service:
    modes = {_host(s): s["metric"].get("mode", "?") for s in prom.query("cassandra_storageservice_operationmode")
             if _value(s) == 1}
    # live endpoints as each node sees them (itself included); the down count would also count a
    # decommissioned node, which gossip remembers for three days
    seen_up = _by_host(prom.query("cassandra_failuredetector_upendpointcount"))
    hosts = sorted(set(exporter) | set(modes))
    if not hosts:
        return Service("cassandra", "Cassandra", "unknown", "no Cassandra metrics")
    normal = [h for h in hosts if exporter.get(h, 1) == 1 and modes.get(h, "").upper() == "NORMAL"]
    others = [f"{h} ({modes[h]})" if exporter.get(h, 1) == 1 and h in modes else f"{h} (down)"
              for h in hosts if h not in normal]
    detail = f"{len(normal)}/{len(hosts)} nodes Up/Normal"
    if others:
        detail += f"; not: {', '.join(others)}"
    gossip_down = max((len(hosts) - v for h, v in seen_up.items() if h in normal and _finite(v)), default=0)
    if gossip_down and not others:
        detail += f"; {gossip_down:.0f} seen down by the ring"
    if not normal:
        state = "down"
    elif len(normal) * 2 <= len(hosts):
        state = "down"  # no majority of replicas: QUORUM reads and writes fail
    elif others or gossip_down:
        state = "degraded"
    else:
        state = "ok"
    return Service("cassandra", "Cassandra", state, detail)


def _backups(prom: Prometheus, up: dict[str, dict[str, float]], now: float) -> Service:
    times: dict[str, dict[str, float]] = {}  # kind -> host -> its last success
    for s in prom.query("hastack_backup_last_success_timestamp_seconds"):
        times.setdefault(s["metric"].get("kind", "?"), {})[_host(s)] = _value(s)
    node_up = {h for h, v in up.get("node", {}).items() if v == 1}
    problems = []
    # a host that is down is shown by its own service; its backups are not expected meanwhile
    for job, kinds in BACKUP_KINDS_PER_HOST.items():
        for host in sorted(h for h in up.get(job, {}) if h in node_up):
            problems.extend(f"no {kind} backup on {host} yet" for kind in kinds if host not in times.get(kind, {}))
    for job, kind in BACKUP_KIND_PER_STACK.items():
        if up.get(job) and kind not in times:
            problems.append(f"no {kind} backup yet")
    kinds = sorted(set(times) | {k for job, ks in BACKUP_KINDS_PER_HOST.items() if up.get(job) for k in ks}
                   | {k for job, k in BACKUP_KIND_PER_STACK.items() if up.get(job)})
    if not kinds:
        return Service("backups", "backups", "unknown", "no backup metrics")
    for kind, hosts in sorted(times.items()):
        for host, ts in sorted(hosts.items()):
            if now - ts > BACKUP_MAX_AGE.get(kind, DAILY_BACKUP_MAX_AGE):
                problems.append(f"newest {kind} of {host} {_ago(now - ts)} ago")
    # a minutely binlog run that failed once is retried a minute later: its age tells
    problems.extend(sorted({f"last {s['metric'].get('kind', '?')} on {_host(s)} failed"
                            for s in prom.query("hastack_backup_last_run_success")
                            if _value(s) == 0 and s["metric"].get("kind") != "mariadb-binlog"}))

    verified = [_value(s) for s in prom.query("hastack_backup_verify_last_success_timestamp_seconds")]
    verify_ok = [_value(s) for s in prom.query("hastack_backup_verify_last_run_success")]
    if verify_ok and min(verify_ok) == 0:
        problems.append("last test restore failed")
    if verified and now - max(verified) > VERIFY_MAX_AGE:
        problems.append(f"last verified {_ago(now - max(verified))} ago")
    verify_text = f"verified {_ago(now - max(verified))} ago" if verified else "not verified yet"

    if problems:
        return Service("backups", "backups", "degraded", "; ".join(problems))
    first = "mariadb-full" if "mariadb-full" in times else next(k for k in kinds if k in times)
    newest = max(times[first].values())
    return Service("backups", "backups", "ok",
                   f"newest {first} {_ago(now - newest)} ago; {len(kinds)} kinds fresh; {verify_text}")


SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def firing_alerts(prom: Prometheus) -> list[Alert]:
    """Firing alerts (ALERTS), with their summaries from /api/v1/alerts where it answers."""
    summaries: dict[tuple, str] = {}
    try:
        for a in prom.alerts():
            key = tuple(sorted(a.get("labels", {}).items()))
            summaries[key] = a.get("annotations", {}).get("summary", "")
    except StatusError:
        pass  # the list stays useful without the summaries
    alerts = []
    for s in prom.query('ALERTS{alertstate="firing"}'):
        labels = {k: v for k, v in s["metric"].items() if k not in ("__name__", "alertstate")}
        alerts.append(Alert(name=labels.get("alertname", "?"), severity=labels.get("severity", ""),
                            host=labels.get("host", labels.get("instance", "")),
                            summary=summaries.get(tuple(sorted(labels.items())), "")))
    alerts.sort(key=lambda a: (SEVERITY_ORDER.get(a.severity, 9), a.name, a.host))
    return alerts


# -- a stack


def lab_uptime_url(stack: str) -> str | None:
    """The lab's uptime Prometheus for a lab stack; None elsewhere or when the lab has none."""
    from hastack.lab.layout import is_lab_stack

    if not is_lab_stack(stack):
        return None
    from hastack.lab import services
    from hastack.lab.layout import Addresses, lab_topology

    return services.uptime_url(Addresses(lab_topology(stack)))


def collect_for_stack(stack: str, entries: dict[str, dict], uptime_url: str | None, interval: float,
                      now: float | None = None) -> Status:
    """Connect to the stack's monitoring host over SSH (``entries``: hastack.console.stack_entries)
    and collect; an unreachable monitoring host leaves the stack's services unknown."""
    from pyinfra.api.exceptions import PyinfraError

    from hastack.converge import connected

    uptime_prom = HttpPrometheus(uptime_url) if uptime_url else None
    uptime_error = None if uptime_url else NO_UPTIME_PROBE
    monitoring = sorted(name for name, data in entries.items() if data.get("role") == "monitoring")
    if not monitoring:
        return collect(None, uptime_prom, interval, now, stack=stack, stack_error="the stack has no monitoring host",
                       uptime_error=uptime_error)
    name = monitoring[0]
    with ExitStack() as on_exit:
        try:
            run = on_exit.enter_context(connected({name: entries[name]}))
        except (OSError, PyinfraError) as e:
            return collect(None, uptime_prom, interval, now, stack=stack,
                           stack_error=f"{STACK_UNREACHABLE}: {name}: {e}", uptime_error=uptime_error)
        prom = SshPrometheus(run, name, f"http://{entries[name]['private_ip']}:9090")
        return collect(prom, uptime_prom, interval, now, stack=stack, uptime_error=uptime_error)


# -- showing it

STATE_COLOURS = {"ok": "#1b7f3b", "degraded": "#b26a00", "down": "#c62828", "unknown": "#6b6b6b"}
STATE_STYLES = {"ok": "green", "degraded": "yellow", "down": "bold red", "unknown": "dim"}
OVERALL = {"ok": "All services operational", "degraded": "Some services degraded", "down": "Service disruption",
           "unknown": "Status partly unknown"}


def overall_state(status: Status) -> str:
    states = {s.state for s in status.services}
    for state in ("down", "degraded", "unknown"):
        if state in states:
            return state
    return "ok"


def _nice_ceiling(v: float) -> float:
    if v <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(v))
    return next(m * base for m in (1, 2, 2.5, 5, 10) if m * base >= v)


def response_chart_svg(points: list[tuple[float, float]], width: int = 720, height: int = 220) -> str:
    """An inline SVG line chart of response times (seconds) with ms and UTC time axes."""
    if not points:
        return '<p class="muted">no response time data</p>'
    left, right, top, bottom = 64, 16, 12, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    t0, t1 = points[0][0], points[-1][0]
    span = (t1 - t0) or 1.0
    ymax = _nice_ceiling(max(v for _, v in points) * 1000)

    def x(t: float) -> float:
        return left + (t - t0) / span * plot_w

    def y(ms: float) -> float:
        return top + (1 - ms / ymax) * plot_h

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="response time over the last 24 hours">']
    for i in range(5):
        ms = ymax * i / 4
        out.append(f'<line class="grid" x1="{left}" y1="{y(ms):.1f}" x2="{width - right}" y2="{y(ms):.1f}"/>')
        out.append(f'<text class="ylabel" x="{left - 6}" y="{y(ms) + 4:.1f}" text-anchor="end">{ms:g} ms</text>')
    for i in range(5):
        t = t0 + span * i / 4
        label = dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%H:%M")
        out.append(f'<text class="xlabel" x="{x(t):.1f}" y="{height - bottom + 18}" '
                   f'text-anchor="middle">{label}</text>')
    out.append(f'<text class="xlabel" x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">'
               f'time (UTC)</text>')
    # a gap in the data (no probes) breaks the line instead of bridging it
    spacing = min((b[0] - a[0] for a, b in zip(points, points[1:], strict=False)), default=span)
    path, prev = [], None
    for t, v in points:
        cmd = "M" if prev is None or t - prev > 2.5 * spacing else "L"
        path.append(f"{cmd}{x(t):.1f},{y(v * 1000):.1f}")
        prev = t
    out.append(f'<path class="line" d="{" ".join(path)}"/>')
    out.append(f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}"/>')
    out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>')
    out.append("</svg>")
    return "\n".join(out)


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 60em;
       padding: 0 1em; color: #1d1d1d; background: #fafafa; }
h1 { margin-bottom: 0.2em; }
h2 { margin-top: 1.6em; font-size: 1.15em; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: 0.4em 0.7em; border-bottom: 1px solid #e3e3e3; vertical-align: top; }
th { font-weight: 600; background: #f0f0f0; }
.state { font-weight: 600; white-space: nowrap; }
.state::before { content: "\\25CF\\00A0"; }
.overall { font-size: 1.2em; font-weight: 600; padding: 0.6em 0.9em; border-radius: 4px; color: #fff; }
.muted, footer { color: #6b6b6b; }
footer { margin-top: 2em; font-size: 0.9em; }
.num { font-variant-numeric: tabular-nums; }
svg.chart { max-width: 100%; height: auto; background: #fff; }
svg .grid { stroke: #e3e3e3; stroke-width: 1; }
svg .axis { stroke: #888; stroke-width: 1; }
svg .line { fill: none; stroke: #1f5fa8; stroke-width: 1.5; }
svg text { font-size: 11px; fill: #555; }
""" + "".join(f".s-{state} {{ color: {colour}; }}\n.bg-{state} {{ background: {colour}; }}\n"
              for state, colour in STATE_COLOURS.items())


def render_html(status: Status) -> str:
    """One self-contained page: inline CSS and SVG, no script, nothing fetched. The numbers are in
    data-* attributes too: data-service/data-state, data-uptime/data-value (percent), and per
    incident data-incident-start/-end (Unix time, end empty while ongoing), data-duration-seconds."""
    e = html.escape
    title = f"{status.stack} status".strip()
    overall = overall_state(status)
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta http-equiv="refresh" content="60">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
           f"<h1>{e(title)}</h1>",
           f'<p class="overall bg-{overall}" data-overall="{overall}">{e(OVERALL[overall])}</p>']

    out += ["<h2>Services</h2>", '<table class="services">',
            "<tr><th>service</th><th>state</th><th>detail</th></tr>"]
    for s in status.services:
        out.append(f'<tr data-service="{e(s.key)}" data-state="{e(s.state)}"><td>{e(s.name)}</td>'
                   f'<td class="state s-{e(s.state)}">{e(s.state)}</td><td>{e(s.detail)}</td></tr>')
    out.append("</table>")

    out += ["<h2>Uptime of the site</h2>", '<table class="uptime">',
            "<tr>" + "".join(f"<th>{label[:-1]} {label[-1]}</th>" for label in status.uptime) + "</tr>", "<tr>"]
    for label, value in status.uptime.items():
        shown, exact = ("no data", "") if value is None else (f"{value:.2f} %", f"{value:.6f}")
        out.append(f'<td class="num" data-uptime="{e(label)}" data-value="{exact}">{shown}</td>')
    out += ["</tr>", "</table>"]

    out += ["<h2>Response time, last 24 hours</h2>", response_chart_svg(status.response_times)]

    out.append(f"<h2>Incidents, last {INCIDENT_DAYS} days</h2>")
    if status.incidents:
        out += ['<table class="incidents">', "<tr><th>start (UTC)</th><th>end (UTC)</th><th>duration</th></tr>"]
        for i in status.incidents:
            end = "ongoing" if i.end is None else _utc(i.end)
            end_value = "" if i.end is None else f"{i.end:.3f}"
            out.append(f'<tr class="incident" data-incident-start="{i.start:.3f}" data-incident-end="{end_value}" '
                       f'data-duration-seconds="{i.duration_seconds:.3f}"><td>{e(_utc(i.start))}</td><td>{e(end)}</td>'
                       f'<td class="num">{e(format_duration(i.duration_seconds))}</td></tr>')
        out.append("</table>")
    else:
        out.append('<p class="muted" data-incidents="0">no incidents</p>')

    out.append("<h2>Firing alerts</h2>")
    if status.alerts:
        out += ['<table class="alerts">', "<tr><th>alert</th><th>severity</th><th>host</th><th>summary</th></tr>"]
        for a in status.alerts:
            out.append(f'<tr data-alert="{e(a.name)}" data-severity="{e(a.severity)}"><td>{e(a.name)}</td>'
                       f"<td>{e(a.severity)}</td><td>{e(a.host)}</td><td>{e(a.summary)}</td></tr>")
        out.append("</table>")
    else:
        out.append('<p class="muted" data-alerts="0">none</p>')

    if status.notes:
        out += ['<ul class="notes muted">', *(f"<li>{e(n)}</li>" for n in status.notes), "</ul>"]
    ms = status.generation_seconds * 1000
    out.append(f'<footer data-generated-at="{status.generated_at:.3f}">generated at {e(_utc(status.generated_at))} '
               f"in {ms:.0f} ms</footer>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def render_terminal(status: Status, console) -> None:
    """The summary as rich tables on ``console``."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{status.stack} status".strip())
    for col in ("service", "state", "detail"):
        table.add_column(col)
    for s in status.services:
        table.add_row(Text(s.name), Text(s.state, style=STATE_STYLES[s.state]), Text(s.detail))
    console.print(table)

    uptime = ", ".join(f"{label} {'no data' if v is None else f'{v:.2f} %'}" for label, v in status.uptime.items())
    console.print(Text(f"uptime of the site: {uptime}"))
    if status.incidents:
        incidents = Table(title=f"incidents, last {INCIDENT_DAYS} days (newest first)")
        for col in ("start (UTC)", "end (UTC)", "duration"):
            incidents.add_column(col)
        for i in status.incidents[:10]:
            incidents.add_row(_utc(i.start), "ongoing" if i.end is None else _utc(i.end),
                              format_duration(i.duration_seconds))
        console.print(incidents)
        if len(status.incidents) > 10:
            console.print(Text(f"... and {len(status.incidents) - 10} older", style="dim"))
    else:
        console.print(Text(f"no incidents in the last {INCIDENT_DAYS} days"))

    if status.alerts:
        alerts = Table(title="firing alerts")
        for col in ("alert", "severity", "host", "summary"):
            alerts.add_column(col)
        for a in status.alerts:
            style = "bold red" if a.severity == "critical" else "yellow" if a.severity == "warning" else ""
            alerts.add_row(Text(a.name), Text(a.severity, style=style), Text(a.host), Text(a.summary))
        console.print(alerts)
    else:
        console.print(Text("no alerts firing"))
    for note in status.notes:
        console.print(Text(f"note: {note}", style="yellow"))
    console.print(Text(f"generated at {_utc(status.generated_at)} in {status.generation_seconds * 1000:.0f} ms",
                       style="dim"))


def write_page(status: Status, path: str | Path) -> None:
    """Write the HTML page atomically (a reader never sees half a page), mode 0644."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(render_html(status))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
