"""lynis's hardening index on a lab machine, and what it still warns of and suggests.

Two ways to run it: lynis as it comes, or with the tests a lab machine cannot pass skipped: a container
shares the host's kernel, so it cannot set kernel or network sysctls (/proc/sys is read-only there:
KRNL-6000), run its own audit daemon (one per kernel: ACCT-9628), has no kernel image of its own
(KRNL-5788) and no partitions (FILE-6310). On a cloud server the sysctls pass (the base role's sysctl
file).
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

CONTAINER_ONLY = ("KRNL-6000", "ACCT-9628", "KRNL-5788", "FILE-6310")
PROFILE = "/root/hastack-lynis.prf"  # not in /etc, where the integrity check would count it
# What lynis still suggests on a converged host, each accepted for its reason (the README says more).
ACCEPTED = {
    "DEB-0280": "libpam-tmpdir: a per-user TMPDIR breaks the converge's uploads under sudo",
    "DEB-0810": "apt-listbugs asks bugs.debian.org at every install",
    "DEB-0811": "apt-listchanges reads every changelog before each install, on every host",
    "PKGS-7394": "apt-show-versions re-reads the package lists after each update; the node exporter counts "
                 "pending upgrades",
    "DEB-0880": "fail2ban: SSH answers adminCidrs only",
    "SSH-7408": "port 22 (open to adminCidrs only) and MaxSessions 2 (a converge opens several channels)",
    "BOOT-5264": "advice to review every unit with systemd-analyze security, given on every systemd host",
    "AUTH-9284": "the admins' passwords are locked on purpose: they log in with keys only",
    "NAME-4028": "hosts are named from the topology in /etc/hosts, without a DNS domain",
    "LOGG-2154": "lynis counts a syslog daemon's remote logging; the journal is shipped by systemd-journal-upload",
    "ACCT-9626": "sysstat: the node exporter records the same",
    "TOOL-5002": "the converge runs from the operator's machine (pyinfra over SSH), no agent on the host",
    "HRDN-7230": "no signature scanner: the daily integrity check (AIDE, debsums) finds changed files",
    "LOGG-2190": "MariaDB's temporary files, opened then removed by design",
    "DBS-1884": "Redis: ACL users with the default user off, not requirepass",
    "DBS-1886": "Redis: Sentinel needs CONFIG inside its failover; ACLs keep it from the clients",
    "DBS-1888": "Redis: bound to the loopback and the private address (the app servers connect over it)",
}
MINIMUM_INDEX = 80
_FINDING = re.compile(r"^\s+([!*]) (.*?) \[([A-Z]+-\d+)\]\s*$", re.M)


@dataclass(frozen=True)
class Audit:
    index: int
    warnings: tuple[str, ...]     # test IDs
    suggestions: tuple[str, ...]  # test IDs


def audit(lab, name: str, skip: tuple[str, ...] = CONTAINER_ONLY) -> Audit:
    """Installs lynis (Debian's, through the lab's package cache) on `name` and runs `lynis audit system`."""
    install = lab.exec(name, ["sh", "-c", "command -v lynis >/dev/null || DEBIAN_FRONTEND=noninteractive "
                                          "apt-get install -y -qq --no-install-recommends lynis"])
    if install.returncode:
        raise RuntimeError(f"{name}: could not install lynis: {install.stderr.strip()[-300:]}")
    lab.exec(name, ["sh", "-c", f"cat > {PROFILE}"], input="".join(f"skip-test={t}\n" for t in skip), check=True)
    out = lab.exec(name, ["lynis", "audit", "system", "--quick", "--no-colors", "--profile", PROFILE]).stdout
    index = re.search(r"Hardening index : (\d+)", out)
    if not index:
        raise RuntimeError(f"{name}: lynis printed no hardening index:\n{out[-1500:]}")
    found = _FINDING.findall(out)
    return Audit(int(index.group(1)), tuple(sorted({t for k, _, t in found if k == "!"})),
                 tuple(sorted({t for k, _, t in found if k == "*"})))


def audit_each_role(lab, skip: tuple[str, ...] = CONTAINER_ONLY) -> dict[str, tuple[str, Audit]]:
    """role -> (its first machine, lynis's audit of it), the machines audited at once."""
    firsts = {h.role: h.name for h in reversed(lab.topo.hosts)}
    with ThreadPoolExecutor(max_workers=len(firsts)) as pool:
        audits = pool.map(lambda name: audit(lab, name, skip), firsts.values())
        return {role: (name, a) for (role, name), a in zip(firsts.items(), audits, strict=True)}
