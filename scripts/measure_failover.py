#!/usr/bin/env python3
"""Client-visible outage on the lab when a load balancer or an app server dies.

A client in the internet namespace requests https://<floating IP>/ every
100 ms. Each run kills a machine like a power cut (the active load balancer,
or one app server), waits, then starts it again and lets things settle.
Outage = from the last success before the first failure to the next success.
Prints every run, the median and the worst. Run as root on a lab that is up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab import Lab  # noqa: E402
from tests.support.failover import kill_under_load, settle  # noqa: E402


def run_once(lab, victim, seconds=12):
    """One kill of ``victim`` under the client's load; it is started again afterwards."""
    _, result = kill_under_load(lab, victim, seconds=seconds)
    lab.start(victim)
    return result


def show(label, results):
    outages = [r["outage_s"] for r in results]
    failed = [r["failed"] for r in results]
    print(f"{label}: outage median {statistics.median(outages):.2f} s, worst {max(outages):.2f} s "
          f"(runs: {', '.join(f'{o:.2f}' for o in outages)}); failed requests per run: {failed}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    lab = Lab("lab", log=lambda m: None)

    lb_results = []
    for _ in range(args.runs):
        master = settle(lab, timeout=60, owned=False)
        lb_results.append(run_once(lab, master))
        time.sleep(3)
    settle(lab, timeout=60, owned=False)

    app_results = []
    apps = [h.name for h in lab.topo.hosts_with_role("app")]
    for i in range(args.runs):
        app_results.append(run_once(lab, apps[i % len(apps)], seconds=8))
        time.sleep(5)  # back in rotation (rise 3 x 500 ms) before the next run

    show("active load balancer dies", lb_results)
    show("one app server dies", app_results)


if __name__ == "__main__":
    main()
