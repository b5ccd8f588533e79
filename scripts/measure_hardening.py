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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab import Lab  # noqa: E402
from hastack.lab.lynis import CONTAINER_ONLY, audit_each_role  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help="lynis as it comes (no lab profile)")
    args = parser.parse_args()
    lab = Lab()
    skip = () if args.plain else CONTAINER_ONLY
    results = audit_each_role(lab, skip)
    print(f"lynis hardening index per role ({'as it comes' if args.plain else 'skipping ' + ', '.join(skip)})")
    for role in sorted(results):
        name, r = results[role]
        print(f"  {role:<13} {name:<11} index {r.index:>3}   warnings {', '.join(r.warnings) or '-'}")
    every = sorted(set.intersection(*(set(r.suggestions) for _name, r in results.values())))
    print(f"suggested on every machine ({len(every)}): {', '.join(every)}")
    for role in sorted(results):
        own = sorted(set(results[role][1].suggestions) - set(every))
        if own:
            print(f"  only on {role}: {', '.join(own)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
