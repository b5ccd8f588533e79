#!/usr/bin/env python3
"""Why each lab machine has a disk of its own: creating files right after many were removed.

`hastack lab down` removes every machine's files (hundreds of thousands), and the next `lab up` unpacks
packages on a dozen machines at once. On an ext4 file system without a journal (as this build machine's
may be), the kernel skips every inode freed in the last minutes when it allocates one, so each new file
costs a scan of the recently removed ones. This creates --files files, then --removed files, removes
them, and creates --files again, twice (on the host, files removed there in the last minutes by
anything else, such as a `lab down` or the run before, slow the first creation too):

  host:  in a directory of the host's file system (--dir, default .lab);
  disk:  on a new ext4 file system with a journal in a sparse file, as a lab machine's disk.

Prints the seconds of each step (medians of --runs). Run as root (it mounts the disk).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab.machine import mount_disk  # noqa: E402


def create(directory: Path, count: int) -> float:
    directory.mkdir(parents=True)
    started = time.monotonic()
    for i in range(count):
        sub = directory / str(i // 1000)
        if i % 1000 == 0:
            sub.mkdir()
        (sub / str(i)).write_bytes(b"x")
    return time.monotonic() - started


def after_removal(where: Path, files: int, removed: int) -> tuple[float, float]:
    """(seconds to create ``files`` files, the same after ``removed`` files were created and removed)."""
    fresh = create(where / "fresh", files)
    create(where / "removed", removed)
    shutil.rmtree(where / "removed")
    after = create(where / "after", files)
    shutil.rmtree(where / "fresh")
    shutil.rmtree(where / "after")
    return fresh, after


def on_host(base: Path, files: int, removed: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(dir=base, prefix="file-creation-") as d:
        return after_removal(Path(d), files, removed)


def on_disk(base: Path, files: int, removed: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(dir=base, prefix="file-creation-") as d:
        mount = Path(d) / "disk"
        mount_disk(Path(d) / "disk.img", mount)  # as a lab machine's
        try:
            return after_removal(mount, files, removed)
        finally:
            subprocess.run(["umount", str(mount)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=Path(".lab"))
    parser.add_argument("--files", type=int, default=30_000)
    parser.add_argument("--removed", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the disk is mounted")
    for label, way in (("host file system", on_host), ("a machine's disk", on_disk)):
        runs = [way(args.dir, args.files, args.removed) for _ in range(args.runs)]
        fresh = statistics.median(r[0] for r in runs)
        after = statistics.median(r[1] for r in runs)
        print(f"{label:<18} {args.files} files: {fresh:6.2f} s first, {after:6.2f} s right after {args.removed} "
              f"were removed (medians of {args.runs})")


if __name__ == "__main__":
    main()
