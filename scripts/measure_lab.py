#!/usr/bin/env python3
"""Measure the lab: cold `lab up`, warm re-converge (no changes), and a floor.

cold:   from no machines (lab down) to every machine booted and converged;
        the base image and the apt cache are kept, as on a second day.
        --from-scratch also removes the base image and the apt cache.
        --compare-in-step alternates each cold run with one whose operations run in
        pyinfra's own way (each on all its hosts before the next, not each host at its
        own pace: hastack.host_runs; the Cassandra ring then forms only after every
        host's operations), and prints both.
warm:   a converge over the unchanged lab (must report zero changes), phase by phase (facts: until
        the last host's answers are in, its operations prepared as each host's arrive); this
        process's CPU; the facts it took from one command per host (hastack.fact_cache) and
        those it asked one by one.
floor:  the least a converge can cost: connect to every host over SSH and
        gather one trivial fact (the hostname), with the same pyinfra setup.
machine's CPU: the CPU time this machine's cores were busy (/proc/stat: the operator, every lab
        machine, the lab's services, the kernel) during each cold lab up and warm converge, and
        in 10 s of the idle lab before the warm runs; busy / cores is the least time that work
        takes on these cores, however it is spread.

Prints each figure's runs, median, minimum and maximum. Run as root.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.launch import cooperative  # noqa: E402

cooperative()  # every host at once, as the hastack program does

from pyinfra.api import Config, State  # noqa: E402
from pyinfra.api.connect import connect_all, disconnect_all  # noqa: E402
from pyinfra.facts.server import Hostname  # noqa: E402

from pyinfra.api.operations import run_ops  # noqa: E402

import hastack.converge  # noqa: E402
from hastack.converge import converge  # noqa: E402
from hastack.inventory import make_inventory  # noqa: E402
from hastack.lab import Lab  # noqa: E402


def floor(entries) -> float:
    t = time.monotonic()
    state = State(make_inventory(entries), Config(PARALLEL=len(entries), CONNECT_TIMEOUT=20))
    connect_all(state)
    names = {h.name: h.get_fact(Hostname) for h in state.inventory}
    disconnect_all(state)
    if not all(names.values()):
        raise RuntimeError(f"a host told no host name: {names}")
    return time.monotonic() - t


IDLE_SECONDS = 10


def machine_busy() -> float:
    """CPU seconds this machine's cores have been busy since boot (all but idle and I/O wait)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def show(label: str, runs: list[float]) -> None:
    if not runs:
        return
    print(f"{label:<28} median {statistics.median(runs):7.2f} s   min {min(runs):7.2f}   max {max(runs):7.2f}   "
          f"runs {', '.join(f'{r:.2f}' for r in runs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold-runs", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5, help="warm converge and floor runs")
    parser.add_argument("--from-scratch", action="store_true")

    parser.add_argument("--compare-in-step", action="store_true",
                        help="alternate each cold run with one in pyinfra's own way, operation by operation")
    args = parser.parse_args()

    lab = Lab("lab", log=lambda m: None)
    cold, phases, cold_busy = [], [], []
    in_step, in_step_phases = [], []
    host_by_host = hastack.converge.run_each_host
    # in step, no host's run ends before the others': every step after the roles waits for all hosts
    in_step_way = lambda state, when_done=None: run_ops(state)  # noqa: E731
    ways = [(host_by_host, cold, phases)] + ([(in_step_way, in_step, in_step_phases)] if args.compare_in_step else [])
    for i in range(args.cold_runs):
        for run_way, times, timings in ways:
            lab.down()
            if args.from_scratch and i == 0 and run_way is host_by_host:
                shutil.rmtree(lab.paths.base, ignore_errors=True)
                lab.paths.base_marker.unlink(missing_ok=True)
                shutil.rmtree(lab.paths.apt_cache, ignore_errors=True)
            hastack.converge.run_each_host = run_way
            try:
                t, busy = time.monotonic(), machine_busy()
                result = lab.up(converge=True)
                times.append(time.monotonic() - t)
                cold_busy.append(machine_busy() - busy)
            finally:
                hastack.converge.run_each_host = host_by_host
            timings.append(result["timings"])
            if run_way is host_by_host:
                slowest = result["converge"].slowest
            if not result["converge"].ok:
                raise RuntimeError("cold converge failed")

    warm, floors, served, asked, warm_phases, warm_cpu, warm_busy = [], [], [], [], [], [], []
    entries = lab.inventory_entries()
    idle_busy = machine_busy()
    time.sleep(IDLE_SECONDS if args.runs else 0)
    idle_busy = (machine_busy() - idle_busy) / IDLE_SECONDS
    for _ in range(args.runs):
        busy = machine_busy()
        report = converge(entries)
        warm_busy.append(machine_busy() - busy)
        if not (report.ok and report.changes == 0):
            raise RuntimeError(f"warm converge failed or changed {report.changes} operations")
        warm.append(report.seconds)
        warm_phases.append(report.phases)
        warm_cpu.append(report.cpu)
        served.append(sum(r.facts_served for r in report.hosts.values()))
        asked.append(sum(r.facts_asked for r in report.hosts.values()))
        floors.append(floor(entries))

    print(f"lab: {len(lab.machines)} machines, {len(lab.machines)} hosts converged in parallel")
    for label, times, timings in (("cold lab up", cold, phases), ("cold lab up, in step", in_step, in_step_phases)):
        if not times:
            continue
        show(label, times)
        for key in ("image", "network", "boot", "apt", "converge", "converge: connect", "converge: facts",
                    "converge: prepare", "converge: run", "converge: after roles", "converge: after roles, ahead"):
            show(f"  of which {key}", [p[key] for p in timings if key in p])
    cores = os.cpu_count()
    if cold:
        show("  the machine's CPU busy", cold_busy)
        least = statistics.median(cold_busy) / cores
        print(f"  on {cores} cores: at least {least:.0f} s for that work, {least / statistics.median(cold):.0%} "
              "of the lab up's time")
    if phases:
        print("  slowest operations of the last cold converge: "
              + "; ".join(f"{name} {seconds:.0f} s" for name, seconds in slowest))
    if in_step:
        runs_each = [statistics.median(p["converge: run"] for p in t) for t in (phases, in_step_phases)]
        print(f"host by host / in step (medians): {statistics.median(cold) / statistics.median(in_step):.2f}x "
              f"the cold lab up, {runs_each[0] / runs_each[1]:.2f}x its operations")
    if not args.runs:
        return
    show("warm re-converge (0 changes)", warm)
    for key in ("connect", "facts", "prepare", "run", "after roles"):
        show(f"  of which {key}", [p[key] for p in warm_phases if key in p])
    show("  the operator's CPU", [sum(c.values()) for c in warm_cpu])
    for key in ("facts", "run"):
        show(f"    of which {key}", [c[key] for c in warm_cpu if key in c])
    show("  the machine's CPU busy", warm_busy)
    print(f"    on {cores} cores, at least {statistics.median(warm_busy) / cores:.2f} s for that work; the idle lab "
          f"alone keeps them busy {idle_busy:.2f} CPU-s a second")
    show("floor (1 fact per host)", floors)
    print(f"facts while preparing (all hosts, last run): {served[-1]} from one command per host, "
          f"{asked[-1]} asked one by one")
    print(f"warm / floor (medians): {statistics.median(warm) / statistics.median(floors):.1f}x")


if __name__ == "__main__":
    main()
