#!/usr/bin/env python3
"""Secret rotation on the lab under load: how long `hastack rotate WHAT` takes,
and the requests that failed or were lost meanwhile.

Four clients in the internet namespace write through the floating IP (the
chaos suite's load: a POST every 100 ms each, every acknowledged write then
looked for on both MariaDB masters). Each run rotates WHAT (seed, ca, all, ...)
from the command line, as an operator would; the stack ends each run on new
secrets, so runs follow one another without a reset.

Run as root on a lab that is up. Prints every run, then medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab import Lab  # noqa: E402
from tests.support import chaos  # noqa: E402


def one_run(lab, what: str) -> dict:
    with chaos.Run(lab, f"rotate-{what}") as run:
        run.fault()
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "hastack.cli", "rotate", what, "--stack", "lab"],
                              capture_output=True, text=True, timeout=3600)
        took = time.monotonic() - started
        run.back()
    if proc.returncode != 0:
        raise SystemExit(f"`hastack rotate {what}` failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    r = run.result
    return {"seconds": round(took, 1), "requests": r["requests"], "failed": r["failed"], "lost": r["lost"],
            "errors": r["errors"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", nargs="?", default="ca", help="seed, ca, backup-keys, failover-token or all")
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    lab = Lab("lab", log=lambda m: None)
    runs = []
    for i in range(a.runs):
        runs.append(one_run(lab, a.what))
        print(f"run {i + 1}: " + json.dumps(runs[-1]), flush=True)
    print(json.dumps({"what": a.what, "runs": len(runs),
                      "median_seconds": statistics.median(r["seconds"] for r in runs),
                      "failed": [r["failed"] for r in runs], "lost": [r["lost"] for r in runs],
                      "requests": [r["requests"] for r in runs]}))
    return 0 if all(r["failed"] == 0 and r["lost"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
