#!/usr/bin/env python3
"""How a converge's cost grows with the number of hosts: the base role on 12, 24 and 48 lab machines.

The lab's topology with more app servers (lab-app1..N), every machine given the
base role alone (users, SSH, firewall, time, journald, node exporter, ...: no
heavy service), grown one size after the other. At each size: the first
converge of the new machines (installs the base role), then warm converges
that change nothing, side by side with the floor (one SSH connection and one
fact per host) as scripts/measure_lab.py measures it, and the CPU time the
operator's process spent on each (on real machines the hosts' own work runs
on their own CPUs; here every machine shares this host's cores, so the wall
time grows with the machines' total work).

Prints, per size, the medians and the cost per host. Removes the lab's machines
before and after (`hastack lab up` brings the usual lab back). Run as root.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.launch import cooperative  # noqa: E402

cooperative()  # every host at once, as the hastack program does

from hastack.converge import converge  # noqa: E402
from hastack.lab import Lab  # noqa: E402
from hastack.lab.layout import lab_topology  # noqa: E402
from measure_lab import floor, show  # noqa: E402

OTHER_MACHINES = 10  # the lab's machines that are not app servers


def _cpu_seconds() -> float:
    """This process's CPU time (the operator's side of a converge; the machines' own is the host's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def base_only(lab: Lab) -> dict[str, dict]:
    return {name: {**data, "roles": ["base"]} for name, data in lab.inventory_entries().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="12,24,48", help="machine counts, ascending (at least 12)")
    parser.add_argument("--runs", type=int, default=5, help="warm converges and floors per size")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes) or sizes[0] < OTHER_MACHINES + 2:
        parser.error(f"--sizes: ascending machine counts of at least {OTHER_MACHINES + 2}, e.g. 12,24,48")

    Lab("lab", log=lambda m: None).down()
    rows = []
    try:
        for n in sizes:
            lab = Lab("lab", topo=lab_topology("lab", counts={"app": n - OTHER_MACHINES}), log=lambda m: None)
            t = time.monotonic()
            timings = lab.up(converge=False)["timings"]
            boot = time.monotonic() - t
            entries = base_only(lab)
            first = converge(entries, after_roles=False)
            if not first.ok:
                raise RuntimeError(first.failure())
            warm, floors, cpu = [], [], []
            for _ in range(args.runs):
                before = _cpu_seconds()
                report = converge(entries, after_roles=False)
                cpu.append(_cpu_seconds() - before)
                if not (report.ok and report.changes == 0):
                    raise RuntimeError(f"{n} machines: a warm converge failed or changed {report.changes}")
                warm.append(report.seconds)
                floors.append(floor(entries))
            print(f"\n{n} machines (base role only)")
            show("  boot (new machines)", [timings["boot"]])
            show("  up without converge", [boot])
            show("  first converge", [first.seconds])
            show("  warm converge (0 changes)", warm)
            show("  floor (1 fact per host)", floors)
            show("  operator CPU per converge", cpu)
            rows.append((n, statistics.median(warm), statistics.median(floors), statistics.median(cpu)))
            sys.stdout.flush()
    finally:
        Lab("lab", topo=lab_topology("lab", counts={"app": sizes[-1] - OTHER_MACHINES}), log=lambda m: None).down()

    print(f"\n{'machines':>8} {'warm s':>8} {'floor s':>8} {'warm/floor':>10} {'warm s per host':>16} "
          f"{'operator CPU s per host':>24}")
    for n, w, f, c in rows:
        print(f"{n:>8} {w:>8.2f} {f:>8.2f} {w / f:>10.1f} {w / n:>16.3f} {c / n:>24.3f}")
    if len(rows) > 1:
        (n0, w0, _, _), (n1, w1, _, _) = rows[0], rows[-1]
        print(f"from {n0} to {n1} machines ({n1 / n0:.0f}x): warm converge {w1 / w0:.2f}x "
              f"(linear would be {n1 / n0:.0f}x)")


if __name__ == "__main__":
    main()
