"""The Cassandra bundle (lock, cache, install script) and the role's pure configuration.

Maven is replaced by a small script that writes jars, so these run in a second;
tests/templates/test_cassandra_templates.py builds the real bundle and runs it."""

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

from roles.cassandra import bundle as cb
from hastack.stackfile import load_stack
from roles.cassandra.config import heap_size, template_vars

FAKE_MVN = """#!/bin/sh
# stands in for Maven: writes the jars the pom would resolve (-f POM: arguments 3 and 4)
base=$(dirname "$4")
mkdir -p "$base/lib" "$base/agents"
printf 'cassandra' > "$base/lib/cassandra-all-5.0.9.jar"
printf "${FAKE_GUAVA:-guava}" > "$base/lib/guava-32.0.1-jre.jar"
printf 'agent' > "$base/agents/jmx_prometheus_javaagent-1.0.1.jar"
echo run >> "$base/../mvn-runs"
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def fake_mvn(tmp_path):
    mvn = tmp_path / "mvn"
    mvn.write_text(FAKE_MVN)
    mvn.chmod(0o755)
    return str(mvn)


def runs(cache: Path) -> int:
    path = cache / "mvn-runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_lock_then_cached_build_does_not_run_maven(tmp_path, fake_mvn):
    cache, lock = tmp_path / "cache", tmp_path / "bundle.lock"
    first = cb.build(cache, lock, write_lock=True, mvn=fake_mvn)
    assert cb.parse_sums(lock.read_text()) == {
        "lib/cassandra-all-5.0.9.jar": sha("cassandra"), "lib/guava-32.0.1-jre.jar": sha("guava"),
        "agents/jmx_prometheus_javaagent-1.0.1.jar": sha("agent")}
    assert cb.build(cache, lock, mvn=fake_mvn) == first and runs(cache) == 1
    with tarfile.open(first) as tar:
        names = tar.getnames()
    assert names[0] == "cassandra-5.0.9/SHA256SUMS" and "cassandra-5.0.9/lib/guava-32.0.1-jre.jar" in names

    first.write_bytes(first.read_bytes()[:-10])  # a truncated tarball is rebuilt
    cb.build(cache, lock, mvn=fake_mvn)
    assert runs(cache) == 2


def test_a_changed_jar_fails_naming_jar_expected_and_actual(tmp_path, fake_mvn, monkeypatch):
    cache, lock = tmp_path / "cache", tmp_path / "bundle.lock"
    cb.build(cache, lock, write_lock=True, mvn=fake_mvn)
    (cache / cb.bundle_name()).unlink()
    monkeypatch.setenv("FAKE_GUAVA", "tampered")
    with pytest.raises(cb.BundleError) as e:
        cb.build(cache, lock, mvn=fake_mvn)
    assert (f"lib/guava-32.0.1-jre.jar: sha256 mismatch, expected {sha('guava')}, actual {sha('tampered')}"
            in str(e.value))
    assert not (cache / cb.bundle_name()).exists()


def test_compare_names_missing_and_unlocked_jars():
    problems = cb.compare({"lib/a.jar": "1" * 64}, {"lib/b.jar": "2" * 64})
    assert problems == [f"lib/a.jar: missing (expected sha256 {'1' * 64})",
                        f"lib/b.jar: not in the lock (actual sha256 {'2' * 64})"]


def test_no_lock_is_a_clear_error(tmp_path, fake_mvn):
    with pytest.raises(cb.BundleError, match="no lock file.*--lock"):
        cb.build(tmp_path / "cache", tmp_path / "missing.lock", mvn=fake_mvn)


def test_the_committed_lock_pins_the_bundle_version():
    sums = cb.read_lock()
    assert f"lib/cassandra-all-{cb.CASSANDRA_VERSION}.jar" in sums
    assert f"agents/{cb.agent_jar()}" in sums
    assert all(name.startswith(("lib/", "agents/")) and name.endswith(".jar") for name in sums)


def _tarball(path: Path, top: str, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return cb.sha256_file(path)


def _install(archive: Path, digest: str, prefix: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", cb.install_script(str(archive), digest, "5.0.9", str(prefix))],
                          capture_output=True, text=True)


def test_install_script_takes_the_bundle_and_refuses_a_tampered_jar(tmp_path):
    jars = {"lib/cassandra-all-5.0.9.jar": b"c", "agents/jmx_prometheus_javaagent-1.0.1.jar": b"a"}
    manifest = cb.format_sums({n: hashlib.sha256(d).hexdigest() for n, d in jars.items()}).encode()
    good = tmp_path / "good.tar.gz"
    digest = _tarball(good, "cassandra-5.0.9", {"SHA256SUMS": manifest, **jars})
    result = _install(good, digest, tmp_path / "opt")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "opt" / "cassandra").resolve() == tmp_path / "opt" / "cassandra-5.0.9"
    cb.verify_tree(tmp_path / "opt" / "cassandra")
    assert _install(good, digest, tmp_path / "opt").returncode == 0  # installed: left alone

    bad = tmp_path / "bad.tar.gz"
    bad_digest = _tarball(bad, "cassandra-5.0.9", {"SHA256SUMS": manifest, **jars, "lib/cassandra-all-5.0.9.jar": b"x"})
    result = _install(bad, bad_digest, tmp_path / "other")
    assert result.returncode != 0 and "lib/cassandra-all-5.0.9.jar: FAILED" in result.stdout + result.stderr
    assert not (tmp_path / "other" / "cassandra-5.0.9").exists()

    assert _install(good, "0" * 64, tmp_path / "third").returncode != 0  # the archive's own checksum


def test_install_script_takes_apaches_binary_tarball_layout(tmp_path):
    official = tmp_path / "apache-cassandra-5.0.9-bin.tar.gz"
    digest = _tarball(official, "apache-cassandra-5.0.9", {
        "lib/cassandra-all-5.0.9.jar": b"c", "bin/cassandra": b"#!/bin/sh\n", "conf/cassandra.yaml": b""})
    result = _install(official, digest, tmp_path / "opt")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "opt" / "cassandra" / "lib" / "cassandra-all-5.0.9.jar").read_bytes() == b"c"


def test_verify_tree_refuses_a_stray_jar(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.jar").write_bytes(b"a")
    (tmp_path / "SHA256SUMS").write_text(cb.format_sums({"lib/a.jar": cb.sha256_file(tmp_path / "lib" / "a.jar")}))
    cb.verify_tree(tmp_path)
    (tmp_path / "lib" / "old-1.0.jar").write_bytes(b"o")
    with pytest.raises(cb.BundleError, match="lib/old-1.0.jar: not in the lock"):
        cb.verify_tree(tmp_path)
    assert subprocess.run(["sh", "-c", cb.verify_command(str(tmp_path))]).returncode != 0


@pytest.mark.parametrize("mem_mb, heap", [
    (1024, 512),       # half of a small machine
    (2048, 1024),      # cx22 (4 GB) and below: 1 GiB at most from the first term
    (4096, 1024),
    (8192, 2048),      # a quarter above 4 GiB
    (16384, 4096),     # cx42
    (65536, 8192),     # capped at 8 GiB
])
def test_heap_follows_cassandras_rule(mem_mb, heap):
    assert heap_size(mem_mb) == heap


def test_heap_override_and_its_bounds():
    assert heap_size(16384, 6000) == 6000
    with pytest.raises(ValueError, match="below the machine"):
        heap_size(4096, 4096)
    with pytest.raises(ValueError):
        heap_size(0)


@pytest.mark.parametrize("stack", ["prod", "staging", "dr"])
def test_seeds_come_from_the_topology_and_are_never_every_node(stack):
    topo = load_stack(stack)
    nodes = [topo.host(n.host) for n in topo.cluster("cassandra").nodes]
    ring = {h.private_ip for h in nodes}
    for host in nodes:
        v = template_vars(topo.host_data(host), mem_mb=8192, jmx_password="x")
        assert v["listen_address"] == host.private_ip
        assert 1 <= len(v["seeds"]) < len(ring) and set(v["seeds"]) <= ring
        assert v["replication_factor"] == topo.cluster("cassandra").replication_factor
        rack = next(n.rack for n in topo.cluster("cassandra").nodes if n.host == host.name)
        assert v["rack"] == rack and v["datacenter"] == topo.cluster("cassandra").datacenter


def test_template_vars_refuse_missing_facts():
    data = {"private_ip": "10.0.0.5", "cassandra_seeds": [], "cassandra_replication_factor": 3}
    with pytest.raises(ValueError, match="no seeds"):
        template_vars(data, 4096, "pw")
    with pytest.raises(ValueError, match="no JMX password"):
        template_vars({**data, "cassandra_seeds": ["10.0.0.4"]}, 4096, "")
