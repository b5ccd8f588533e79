"""The Cassandra bundle: Cassandra's jars from Maven Central, checksums pinned in the repo.

Cassandra is in neither Debian nor PyPI. Apache publishes it to Maven Central
(``org.apache.cassandra:cassandra-all`` and its runtime dependencies), so the
operator's machine resolves it once with Maven and packs it:

    cassandra-<version>/SHA256SUMS                 sha256 of every jar, `sha256sum -c` format
    cassandra-<version>/lib/*.jar                  Cassandra and its runtime dependencies
    cassandra-<version>/agents/jmx_prometheus_javaagent-<v>.jar

Every jar's checksum is pinned in ``roles/cassandra/bundle.lock`` (written once
with ``--lock`` and committed): a build whose jars differ fails, naming the jar.
The tarball is cached (``.lab/cache/cassandra/`` by default); a second build
with a matching tarball in place does nothing.

The layout mirrors Apache's binary tarball (``apache-cassandra-<v>/lib/*.jar``),
so the install script below takes either: it checks the archive's sha256,
unpacks it into ``/opt/cassandra-<version>`` and, when the archive carries a
SHA256SUMS manifest, checks every jar against it too.

Usage: python -m roles.cassandra.bundle [--lock] [--cache DIR]
"""

from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CASSANDRA_VERSION = "5.0.9"
JMX_EXPORTER_VERSION = "1.0.1"
JMX_EXPORTER_ARTIFACT = "jmx_prometheus_javaagent"
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
LOCK_PATH = Path(__file__).resolve().parent / "bundle.lock"
DEFAULT_CACHE = ROOT / ".lab" / "cache" / "cassandra"
MANIFEST = "SHA256SUMS"
JAR_DIRS = ("lib", "agents")


class BundleError(RuntimeError):
    pass


def agent_jar(agent_version: str = JMX_EXPORTER_VERSION) -> str:
    return f"{JMX_EXPORTER_ARTIFACT}-{agent_version}.jar"


def bundle_name(version: str = CASSANDRA_VERSION) -> str:
    return f"cassandra-{version}-bundle.tar.gz"


def pom(version: str = CASSANDRA_VERSION, agent_version: str = JMX_EXPORTER_VERSION) -> str:
    """A pom whose two executions copy Cassandra's runtime jars to lib/ and the agent alone to agents/."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>hastack</groupId>
  <artifactId>cassandra-bundle</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>io.prometheus.jmx</groupId>
      <artifactId>{JMX_EXPORTER_ARTIFACT}</artifactId>
      <version>{agent_version}</version>
      <!-- a self-contained agent jar: nothing of it belongs on Cassandra's classpath -->
      <exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>{DEPENDENCY_PLUGIN_VERSION}</version>
        <executions>
          <execution>
            <id>lib</id>
            <configuration>
              <includeScope>runtime</includeScope>
              <excludeArtifactIds>{JMX_EXPORTER_ARTIFACT}</excludeArtifactIds>
              <outputDirectory>${{project.basedir}}/lib</outputDirectory>
            </configuration>
          </execution>
          <execution>
            <id>agents</id>
            <configuration>
              <includeArtifactIds>{JMX_EXPORTER_ARTIFACT}</includeArtifactIds>
              <outputDirectory>${{project.basedir}}/agents</outputDirectory>
            </configuration>
          </execution>
        </executions>
      </plugin>
    </plugins>
  </build>
</project>
"""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_sums(text: str) -> dict[str, str]:
    """`sha256  path` lines (sha256sum's format) -> {path: sha256}; # lines are comments."""
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name:
            raise BundleError(f"line {number}: not a `sha256  path` line: {line!r}")
        sums[name] = digest
    return sums


def format_sums(sums: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))


def compare(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Every difference, each naming the jar: changed, missing or unexpected."""
    problems = []
    for name in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(name), actual.get(name)
        if want == got:
            continue
        if got is None:
            problems.append(f"{name}: missing (expected sha256 {want})")
        elif want is None:
            problems.append(f"{name}: not in the lock (actual sha256 {got})")
        else:
            problems.append(f"{name}: sha256 mismatch, expected {want}, actual {got}")
    return problems


def jar_sums(root: Path) -> dict[str, str]:
    """sha256 of every jar under root's lib/ and agents/, keyed by relative path."""
    return {f"{d}/{p.name}": sha256_file(p) for d in JAR_DIRS if (root / d).is_dir()
            for p in sorted((root / d).glob("*.jar"))}


def verify_tree(root: Path) -> None:
    """An unpacked bundle against its manifest: every jar listed, matching, and no other jar
    (a stray jar in lib/ would land on Cassandra's classpath)."""
    manifest = Path(root) / MANIFEST
    if not manifest.exists():
        raise BundleError(f"{manifest}: no manifest")
    problems = compare(parse_sums(manifest.read_text()), jar_sums(Path(root)))
    if problems:
        raise BundleError(f"{root} does not match its {MANIFEST}:\n  " + "\n  ".join(problems))


def verify_command(root: str) -> str:
    """The same check in shell, for hosts: sha256sum -c, then no jar beyond the manifest."""
    r = shlex.quote(root)
    return (f"cd {r} && sha256sum --check --strict --quiet {MANIFEST} && "
            f"test \"$(ls lib/*.jar agents/*.jar 2>/dev/null | sort)\" = \"$(cut -c67- {MANIFEST} | sort)\"")


def read_lock(lock_path: Path = LOCK_PATH) -> dict[str, str]:
    if not lock_path.exists():
        raise BundleError(f"{lock_path}: no lock file; create it once with "
                          f"`python -m roles.cassandra.bundle --lock` and commit it")
    return parse_sums(lock_path.read_text())


def _tar_manifest(archive: Path) -> dict[str, str] | None:
    """The manifest inside a bundle (its first member, so this reads little of the file)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.next()
            if member is None or Path(member.name).name != MANIFEST:
                return None
            return parse_sums(tar.extractfile(member).read().decode())
    except (tarfile.TarError, OSError, EOFError, BundleError):
        return None


def _cached(archive: Path, lock: dict[str, str]) -> bool:
    checksum = archive.with_name(archive.name + ".sha256")
    if not (archive.exists() and checksum.exists()):
        return False
    if checksum.read_text().split()[0] != sha256_file(archive):
        return False
    return _tar_manifest(archive) == lock


def _run_maven(workdir: Path, mvn: str) -> None:
    for d in JAR_DIRS:
        shutil.rmtree(workdir / d, ignore_errors=True)
    cmd = [mvn, "-B", "-q", "-f", str(workdir / "pom.xml"),
           "dependency:copy-dependencies@lib", "dependency:copy-dependencies@agents"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True)
    except FileNotFoundError:
        raise BundleError(f"{mvn}: not found; the bundle is built with Maven (Debian package `maven`)") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
        raise BundleError(f"Maven failed to resolve the Cassandra bundle ({' '.join(cmd)}):\n{tail}")


def _write_tarball(archive: Path, top: str, workdir: Path, sums: dict[str, str]) -> None:
    """Deterministic: sorted members, fixed owner and times; the manifest first."""
    def add(tar: tarfile.TarFile, name: str, data: bytes | None, mode: int) -> None:
        info = tarfile.TarInfo(f"{top}/{name}" if name else top)
        info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, 0, "root", "root"
        if data is None:
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    fd, tmp = tempfile.mkstemp(dir=archive.parent, prefix=".bundle-")
    try:
        # gzip's header carries a time too: fixed, so the same jars give the same tarball
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w") as tar:
            add(tar, MANIFEST, format_sums(sums).encode(), 0o644)
            add(tar, "", None, 0o755)
            for d in JAR_DIRS:
                add(tar, d, None, 0o755)
            for name in sorted(sums):
                add(tar, name, (workdir / name).read_bytes(), 0o644)
        os.chmod(tmp, 0o644)  # served to the hosts; nothing secret in it
        os.replace(tmp, archive)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    archive.with_name(archive.name + ".sha256").write_text(f"{sha256_file(archive)}  {archive.name}\n")


def build(cache_dir: Path = DEFAULT_CACHE, lock_path: Path = LOCK_PATH, version: str = CASSANDRA_VERSION,
          agent_version: str = JMX_EXPORTER_VERSION, write_lock: bool = False, mvn: str = "mvn") -> Path:
    """The bundle tarball, built unless a matching one is cached. With write_lock the jars'
    checksums become the new lock; otherwise they must match it."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # one build at a time per cache (two commands at once would run Maven in the same directory); the
    # second finds the first's tarball
    with (cache_dir / ".build.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        return _build(cache_dir, lock_path, version, agent_version, write_lock, mvn)


def _build(cache_dir: Path, lock_path: Path, version: str, agent_version: str, write_lock: bool, mvn: str) -> Path:
    archive = cache_dir / bundle_name(version)
    lock = None if write_lock else read_lock(lock_path)
    if lock is not None and _cached(archive, lock):
        return archive

    workdir = cache_dir / f"build-{version}"
    workdir.mkdir(exist_ok=True)
    (workdir / "pom.xml").write_text(pom(version, agent_version))
    _run_maven(workdir, mvn)
    sums = jar_sums(workdir)
    if f"lib/cassandra-all-{version}.jar" not in sums or f"agents/{agent_jar(agent_version)}" not in sums:
        raise BundleError(f"Maven left no cassandra-all {version} or {agent_jar(agent_version)} in {workdir}")
    if write_lock:
        lock_path.write_text(f"# Cassandra {version} with the Prometheus JMX exporter agent {agent_version}:\n"
                             f"# sha256 of every jar in the bundle (python -m roles.cassandra.bundle --lock)\n"
                             + format_sums(sums))
    else:
        problems = compare(lock, sums)
        if problems:
            raise BundleError(f"the jars Maven resolved differ from {lock_path}:\n  " + "\n  ".join(problems))
    _write_tarball(archive, f"cassandra-{version}", workdir, sums)
    return archive


def install_script(archive: str, sha256: str, version: str, prefix: str = "/opt") -> str:
    """Shell that installs a bundle or Apache's binary tarball (same layout: <top>/lib/*.jar).

    Verifies the archive's sha256, unpacks it into <prefix>/cassandra-<version> (a fresh
    directory per version, so no jar of another version stays on the classpath), checks the
    jars against the manifest when there is one, then points <prefix>/cassandra at it.
    Idempotent: an installed version is left alone, only the link is set."""
    staging_path = f"{prefix}/.cassandra-{version}.new"
    a, dest = shlex.quote(archive), shlex.quote(f"{prefix}/cassandra-{version}")
    link, staging = shlex.quote(f"{prefix}/cassandra"), shlex.quote(staging_path)
    return f"""set -eu
if [ ! -e {dest}/.installed ]; then
  echo '{sha256}  '{a} | sha256sum --check --strict --quiet -
  rm -rf {staging} && mkdir -p {staging}
  tar -xzf {a} -C {staging} --strip-components=1 --no-same-owner
  if [ -e {staging}/{MANIFEST} ]; then ( {verify_command(staging_path)} ); fi
  chmod -R a+rX,go-w {staging}
  touch {staging}/.installed
  rm -rf {dest} && mv {staging} {dest}
fi
ln -sfn {dest} {link}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m roles.cassandra.bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lock", action="store_true", help=f"write the jars' checksums to {LOCK_PATH.name}")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the bundle is built and kept")
    parser.add_argument("--version", default=CASSANDRA_VERSION)
    args = parser.parse_args(argv)
    try:
        archive = build(args.cache, version=args.version, write_lock=args.lock)
    except BundleError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{archive} ({archive.stat().st_size // (1 << 20)} MiB, sha256 {sha256_file(archive)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
