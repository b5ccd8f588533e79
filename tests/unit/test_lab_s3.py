"""The lab's S3 (moto's server), started and set up as `hastack lab up` does it, but on
127.0.0.1 and a free port in a temporary directory: what it enforces, proved with boto3.

Only what moto really enforces is asserted here; what it does not (policy conditions,
KMS permissions, retention changes by the writer, ...) is listed in the README and
never claimed by a test.
"""

import datetime
import io
import json
import socket

import pytest
import requests
from botocore.exceptions import ClientError

from hastack.cloud.aws_backup import (backup_hosts, break_glass_trust_policy, bucket_policy, key_policy,
                                      reader_policy, writer_policy)
from hastack.lab import s3
from hastack.lab.layout import Paths
from hastack.pki import CertificateAuthority
from hastack.stackfile import load_stack

STACK = "prod"
HOST, OTHER = "prod-db1", "prod-cass2"
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running, set-up lab S3 and its credentials; stopped afterwards."""
    root = tmp_path_factory.mktemp("lab")
    paths = Paths(root)
    cert = CertificateAuthority.own(root / "pki", "test").issue("s3", dns=["localhost"], ips=["127.0.0.1"])
    port = free_port()
    logs = []
    creds = s3.ensure(paths, load_stack(STACK), "127.0.0.1", port, cert, log=logs.append)
    yield {"paths": paths, "creds": creds, "cert": cert, "port": port, "logs": logs}
    s3.stop(paths)


@pytest.fixture(scope="module")
def creds(lab):
    return lab["creds"]


@pytest.fixture(scope="module")
def admin(creds):
    return s3.client_for(creds, "admin")


@pytest.fixture(scope="module")
def writer(creds):
    return s3.client_for(creds, "writer", HOST)


@pytest.fixture(scope="module")
def reader(creds):
    return s3.client_for(creds, "reader")


@pytest.fixture(scope="module")
def bucket(creds):
    return creds["bucket"]


@pytest.fixture(scope="module")
def written(writer, bucket):
    """One backup the writer put into its own prefix: (key, version id)."""
    key = f"backups/{HOST}/mariadb/2026-01-01.xb.age"
    answer = writer.put_object(Bucket=bucket, Key=key, Body=b"encrypted backup bytes")
    return key, answer["VersionId"]


def refused(call, code: str, status: int = 403) -> None:
    with pytest.raises(ClientError) as err:
        call()
    assert err.value.response["Error"]["Code"] == code, err.value.response
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == status


# ------------------------------------------------------------------ set up like production


def test_credentials_file_is_private_and_complete(lab, creds):
    path = s3.credentials_path(lab["paths"])
    assert path.stat().st_mode & 0o777 == 0o600
    saved = json.loads(path.read_text())
    assert saved == creds
    assert sorted(saved["writers"]) == sorted(backup_hosts(load_stack(STACK)))
    assert saved["endpoint"] == f"https://127.0.0.1:{lab['port']}" and saved["region"] == "eu-central-1"
    keys = [saved["admin"], saved["reader"], *saved["writers"].values()]
    assert len({k["access_key_id"] for k in keys}) == len(keys)


def test_identities_carry_exactly_the_production_policies(creds, bucket):
    iam = s3.client_for(creds, "admin", service="iam")
    bucket_arn = f"arn:aws:s3:::{bucket}"
    for host in creds["writers"]:
        user = f"hastack-{STACK}-backup-{host}"
        doc = iam.get_user_policy(UserName=user, PolicyName="backup")["PolicyDocument"]
        assert doc == json.loads(writer_policy(bucket_arn, creds["key_arn"], f"backups/{host}/"))
        assert iam.list_user_policies(UserName=user)["PolicyNames"] == ["backup"]
        assert iam.list_attached_user_policies(UserName=user)["AttachedPolicies"] == []
    doc = iam.get_user_policy(UserName=f"hastack-{STACK}-restore-reader", PolicyName="restore")["PolicyDocument"]
    assert doc == json.loads(reader_policy(bucket_arn, creds["key_arn"], "backups/"))
    role = iam.get_role(RoleName=f"hastack-{STACK}-backup-break-glass")["Role"]
    assert role["AssumeRolePolicyDocument"] == json.loads(break_glass_trust_policy(s3.ACCOUNT_ID))
    kms = s3.client_for(creds, "admin", service="kms")
    policy = kms.get_key_policy(KeyId=creds["key_arn"], PolicyName="default")["Policy"]
    assert json.loads(policy) == json.loads(key_policy(s3.ACCOUNT_ID, role["Arn"]))


def test_bucket_is_versioned_locked_and_encrypted_by_default(admin, bucket, creds):
    assert admin.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    lock = admin.get_object_lock_configuration(Bucket=bucket)["ObjectLockConfiguration"]
    retention = load_stack(STACK).section("backup").retention_days
    assert lock["ObjectLockEnabled"] == "Enabled"
    assert {k: lock["Rule"]["DefaultRetention"][k] for k in ("Mode", "Days")} == {"Mode": "COMPLIANCE", "Days": retention}
    rule = admin.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": creds["key_arn"]}
    assert json.loads(admin.get_bucket_policy(Bucket=bucket)["Policy"]) == json.loads(
        s3.bucket_policy_for_moto(bucket_policy(f"arn:aws:s3:::{bucket}")))


def test_only_conditional_bucket_policy_statements_are_left_out_for_moto():
    full = json.loads(bucket_policy("arn:aws:s3:::b"))["Statement"]
    kept = json.loads(s3.bucket_policy_for_moto(bucket_policy("arn:aws:s3:::b")))["Statement"]
    assert kept == [s for s in full if "Condition" not in s] and [s["Sid"] for s in kept] == ["DenyBucketDeletion"]


# ------------------------------------------------------------------ the writer: put-only, own prefix


def test_writer_puts_into_its_own_prefix_encrypted_with_the_key(written, admin, bucket, creds):
    key, version = written
    head = admin.head_object(Bucket=bucket, Key=key, VersionId=version)
    assert head["ServerSideEncryption"] == "aws:kms" and head["SSEKMSKeyId"] == creds["key_arn"]
    assert head["ObjectLockMode"] == "COMPLIANCE"  # the bucket's default retention, not asked for by the writer
    days = load_stack(STACK).section("backup").retention_days
    left = head["ObjectLockRetainUntilDate"] - datetime.datetime.now(datetime.timezone.utc)
    assert datetime.timedelta(days=days - 1) < left <= datetime.timedelta(days=days)


def test_writer_multipart_upload_into_its_own_prefix(writer, admin, bucket):
    from boto3.s3.transfer import TransferConfig

    key = f"backups/{HOST}/cassandra/snapshot.tar.age"
    body = bytes(range(256)) * (6 * MIB // 256)  # two parts of 5 MiB and 1 MiB
    writer.upload_fileobj(io.BytesIO(body), bucket, key,
                          Config=TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB))
    head = admin.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == len(body) and head["ServerSideEncryption"] == "aws:kms"
    assert head["ETag"].strip('"').endswith("-2")  # it was a multipart upload


def test_writer_may_abort_its_own_multipart_upload(writer, bucket):
    key = f"backups/{HOST}/aborted"
    upload = writer.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    writer.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)
    assert writer.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)["ResponseMetadata"]["HTTPStatusCode"] == 204


def test_writer_cannot_read_list_or_delete(writer, bucket, written):
    key, version = written
    refused(lambda: writer.get_object(Bucket=bucket, Key=key), "AccessDenied")
    refused(lambda: writer.get_object(Bucket=bucket, Key=key, VersionId=version), "AccessDenied")
    refused(lambda: writer.delete_object(Bucket=bucket, Key=key), "AccessDenied")
    refused(lambda: writer.delete_object(Bucket=bucket, Key=key, VersionId=version), "AccessDenied")
    refused(lambda: writer.list_objects_v2(Bucket=bucket, Prefix=f"backups/{HOST}/"), "AccessDenied")
    refused(lambda: writer.list_objects(Bucket=bucket), "AccessDenied")
    refused(lambda: writer.list_object_versions(Bucket=bucket, Prefix=f"backups/{HOST}/"), "AccessDenied")


def test_writer_cannot_put_outside_its_prefix(writer, bucket):
    for key in (f"backups/{OTHER}/mariadb/x", "backups/x", f"backups/{HOST}", f"other/{HOST}/x", f"{HOST}/x"):
        refused(lambda key=key: writer.put_object(Bucket=bucket, Key=key, Body=b"x"), "AccessDenied")
    refused(lambda: writer.create_multipart_upload(Bucket=bucket, Key=f"backups/{OTHER}/x"), "AccessDenied")


def test_another_hosts_writer_cannot_touch_this_hosts_prefix(creds, bucket, written):
    other = s3.client_for(creds, "writer", OTHER)
    refused(lambda: other.put_object(Bucket=bucket, Key=f"backups/{HOST}/x", Body=b"x"), "AccessDenied")
    assert other.put_object(Bucket=bucket, Key=f"backups/{OTHER}/x", Body=b"x")["VersionId"]


def test_writer_cannot_reconfigure_the_bucket(writer, bucket):
    refused(lambda: writer.put_bucket_policy(Bucket=bucket, Policy=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:*",
                                                 "Resource": f"arn:aws:s3:::{bucket}/*"}]})), "AccessDenied")
    refused(lambda: writer.delete_bucket_policy(Bucket=bucket), "AccessDenied")
    refused(lambda: writer.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"}),
            "AccessDenied")
    refused(lambda: writer.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "x", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}}]}), "AccessDenied")
    refused(lambda: writer.delete_bucket(Bucket=bucket), "AccessDenied")


# ------------------------------------------------------------------ the reader: list and get, nothing else


def test_reader_lists_and_gets_every_version(reader, bucket, written):
    key, version = written
    listed = [o["Key"] for o in reader.list_objects_v2(Bucket=bucket, Prefix="backups/")["Contents"]]
    assert key in listed
    versions = reader.list_object_versions(Bucket=bucket, Prefix=key)["Versions"]
    assert version in [v["VersionId"] for v in versions]
    got = reader.get_object(Bucket=bucket, Key=key, VersionId=version)
    assert got["Body"].read() == b"encrypted backup bytes" and got["ServerSideEncryption"] == "aws:kms"


def test_reader_cannot_put_or_delete(reader, bucket, written):
    key, version = written
    refused(lambda: reader.put_object(Bucket=bucket, Key=key, Body=b"replaced"), "AccessDenied")
    refused(lambda: reader.put_object(Bucket=bucket, Key="backups/new", Body=b"x"), "AccessDenied")
    refused(lambda: reader.delete_object(Bucket=bucket, Key=key), "AccessDenied")
    refused(lambda: reader.delete_object(Bucket=bucket, Key=key, VersionId=version), "AccessDenied")
    refused(lambda: reader.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"}),
            "AccessDenied")


# ------------------------------------------------------------------ the lock and the keys


def test_compliance_lock_refuses_the_admin_deleting_a_locked_version(admin, bucket, written):
    key, version = written
    refused(lambda: admin.delete_object(Bucket=bucket, Key=key, VersionId=version), "AccessDenied")
    # a plain delete only hides it behind a delete marker; the locked version stays
    assert admin.delete_object(Bucket=bucket, Key=key)["DeleteMarker"] is True
    versions = admin.list_object_versions(Bucket=bucket, Prefix=key)
    assert version in [v["VersionId"] for v in versions["Versions"]]
    assert admin.get_object(Bucket=bucket, Key=key, VersionId=version)["Body"].read() == b"encrypted backup bytes"


def test_wrong_or_unknown_keys_are_refused(creds, bucket):
    wrong_secret = {**creds["writers"][HOST], "secret_access_key": "0" * 40}
    refused(lambda: s3._Clients(creds, wrong_secret)("s3").put_object(Bucket=bucket, Key=f"backups/{HOST}/y", Body=b"x"),
            "SignatureDoesNotMatch")
    unknown = {"access_key_id": "AKIAUNKNOWNUNKNOWN00", "secret_access_key": "0" * 40}
    refused(lambda: s3._Clients(creds, unknown)("s3").put_object(Bucket=bucket, Key=f"backups/{HOST}/y", Body=b"x"),
            "InvalidAccessKeyId")
    # the setup key worked only while IAM checks were off
    refused(lambda: s3._Clients(creds, s3.SETUP_KEY)("s3").list_objects_v2(Bucket=bucket), "InvalidAccessKeyId")


def test_plain_http_is_not_served(lab):
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://127.0.0.1:{lab['port']}/", timeout=5)


# ------------------------------------------------------------------ lifecycle: reuse, restart


def test_ensure_reuses_a_running_server(lab, creds):
    again = s3.ensure(lab["paths"], load_stack(STACK), "127.0.0.1", lab["port"], lab["cert"], log=lab["logs"].append)
    assert again == creds


def test_a_dead_server_is_started_again_and_set_up_anew(tmp_path):
    paths = Paths(tmp_path)
    cert = CertificateAuthority.own(tmp_path / "pki", "test").issue("s3", dns=["localhost"], ips=["127.0.0.1"])
    port, logs = free_port(), []
    topo = load_stack("staging")
    try:
        first = s3.ensure(paths, topo, "127.0.0.1", port, cert, log=logs.append)
        assert s3.stop(paths)
        second = s3.ensure(paths, topo, "127.0.0.1", port, cert, log=logs.append)
        assert "gone" in logs[-2] and "in memory" in logs[-2]
        assert second["admin"] != first["admin"] and sorted(second["writers"]) == sorted(first["writers"])
        refused(lambda: s3.client_for(first, "admin").head_bucket(Bucket=first["bucket"]), "403")
        assert s3.client_for(second, "admin").head_bucket(Bucket=second["bucket"])
    finally:
        s3.stop(paths)


# ------------------------------------------------------------------ the lab's outputs, as production's


def test_lab_outputs_hand_each_backup_host_its_own_writer_and_the_endpoint(tmp_path):
    from hastack.inventory import host_entries
    from hastack.lab import Lab
    from hastack.lab.layout import S3_PORT, lab_topology

    paths = Paths(tmp_path)
    lab = Lab("lab", paths=paths, topo=lab_topology("lab", paths), log=lambda _: None)
    hosts = backup_hosts(lab.topo)
    writers = {h: {"access_key_id": f"AKIA{i:016d}", "secret_access_key": f"secret-{h}"} for i, h in enumerate(hosts)}
    s3.save_credentials(paths, {"bucket": "hastack-lab-backups-lab", "writers": writers,
                                "reader": {"access_key_id": "AKIAREADER", "secret_access_key": "reader-secret"}})
    outputs = lab.stack_outputs()
    assert outputs["backupBucket"] == "hastack-lab-backups-lab" and outputs["backupRegion"] == "eu-central-1"
    assert outputs["secrets"]["backup_writers"] == writers
    assert outputs["secrets"]["restore_reader"]["secret_access_key"] == "reader-secret"
    entries = host_entries(outputs, ssh_user="labadmin")
    for name, data in entries.items():
        assert data["backup_s3_endpoint"] == f"https://{lab.addr.host_private}:{S3_PORT}"
        assert data["backup_s3_ca"] == lab.ca.ca_pem
        if name in hosts:
            assert data["backup_credentials"] == {**writers[name], "bucket": "hastack-lab-backups-lab",
                                                  "region": "eu-central-1", "prefix": f"backups/{name}/"}
        else:
            assert "backup_credentials" not in data
        # the reader's key reaches the host that test-restores every week, and no other
        verifier = name == lab.topo.hosts_with_role("monitoring")[0].name
        assert ("reader-secret" in json.dumps(data, default=str)) == verifier, name
        if verifier:
            assert data["backup_verify_credentials"]["secret_access_key"] == "reader-secret"
            assert data["backup_verify_identity"].startswith("AGE-SECRET-KEY-1")
        else:
            assert "AGE-SECRET-KEY" not in json.dumps(data, default=str)


def test_rotated_keys_work_and_the_replaced_ones_are_refused_once_retired(creds, bucket):
    """As a backup key rotation runs: new keys for every writer and the reader, both old and new valid
    until the hosts use the new ones, then the old ones deactivated and deleted. Last in this module:
    the module's writer and reader clients hold the keys it retires."""
    import copy

    rotated = copy.deepcopy(creds)
    old_writer, old_reader = creds["writers"][HOST], creds["reader"]
    replaced = s3.new_keys(rotated)
    assert set(replaced) == {s3.reader_name(creds["stack"])} | {s3.writer_name(creds["stack"], h) for h in creds["writers"]}
    new_writer = rotated["writers"][HOST]
    assert new_writer["access_key_id"] != old_writer["access_key_id"]
    key = f"backups/{HOST}/rotation"
    for writer_key in (old_writer, new_writer):  # until the hosts have switched, both work
        s3._Clients(creds, writer_key)("s3").put_object(Bucket=bucket, Key=key, Body=b"x")
    s3.retire_keys(rotated, replaced)
    s3._Clients(creds, new_writer)("s3").put_object(Bucket=bucket, Key=key, Body=b"y")
    s3._Clients(creds, rotated["reader"])("s3").list_object_versions(Bucket=bucket, Prefix=key)
    refused(lambda: s3._Clients(creds, old_writer)("s3").put_object(Bucket=bucket, Key=key, Body=b"z"),
            "InvalidAccessKeyId")
    refused(lambda: s3._Clients(creds, old_reader)("s3").list_object_versions(Bucket=bucket, Prefix=key),
            "InvalidAccessKeyId")
    # a rotation that stopped after making its keys leaves two per user: the next one clears the stray key
    stray = copy.deepcopy(rotated)
    s3.new_keys(stray)
    again = s3.new_keys(rotated)
    assert set(again) == set(replaced)
    creds.update(copy.deepcopy(rotated))  # later tests (none so far) would use the live keys
