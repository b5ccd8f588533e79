"""The shared Debian 12 base image, built once with debootstrap."""

from __future__ import annotations

import shutil
from pathlib import Path

from hastack.lab.layout import BASE_PACKAGES, DEBIAN_MIRROR, DEBIAN_SUITE, Paths
from hastack.lab.system import run

# What the marker records: a change rebuilds the image.
RECIPE = f"{BASE_PACKAGES} upgraded from {DEBIAN_SUITE}-updates and {DEBIAN_SUITE}-security"

SOURCES = f"""\
deb {DEBIAN_MIRROR} {DEBIAN_SUITE} main
deb {DEBIAN_MIRROR} {DEBIAN_SUITE}-updates main
deb {DEBIAN_MIRROR}-security {DEBIAN_SUITE}-security main
"""

# What the lab's "cloud" image adds to Debian's cloud-init defaults: the
# NoCloud seed the lab writes, no network rendering (the lab sets addresses
# from outside), the built-in C.UTF-8 locale (minbase generates no others),
# and host keys kept (the lab records them as known hosts).
CLOUD_CFG = """\
datasource_list: [NoCloud, None]
locale: C.UTF-8
network: {config: disabled}
ssh_deletekeys: false
ssh_genkeytypes: []
"""


def is_built(paths: Paths) -> bool:
    return paths.base_marker.exists() and paths.base_marker.read_text().strip() == RECIPE


def build(paths: Paths, log=print) -> None:
    """debootstrap into base.tmp, finish it, then move it into place (a crash leaves no half image)."""
    if is_built(paths):
        return
    tmp = paths.root / "base.tmp"
    paths.root.mkdir(parents=True, exist_ok=True)
    if not (tmp / ".debootstrap-done").exists():
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"building the Debian 12 base image with debootstrap (about 2 minutes, once) into {tmp}")
        run("debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", DEBIAN_SUITE, str(tmp), DEBIAN_MIRROR,
            timeout=1800)
        (tmp / ".debootstrap-done").touch()
    finish(tmp)
    (tmp / ".debootstrap-done").unlink()
    shutil.rmtree(paths.base, ignore_errors=True)
    tmp.rename(paths.base)
    paths.base_marker.write_text(RECIPE + "\n")


def finish(root: Path) -> None:
    """Make the image a template: no identity of its own, the lab's cloud-init settings, and the updates
    published since the release (as a cloud's current image has them: machines do not each upgrade)."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every machine gets its own host keys
    (root / "etc/machine-id").write_text("")
    (root / "etc/apt/sources.list").write_text(SOURCES)
    (root / "etc/cloud/cloud.cfg.d/90-hastack-lab.cfg").write_text(CLOUD_CFG)
    _upgrade(root)
    run("chroot", str(root), "apt-get", "clean")


def _upgrade(root: Path) -> None:
    """apt-get upgrade in the image; its maintainer scripts start no service (policy-rc.d 101: not here)."""
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        run("chroot", str(root), "apt-get", "update", "-q", timeout=600)
        run("chroot", str(root), "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "upgrade", "-y", "-q",
            "-o", "Dpkg::Options::=--force-confold", timeout=1200)
    finally:
        policy.unlink()
