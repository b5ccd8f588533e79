#!/usr/bin/env python3
"""RTO and RPO of a disaster on the lab, over several drills (`hastack dr drill`).

Each drill: marker rows and every backup, writes through the floating IP every
200 ms, then every data machine (both MariaDB masters, every Cassandra node, both
Redis hosts) destroyed with its disk, rebuilt empty, converged, restored from the
bucket and verified. RTO: disaster to the first acknowledged write once every data
store is back and verified. RPO: age at the disaster of the newest acknowledged
write that was recovered. Prints every run, the median and the worst, and the
median time of each phase (rebuild, converge, download, restore, verify).
Goals: RTO <= 15 min on a 2-core machine, RPO <= 60 s, lost 0.
Run as root on a lab that is up; --json for one object with every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab import Lab  # noqa: E402
from roles.backup.dr import run_drill  # noqa: E402

RTO_GOAL_S, RPO_GOAL_S = 900, 60


def summary(runs: list[dict]) -> dict:
    rto = [r["rto_s"] for r in runs]
    rpo = [r["rpo_s"] for r in runs]
    phases = {p: statistics.median(r["phases"][p] for r in runs) for p in runs[0]["phases"]}
    return {
        "runs": len(runs),
        "rto_s": {"median": statistics.median(rto), "worst": max(rto), "each": rto},
        "rpo_s": {"median": statistics.median(rpo), "worst": max(rpo), "each": rpo},
        "lost": [r["lost"] for r in runs],
        "verified": [r["verified"] for r in runs],
        "phase_median_s": phases,
        "goals_met": max(rto) <= RTO_GOAL_S and max(rpo) <= RPO_GOAL_S and not any(r["lost"] for r in runs)
                     and all(r["verified"] for r in runs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--stack", default="lab")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    lab = Lab(args.stack)
    runs = []
    for i in range(args.runs):
        result = run_drill(lab, log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        runs.append(result)
        print(f"run {i + 1}: RTO {result['rto_s']} s, RPO {result['rpo_s']} s, acknowledged before "
              f"{result['acknowledged_before']}, recovered {result['recovered']}, lost {result['lost']}, "
              f"verified {result['verified']}; phases {result['phases']}", file=sys.stderr, flush=True)
    s = summary(runs)
    if args.json:
        print(json.dumps({"summary": s, "runs": runs}, indent=1))
    else:
        print(f"RTO median {s['rto_s']['median']:.0f} s, worst {s['rto_s']['worst']:.0f} s (goal {RTO_GOAL_S} s); "
              f"RPO median {s['rpo_s']['median']:.1f} s, worst {s['rpo_s']['worst']:.1f} s (goal {RPO_GOAL_S} s); "
              f"lost {s['lost']}; verified {s['verified']}")
        print("phase medians (s): " + ", ".join(f"{k} {v:.0f}" for k, v in s["phase_median_s"].items()))
    return 0 if s["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
