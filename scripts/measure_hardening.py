#!/usr/bin/env python3
"""lynis's hardening index on the first lab machine of every role, and what it still suggests.

Installs lynis (from Debian, through the lab's package cache) on each machine, runs
`lynis audit system --quick` and prints, per role, the index and the suggestions left. Run it on a
converged lab (`hastack lab up`), as root.

Two indexes per machine: lynis as it comes, and with the tests a lab machine cannot pass skipped
(the default; `--plain` for lynis as it comes): a container shares the host's kernel, so it cannot set kernel or
network sysctls (/proc/sys is read-only there: KRNL-6000), run its own audit daemon (one per kernel:
ACCT-9628), has no kernel image of its own (KRNL-5788) and no partitions (FILE-6310). On a cloud
server the sysctls pass (the base role's sysctl file); the base role installs no audit daemon yet (the lab
could not test one: its machines share the host's kernel).
"""

from __future__ import annotations

import argparse
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab import Lab  # noqa: E402

CONTAINER_ONLY = ["KRNL-6000", "ACCT-9628", "KRNL-5788", "FILE-6310"]
PROFILE = "/etc/lynis/hastack-lab.prf"


def audit(lab: Lab, name: str, skip: list[str]) -> dict:
    install = lab.exec(name, ["sh", "-c", "command -v lynis >/dev/null || DEBIAN_FRONTEND=noninteractive "
                                          "apt-get install -y -qq --no-install-recommends lynis"])
    if install.returncode:
        raise RuntimeError(f"{name}: could not install lynis: {install.stderr.strip()[-300:]}")
    profile = "".join(f"skip-test={test}\n" for test in skip)
    lab.exec(name, ["sh", "-c", f"cat > {PROFILE}"], input=profile, check=True)
    out = lab.exec(name, ["lynis", "audit", "system", "--quick", "--no-colors", "--profile", PROFILE]).stdout
    index = re.search(r"Hardening index : (\d+)", out)
    if not index:
        raise RuntimeError(f"{name}: lynis printed no hardening index:\n{out[-1500:]}")
    found = re.findall(r"^\s+([!*]) (.*?) \[([A-Z]+-\d+)\]\s*$", out, re.M)
    return {"index": int(index.group(1)), "warnings": sorted({t for k, _, t in found if k == "!"}),
            "suggestions": sorted({t for k, _, t in found if k == "*"})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plain", action="store_true", help="lynis as it comes (no lab profile)")
    args = parser.parse_args()
    lab = Lab()
    firsts = {h.role: h.name for h in reversed(lab.topo.hosts)}  # the first host of each role
    skip = [] if args.plain else CONTAINER_ONLY
    with ThreadPoolExecutor(len(firsts)) as pool:
        results = dict(zip(firsts, pool.map(lambda n: audit(lab, n, skip), firsts.values()), strict=True))
    print(f"lynis hardening index per role ({'as it comes' if args.plain else 'skipping ' + ', '.join(skip)})")
    for role in sorted(results):
        r = results[role]
        print(f"  {role:<13} {firsts[role]:<11} index {r['index']:>3}   warnings {', '.join(r['warnings']) or '-'}")
    every = sorted(set.intersection(*(set(r["suggestions"]) for r in results.values())))
    print(f"suggested on every machine ({len(every)}): {', '.join(every)}")
    for role in sorted(results):
        own = sorted(set(results[role]["suggestions"]) - set(every))
        if own:
            print(f"  only on {role}: {', '.join(own)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
