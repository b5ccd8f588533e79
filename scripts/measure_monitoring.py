#!/usr/bin/env python3
"""Monitoring on the lab: how fast each fault's alert is delivered, what Prometheus costs,
and how long the status page takes to generate.

Each fault (an app server, a Cassandra node, the Redis primary, the MariaDB writer's
machine, the active load balancer) is injected alone, its alert awaited at the lab's
receiver (fault to notification delivered), then recovered and its resolution awaited.
Prints every run, the median and the worst; then Prometheus's memory and disk use on the
monitoring host and the status page's generation time (median of 5). Run as root on a lab
that is up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab import Lab, services  # noqa: E402
from roles.monitoring import uptime  # noqa: E402
from tests.support import monitoring as mon  # noqa: E402


def one_fault(lab, name: str) -> dict:
    mon.quiet(lab)
    fault = mon.faults(lab)[name]
    t0 = time.time()
    fault.inject()
    alert = mon.wait_delivered(lab, t0, fault.alert, fault.expected_host, "firing", 300)
    fault.recover()
    t1 = time.time()
    resolved = mon.wait_delivered(lab, t1 - 1, fault.alert, fault.expected_host, "resolved", 300)
    return {"detect_s": round(alert["received_at"] - t0, 1), "resolve_s": round(resolved["received_at"] - t1, 1)}


def prometheus_cost(lab) -> dict:
    host = mon.monitoring_host(lab)
    rss = float(mon.prom(lab, 'process_resident_memory_bytes{job="prometheus"}')[0]["value"][1])
    du = lab.exec(host, ["du", "-sb", "/var/lib/prometheus/metrics2"]).stdout.split()[0]
    series = float(mon.prom(lab, "prometheus_tsdb_head_series")[0]["value"][1])
    return {"rss_mb": round(rss / 2**20, 1), "disk_mb": round(int(du) / 2**20, 1), "head_series": int(series)}


def page_times(lab, runs: int = 5) -> list[float]:
    interval = uptime.duration_seconds(lab.topo.resolved_settings("monitoring")["monitoring_site_probe_interval"])
    times = []
    for _ in range(runs):
        result = uptime.generate_page("lab", services.uptime_url(lab.addr), interval, services.status_dir(lab.paths))
        times.append(round(result.generation_seconds, 2))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lab = Lab("lab", log=lambda m: None)

    names = list(mon.faults(lab))
    results = {name: [one_fault(lab, name) for _ in range(args.runs)] for name in names}
    cost = prometheus_cost(lab)
    pages = page_times(lab)
    if args.json:
        print(json.dumps({"faults": results, "prometheus": cost, "status_page_s": pages}, indent=2))
        return
    for name, runs in results.items():
        detect = [r["detect_s"] for r in runs]
        resolve = [r["resolve_s"] for r in runs]
        print(f"{name}: alert delivered median {statistics.median(detect):.1f} s, worst {max(detect):.1f} s "
              f"(runs {detect}); resolved after recovery median {statistics.median(resolve):.1f} s")
    print(f"Prometheus: {cost['rss_mb']} MB resident, {cost['disk_mb']} MB on disk, {cost['head_series']} series")
    print(f"status page generation: median {statistics.median(pages):.2f} s (runs {pages})")


if __name__ == "__main__":
    main()
