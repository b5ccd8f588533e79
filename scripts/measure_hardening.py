#!/usr/bin/env python3
"""lynis's hardening index on the first lab machine of every role, and what it still suggests.

Installs lynis (from Debian, through the lab's package cache) on each machine, runs
`lynis audit system --quick` and prints, per role, the index and the suggestions left. Run it on a
converged lab (`hastack lab up`), as root.

Two indexes per machine: lynis as it comes (`--plain`), and with the tests a lab machine cannot pass
skipped (the default; hastack/lab/lynis.py says which and why).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab import Lab  # noqa: E402
from hastack.lab.lynis import CONTAINER_ONLY, audit  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help="lynis as it comes (no lab profile)")
    args = parser.parse_args()
    lab = Lab()
    firsts = {h.role: h.name for h in reversed(lab.topo.hosts)}  # the first host of each role
    skip = () if args.plain else CONTAINER_ONLY
    with ThreadPoolExecutor(len(firsts)) as pool:
        results = dict(zip(firsts, pool.map(lambda n: audit(lab, n, skip), firsts.values()), strict=True))
    print(f"lynis hardening index per role ({'as it comes' if args.plain else 'skipping ' + ', '.join(skip)})")
    for role in sorted(results):
        r = results[role]
        print(f"  {role:<13} {firsts[role]:<11} index {r.index:>3}   warnings {', '.join(r.warnings) or '-'}")
    every = sorted(set.intersection(*(set(r.suggestions) for r in results.values())))
    print(f"suggested on every machine ({len(every)}): {', '.join(every)}")
    for role in sorted(results):
        own = sorted(set(results[role].suggestions) - set(every))
        if own:
            print(f"  only on {role}: {', '.join(own)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
