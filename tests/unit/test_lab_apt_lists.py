"""The lab fetches the package lists on one machine and copies them to the others, stamp included, so
that no machine's converge fetches them again (apt.packages with cache_time reads the stamp)."""

import os

from hastack.lab.layout import Addresses, Paths, lab_topology
from hastack.lab.machine import APT_STAMP, Machine

LISTS = "var/lib/apt/lists"
CACHE = "var/cache/apt"


def _machines(tmp_path):
    paths = Paths(tmp_path)
    topo = lab_topology("lab", paths)
    addr = Addresses(topo)
    first, second = (Machine(paths, addr, h) for h in topo.hosts[:2])
    return first, second


def test_the_lists_the_stamp_and_the_caches_arrive_with_their_times(tmp_path):
    fetched, other = _machines(tmp_path)
    for root in (fetched.root, other.root):
        (root / LISTS / "partial").mkdir(parents=True)
        (root / CACHE).mkdir(parents=True)
    old = other.root / LISTS / "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages"
    old.write_text("as the image was built\n")
    files = {
        LISTS + "/deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages": "Package: fresh\n",
        LISTS + "/deb.debian.org_debian_dists_bookworm_InRelease": "signed\n",
        CACHE + "/pkgcache.bin": "cache",
        CACHE + "/srcpkgcache.bin": "source cache",
        APT_STAMP.lstrip("/"): "",
    }
    for rel, text in files.items():
        path = fetched.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.utime(path, (1_700_000_000, 1_700_000_000))
    (fetched.root / LISTS / "lock").write_text("")

    other.take_apt_lists_from(fetched)

    for rel, text in files.items():
        copied = other.root / rel
        assert copied.read_text() == text, rel
        assert copied.stat().st_mtime == 1_700_000_000, rel  # apt and pyinfra read these times
    assert not (other.root / LISTS / "lock").exists()
    assert other.apt_lists_fresh() is False  # a stamp from 2023 is not fresh: the times are the fetch's
    os.utime(other.root / APT_STAMP.lstrip("/"))
    assert other.apt_lists_fresh() is True
