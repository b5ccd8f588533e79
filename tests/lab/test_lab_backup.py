"""Backups on the lab: every kind lands in the lab's S3, encrypted, from put-only identities,
and binlog shipping goes on through a MariaDB writer failover."""

import json
import subprocess
import time

import boto3
import pytest
from botocore.exceptions import ClientError

from roles.backup.cli import list_backups, reader_client
from tests.support import mariadb_pair
from tests.support.lab import wait_for

KINDS = ("mariadb-full", "mariadb-binlog", "cassandra-snapshot", "redis-rdb")


def backup_now(lab, kind=None):
    cmd = [".venv/bin/hastack", "backup", "now", "--stack", lab.stack] + (["--kind", kind] if kind else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def listed(lab, kind=None):
    proc = subprocess.run([".venv/bin/hastack", "backup", "list", "--stack", lab.stack, "--json"]
                          + (["--kind", kind] if kind else []), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def writer_client(lab, host):
    """The S3 client a data host has: its own writer identity from its root-only configuration."""
    cfg = json.loads(lab.exec(host, ["cat", "/etc/hastack/backup.json"], check=True).stdout)
    return boto3.client("s3", region_name=cfg["region"], endpoint_url=cfg["endpoint"], verify=str(lab.ca.cert_path),
                        aws_access_key_id=cfg["access_key_id"],
                        aws_secret_access_key=cfg["secret_access_key"]), cfg


def refused(call):
    with pytest.raises(ClientError) as err:
        call()
    return err.value.response["Error"]["Code"]


@pytest.fixture(scope="module")
def backed_up(lab):
    mariadb_pair.settled(lab)
    backup_now(lab)
    return listed(lab)


def test_backup_now_puts_every_kind_in_the_bucket(lab, backed_up):
    topo = lab.topo
    by_kind = {k: [b for b in backed_up if b["kind"] == k] for k in KINDS}
    assert {b["host"] for b in by_kind["cassandra-snapshot"]} == {h.name for h in topo.hosts_with_role("cassandra")}
    assert {b["host"] for b in by_kind["mariadb-full"]} == {h.name for h in topo.hosts_with_role("mariadb")}
    assert by_kind["mariadb-binlog"], "no binlog shipped"
    # the Redis primary takes the RDB, the replica has the same data
    assert [b["host"] for b in by_kind["redis-rdb"]] == [topo.cluster("redis").primary]
    assert all(b["size"] > 0 and b["key"].endswith(".age") for b in backed_up)
    assert [b["time"] for b in backed_up] == sorted((b["time"] for b in backed_up), reverse=True)


def test_the_writer_can_neither_read_nor_delete_nor_list_nor_reconfigure(lab, backed_up):
    db1, db2 = (h.name for h in lab.topo.hosts_with_role("mariadb"))
    s3, cfg = writer_client(lab, db1)
    bucket = cfg["bucket"]
    own = next(b["key"] for b in backed_up if b["host"] == db1)
    other = next(b["key"] for b in backed_up if b["host"] == db2)
    assert refused(lambda: s3.get_object(Bucket=bucket, Key=own)) == "AccessDenied"
    assert refused(lambda: s3.delete_object(Bucket=bucket, Key=own)) == "AccessDenied"
    versions = reader_client(lab.stack_outputs()).list_object_versions(Bucket=bucket, Prefix=own)["Versions"]
    assert refused(lambda: s3.delete_object(Bucket=bucket, Key=own, VersionId=versions[0]["VersionId"])) == "AccessDenied"
    assert refused(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=cfg["prefix"])) == "AccessDenied"
    assert refused(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=other.rsplit("/", 2)[0] + "/")) == "AccessDenied"
    assert refused(lambda: s3.put_object(Bucket=bucket, Key=other + ".overwrite", Body=b"x")) == "AccessDenied"
    assert refused(lambda: s3.delete_bucket_policy(Bucket=bucket)) == "AccessDenied"
    assert refused(lambda: s3.put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})) == "AccessDenied"
    # what it may do: put into its own prefix
    s3.put_object(Bucket=bucket, Key=f"{cfg['prefix']}probe/writer-can-put", Body=b"x", ServerSideEncryption="aws:kms")


def test_a_backup_is_unreadable_without_the_age_key(lab, backed_up, tmp_path):
    outputs = lab.stack_outputs()
    s3 = reader_client(outputs)
    key = next(b["key"] for b in backed_up if b["kind"] == "redis-rdb")
    stored = s3.get_object(Bucket=outputs["backupBucket"], Key=key)["Body"].read()  # the reader may download it
    assert stored.startswith(b"age-encryption.org/v1") and b"REDIS" not in stored
    stranger = tmp_path / "stranger.key"
    subprocess.run(["age-keygen", "-o", str(stranger)], check=True, capture_output=True)
    wrong = subprocess.run(["age", "-d", "-i", str(stranger)], input=stored, capture_output=True)
    assert wrong.returncode != 0 and b"no identity matched" in wrong.stderr
    # the operator's key opens it: a Redis RDB inside
    right = subprocess.run(["age", "-d", "-i", str(lab.paths.secrets / "backup-age.key")], input=stored,
                           capture_output=True, check=True).stdout
    assert subprocess.run(["zstd", "-dc"], input=right, capture_output=True, check=True).stdout.startswith(b"REDIS")


def test_binlog_shipping_goes_on_through_a_writer_failover(lab):
    """The newest binlog in the bucket is never older than 2 minutes while the writer dies and returns."""
    outputs = lab.stack_outputs()
    s3, bucket = reader_client(outputs), outputs["backupBucket"]

    def newest_binlog_age():
        newest = None
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if "/mariadb-binlog/" in obj["Key"] and obj["Key"].endswith(".manifest.json"):
                    newest = max(newest or obj["LastModified"], obj["LastModified"])
        return time.time() - newest.timestamp() if newest else None

    writer = mariadb_pair.settled(lab)
    stream = mariadb_pair.write_stream(lab, seconds=150, interval=0.2)
    ages = []
    t0 = time.monotonic()
    stopped = started = False
    while time.monotonic() - t0 < 150:
        ages.append(newest_binlog_age())
        if not stopped and time.monotonic() - t0 > 30:
            lab.stop(writer, hard=True)
            stopped = True
        if stopped and not started and time.monotonic() - t0 > 80:
            lab.start(writer)
            started = True
        time.sleep(5)
    records = mariadb_pair.probe.records(stream, timeout=120)
    assert sum(r["ok"] for r in records) > 100
    assert None not in ages and max(ages) < 120, ages
    # the returned master ships again
    wait_for(lambda: any(b["host"] == writer and b["time"] > time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 60))
                         for b in list_backups(outputs) if b["kind"] == "mariadb-binlog"), 120,
             f"{writer} to ship binlogs again after its return")
    mariadb_pair.settled(lab)
