"""Running host commands, and checking the host can run a lab at all."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

# command -> Debian package that provides it
REQUIRED_COMMANDS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "mount": "mount",
    "apt-cacher-ng": "apt-cacher-ng",
    "ssh-keygen": "openssh-client",
    "nft": "nftables",
}

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


class LabError(RuntimeError):
    pass


def run(*cmd: str, check: bool = True, input: str | None = None, timeout: float | None = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
    return proc


def ok(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


def preflight() -> None:
    """Fail with what is missing: root, capabilities, commands."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the lab needs root (it creates network namespaces, bridges, overlay mounts and "
                        "systemd-nspawn machines); run it as root")
    else:
        caps = _effective_caps()
        for cap, name in ((CAP_SYS_ADMIN, "CAP_SYS_ADMIN (mounts, namespaces)"), (CAP_NET_ADMIN, "CAP_NET_ADMIN (bridges)")):
            if not caps & (1 << cap):
                problems.append(f"missing capability {name}")
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    missing = sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd, path=search) is None})
    if missing:
        problems.append(f"missing packages: {' '.join(missing)} (`make lab-deps` installs them)")
    if problems:
        raise LabError("cannot run the lab here:\n  - " + "\n  - ".join(problems))


def _effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    # a zombie is not alive
    return stat.exists() and stat.read_text().split(") ", 1)[1][:1] != "Z"


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
