#!/usr/bin/env python3
"""The chaos suite, measured: every scenario of tests/support/chaos.py, N times.

Each run injects one fault under continuous writes (4 clients POSTing through
the floating IP), lets the stack return and settle, then counts acknowledged
writes, the ones lost on either master, the seconds with two writable
masters, and the write outage at the fault and at the return (how each is
measured: tests/support/chaos.py). Prints every run as a table, then the
median and the worst per scenario; --json writes every run's full result. A
run during which the lab host itself stalled says so (chaos.HostSampler).

    .venv/bin/python scripts/measure_chaos.py --runs 3 [--only writer_power_cut,lb_power_cut] [--json out.json]

Run as root on a lab that is up (HASTACK_LAB_DIR names it).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab import Lab  # noqa: E402
from tests.support import chaos  # noqa: E402

COLUMNS = [("scenario", 28, "{}"), ("run", 3, "{}"), ("acked", 6, "{}"), ("lost", 5, "{}"),
           ("two_writers_s", 9, "{:.2f}"), ("outage_fault_s", 9, "{:.2f}"), ("outage_return_s", 9, "{:.2f}"),
           ("stall_return_s", 9, "{:.2f}"), ("failed", 6, "{}"), ("goals", 0, "{}")]
HEAD = ["scenario", "run", "acked", "lost", "2 writers", "out@fault", "out@return", "stall@ret", "failed",
        "goals missed"]


def row(values: list[str]) -> str:
    # not strict: an error row is shorter than COLUMNS (its error sits in the "failed" column)
    return "  ".join(str(v).ljust(w) if i == 0 or w == 0 else str(v).rjust(w)
                     for i, (v, (_, w, _)) in enumerate(zip(values, COLUMNS, strict=False)))


def cells(r: dict) -> list[str]:
    if "error" in r:
        return [r["scenario"], r["run"], "-", "-", "-", "-", "-", "-", "error: " + r["error"][:90]]
    out = [fmt.format(r[key]) for key, _, fmt in COLUMNS[:-1]]
    missed = chaos.goals(r)
    extra = f" (cql: {r['cql_failed']} failed, {r['cql_lost']} lost of {r['cql_requests']})" if "cql_requests" in r else ""
    if r.get("host", {}).get("stalled"):  # the lab host's own stall: the test suite runs such a scenario again
        extra += f" [the lab host {chaos.describe_host(r['host'])}]"
    return out + [("; ".join(missed) or "none") + extra]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated scenario names (default: all, in order)")
    p.add_argument("--json", help="write every run's result here")
    a = p.parse_args()
    names = [n.strip() for n in a.only.split(",") if n.strip()] or list(chaos.SCENARIOS)
    unknown = [n for n in names if n not in chaos.SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios {unknown}; known: {', '.join(chaos.SCENARIOS)}")
    lab = Lab("lab", log=lambda m: None)
    # stopped with SIGTERM: unwind, so the running scenario stops its writers and the samplers
    # inside the masters, and heals its cuts
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    results: list[dict] = []
    print(row(HEAD), flush=True)
    t0 = time.monotonic()
    for n in range(1, a.runs + 1):
        for name in names:
            try:
                r = chaos.SCENARIOS[name](lab)
            except Exception as e:  # noqa: BLE001 - a run that could not complete is a result too
                r = {"scenario": name, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:],
                     "partial": json.loads(json.dumps(chaos.LAST_RUN, default=str))}
            r["run"] = n
            results.append(r)
            print(row(cells(r)), flush=True)
            if a.json:  # written as it goes: a long measurement interrupted keeps what it has
                Path(a.json).write_text(json.dumps(results, indent=1, default=str))

    print(f"\n{len(results)} runs in {time.monotonic() - t0:.0f} s; median / worst per scenario")
    print(row(["scenario", "n", "acked", "lost", "2 writers", "out@fault", "out@return", "stall@ret", "failed",
               "goals missed in"]))
    for name in names:
        done = [r for r in results if r["scenario"] == name and "error" not in r]
        errors = sum(1 for r in results if r["scenario"] == name and "error" in r)
        if not done:
            print(row([name, 0, "-", "-", "-", "-", "-", "-", "-", f"{errors} errors"]))
            continue

        # this scenario's runs bound as a default: mw is for this iteration only
        def mw(key, fmt="{:.2f}", worst=max, done=done):
            values = [r[key] for r in done]
            return f"{fmt.format(statistics.median(values))}/{fmt.format(worst(values))}"

        missing = sum(1 for r in done if chaos.goals(r))
        stalled = sum(1 for r in done if r.get("host", {}).get("stalled"))
        print(row([name, len(done), mw("acked", "{:.0f}", min), mw("lost", "{:.0f}"), mw("two_writers_s"),
                   mw("outage_fault_s"), mw("outage_return_s"), mw("stall_return_s"), mw("failed", "{:.0f}"),
                   f"{missing} of {len(done)} runs" + (f", {errors} errors" if errors else "")
                   + (f"; the host stalled in {stalled}" if stalled else "")]))
    return 0 if all("error" not in r and not chaos.goals(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
