"""The lab's S3: moto's server standing in for AWS S3, KMS and IAM in eu-central-1.

Set up as `pulumi up` sets up production (hastack/cloud/aws_backup.py): a
versioned bucket with a COMPLIANCE object lock of ``retentionDays``, default
SSE-KMS with the backup key, that key under the production key policy, one
put-only writer per backup host, the restore reader and the break-glass role,
all with the very same policy functions and arguments as production. Then
moto's IAM checks are switched on, so every later request is signed by one of
those users and judged by its policy.

moto has no root user: an ``admin`` IAM user with an allow-all policy plays the
account's administrator. moto keeps everything in memory: a restarted server
is empty and is set up again (new keys, no backups).

What moto enforces and what it does not is listed in the README (backups);
tests/unit/test_lab_s3.py proves the former.

The server listens with TLS (a certificate from the lab CA) on the host's
private lab address, where the data hosts reach it. moto's control endpoint
(/moto-api/, e.g. reset-auth) takes no credentials: anyone who reaches the port
could switch IAM checks off again, which is why it listens nowhere else.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
import urllib.request
from pathlib import Path
from typing import Any, Callable

from hastack.cloud.aws_backup import (backup_hosts, break_glass_name, break_glass_trust_policy, bucket_policy,
                                      key_policy, reader_name, reader_policy, writer_name, writer_policy)
from hastack.lab.layout import Paths
from hastack.lab.system import LabError, pid_alive, read_pid
from hastack.model import Topology
from roles.backup import host_prefix

NAME = "s3"  # the service: .lab/run/s3.pid, .lab/logs/s3.log
ACCOUNT_ID = "123456789012"  # moto's one account: every user, role and key it makes lives there
CREDENTIALS = "s3-credentials.json"  # in .lab/secrets, 0600
ALLOW_ALL = json.dumps({"Version": "2012-10-17",
                        "Statement": [{"Sid": "LabAdministrator", "Effect": "Allow", "Action": "*", "Resource": "*"}]})
# Any key signs requests while IAM checks are off (moto accepts them all then).
SETUP_KEY = {"access_key_id": "lab-s3-setup", "secret_access_key": "lab-s3-setup"}  # nosec B105  # any key does, see above


def credentials_path(paths: Paths) -> Path:
    return paths.secrets / CREDENTIALS


def endpoint_url(bind: str, port: int) -> str:
    return f"https://{bind}:{port}"


def bucket_policy_for_moto(policy: str) -> str:
    """``bucket_policy()`` as far as moto can judge it. moto evaluates a bucket policy's
    statements on object requests but skips every condition operator but StringEquals,
    so a conditional Deny (only without TLS, only below TLS 1.2) would refuse every
    request, TLS or not. Those statements are left out; the lab's S3 serves nothing but
    TLS 1.2 and up anyway (see main)."""
    doc = json.loads(policy)
    doc["Statement"] = [s for s in doc["Statement"] if "Condition" not in s]
    return json.dumps(doc, sort_keys=True)


# ---------------------------------------------------------------- the server


def server_command(bind: str, port: int, cert_file: Path, key_file: Path) -> list[str]:
    return [sys.executable, "-m", "hastack.lab.s3", "--bind", bind, "--port", str(port),
            "--cert", str(cert_file), "--key", str(key_file)]


def start(paths: Paths, bind: str, port: int, cert) -> int:
    """Start moto's server (unless it runs) on ``bind``:``port`` with ``cert`` (hastack.pki.Issued)."""
    from hastack.lab.services import _start, _wait_port

    paths.run.mkdir(parents=True, exist_ok=True)
    cert_file, key_file, ca_file = paths.run / "s3.crt", paths.run / "s3.key", paths.run / "s3-ca.crt"
    cert_file.write_text(cert.chain_pem)
    key_file.touch(mode=0o600)
    key_file.write_text(cert.key_pem)
    ca_file.write_text(cert.ca_pem)
    pid = _start(paths, NAME, server_command(bind, port, cert_file, key_file))
    _wait_port(paths, bind, port, NAME)
    return pid


def stop(paths: Paths) -> bool:
    """Stop the server (everything in it is gone); was it running?"""
    from hastack.lab.services import stop_service

    return stop_service(paths, NAME)


def ensure(paths: Paths, topo: Topology, bind: str, port: int, cert,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """The lab's S3, running and set up for ``topo``; its credentials (also in .lab/secrets).

    A running server that answers the stored admin key is kept (with writers added for
    new backup hosts). A server that died lost everything (moto is in memory): it is
    started again and set up anew."""
    url = endpoint_url(bind, port)
    saved = load_credentials(paths)
    pid = read_pid(paths.run / f"{NAME}.pid")
    if pid_alive(pid) and saved and saved["endpoint"] == url and _answers(saved):
        added = add_writers(saved, backup_hosts(topo))
        if added:
            log(f"lab S3: writers for new backup hosts {', '.join(added)}")
            save_credentials(paths, saved)
        return saved
    if pid_alive(pid):
        log(f"lab S3: the server ({pid}) does not answer as set up; starting it again, empty")
        stop(paths)
    elif saved:
        log("lab S3: the server had stopped; moto keeps everything in memory, so its bucket, keys and every "
            "backup in it are gone: starting it again, empty")
    start(paths, bind, port, cert)
    creds = setup(url, paths.run / "s3-ca.crt", topo)
    save_credentials(paths, creds)
    log(f"lab S3: {url}, bucket {creds['bucket']} ({len(creds['writers'])} writers, IAM checks on)")
    return creds


def main(argv: list[str] | None = None) -> None:
    """moto's server with TLS 1.2 and up only (moto's own command line cannot set that)."""
    import argparse

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(args.bind, args.port, app, threaded=True, ssl_context=context, request_handler=MotoRequestHandler)


# ---------------------------------------------------------------- setup, as `pulumi up` does it


def setup(url: str, ca_file: Path, topo: Topology) -> dict[str, Any]:
    """Create the admin, the break-glass role, the key, the bucket, the writers and the
    reader with IAM checks off, then switch them on. Returns every credential."""
    cfg = topo.section("backup")
    region = cfg.region
    creds: dict[str, Any] = {"endpoint": url, "ca_file": str(ca_file), "region": region, "account_id": ACCOUNT_ID,
                             "stack": topo.stack, "prefix": cfg.prefix}
    clients = _Clients(creds, SETUP_KEY)
    iam, kms, s3 = clients("iam"), clients("kms"), clients("s3")

    creds["admin"] = _user(iam, f"hastack-{topo.stack}-lab-admin", "administrator", ALLOW_ALL)
    role = iam.create_role(RoleName=break_glass_name(topo.stack), Path="/hastack/",
                           AssumeRolePolicyDocument=break_glass_trust_policy(ACCOUNT_ID), MaxSessionDuration=3600)
    creds["break_glass_role_arn"] = role["Role"]["Arn"]

    key = kms.create_key(Description=f"hastack {topo.stack} backups",
                         Policy=key_policy(ACCOUNT_ID, creds["break_glass_role_arn"]))["KeyMetadata"]
    kms.enable_key_rotation(KeyId=key["KeyId"])
    kms.create_alias(AliasName=f"alias/hastack-{topo.stack}-backups", TargetKeyId=key["KeyId"])
    creds["key_arn"] = key["Arn"]

    bucket = f"hastack-{topo.stack}-backups-lab"
    bucket_arn = f"arn:aws:s3:::{bucket}"
    creds["bucket"] = bucket
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region},
                     ObjectLockEnabledForBucket=True)
    s3.put_bucket_ownership_controls(Bucket=bucket,
                                     OwnershipControls={"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": creds["key_arn"]},
        "BucketKeyEnabled": True}]})
    s3.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled",
        "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": cfg.retention_days}}})
    s3.put_bucket_policy(Bucket=bucket, Policy=bucket_policy_for_moto(bucket_policy(bucket_arn)))

    creds["reader"] = _user(iam, reader_name(topo.stack), "restore",
                            reader_policy(bucket_arn, creds["key_arn"], cfg.prefix))
    creds["writers"] = {}
    _add_writers(iam, creds, backup_hosts(topo))
    enable_auth(url, ca_file)
    return creds


def add_writers(creds: dict[str, Any], hosts: list[str]) -> list[str]:
    """Writers for backup hosts that have none yet (the topology grew), made by the admin."""
    missing = [h for h in hosts if h not in creds["writers"]]
    if missing:
        _add_writers(_Clients(creds, creds["admin"])("iam"), creds, missing)
    return missing


def _add_writers(iam, creds: dict[str, Any], hosts: list[str]) -> None:
    bucket_arn = f"arn:aws:s3:::{creds['bucket']}"
    for host in hosts:
        prefix = host_prefix(creds["prefix"], host)
        creds["writers"][host] = _user(iam, writer_name(creds["stack"], host), "backup",
                                       writer_policy(bucket_arn, creds["key_arn"], prefix))


def _keyed_users(creds: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    """(IAM user name, the key the lab hands out for it) of the reader and every writer."""
    return [(reader_name(creds["stack"]), creds["reader"]),
            *((writer_name(creds["stack"], host), key) for host, key in sorted(creds["writers"].items()))]


def new_keys(creds: dict[str, Any]) -> dict[str, str]:
    """A new access key for the reader and every writer, in place in ``creds`` (the admin makes them, as
    `pulumi up` does for a new key generation). Returns IAM user -> the key id it replaces. A key left over
    by a rotation that stopped half way (neither the one handed out nor new) is deleted first: IAM allows
    two per user."""
    iam = _Clients(creds, creds["admin"])("iam")
    replaced = {}
    for user, key in _keyed_users(creds):
        for stale in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]:
            if stale["AccessKeyId"] != key["access_key_id"]:
                iam.delete_access_key(UserName=user, AccessKeyId=stale["AccessKeyId"])
        new = iam.create_access_key(UserName=user)["AccessKey"]
        replaced[user] = key["access_key_id"]
        key.update(access_key_id=new["AccessKeyId"], secret_access_key=new["SecretAccessKey"])
    return replaced


def retire_keys(creds: dict[str, Any], replaced: dict[str, str]) -> None:
    """The replaced keys deactivated, then deleted (once the hosts use the new ones)."""
    iam = _Clients(creds, creds["admin"])("iam")
    for user, key_id in replaced.items():
        iam.update_access_key(UserName=user, AccessKeyId=key_id, Status="Inactive")
        iam.delete_access_key(UserName=user, AccessKeyId=key_id)


def _user(iam, name: str, policy_name: str, policy: str) -> dict[str, str]:
    """An IAM user with one inline policy, as production's _identity; its access key."""
    iam.create_user(UserName=name, Path="/hastack/")
    iam.put_user_policy(UserName=name, PolicyName=policy_name, PolicyDocument=policy)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}


def enable_auth(url: str, ca_file: Path) -> None:
    """Switch moto's IAM checks on for every further request. The body is the number of
    requests still let through unchecked (moto's INITIAL_NO_AUTH_ACTION_COUNT); moto reads
    it from the raw body, which werkzeug leaves empty for a form content type, hence text/plain."""
    request = urllib.request.Request(f"{url}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
    context = ssl.create_default_context(cafile=str(ca_file))
    # B310: the URL is endpoint_url()'s https://<bind>:<port>, the lab's own S3
    with urllib.request.urlopen(request, context=context, timeout=10) as response:  # nosec B310  # see above
        answer = json.loads(response.read())
    if answer.get("status") != "ok":
        raise LabError(f"the lab's S3 did not switch IAM checks on: {answer}")


def _answers(creds: dict[str, Any]) -> bool:
    """Does the server know the stored admin and bucket (it is the one we set up)?"""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _Clients(creds, creds["admin"])("s3").head_bucket(Bucket=creds["bucket"])
        return True
    except (BotoCoreError, ClientError):
        return False


# ---------------------------------------------------------------- credentials and clients


def save_credentials(paths: Paths, creds: dict[str, Any]) -> None:
    path = credentials_path(paths)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(creds, f, indent=2, sort_keys=True)
    os.chmod(path, 0o600)


def load_credentials(paths: Paths) -> dict[str, Any] | None:
    try:
        return json.loads(credentials_path(paths).read_text())
    except (OSError, ValueError):
        return None


class _Clients:
    """boto3 clients for the lab's S3 with one identity's key, verifying the lab CA."""

    def __init__(self, creds: dict[str, Any], key: dict[str, str]):
        self.creds, self.key = creds, key

    def __call__(self, service: str):
        import boto3
        from botocore.config import Config

        return boto3.client(
            service, endpoint_url=self.creds["endpoint"], region_name=self.creds["region"],
            aws_access_key_id=self.key["access_key_id"], aws_secret_access_key=self.key["secret_access_key"],
            verify=self.creds["ca_file"],
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 1},
                          connect_timeout=5, read_timeout=30))


def identity_key(creds: dict[str, Any], identity: str, host: str | None = None) -> dict[str, str]:
    if identity == "writer":
        if host not in creds["writers"]:
            raise LabError(f"no backup writer for {host!r}; backup hosts: {', '.join(creds['writers'])}")
        return creds["writers"][host]
    if identity not in ("admin", "reader"):
        raise LabError(f"unknown identity {identity!r}: admin, reader or writer (with a host)")
    return creds[identity]


def client_for(creds: dict[str, Any], identity: str = "admin", host: str | None = None, service: str = "s3"):
    """A boto3 client for the lab's S3 (or its IAM or KMS) as ``admin``, ``reader`` or
    ``writer`` of ``host``, from credentials ``setup`` returned."""
    return _Clients(creds, identity_key(creds, identity, host))(service)


def client(identity: str = "admin", host: str | None = None, service: str = "s3", paths: Paths | None = None):
    """The same for the running lab (.lab/secrets/s3-credentials.json)."""
    from hastack.lab.layout import default_paths

    creds = load_credentials(paths or default_paths())
    if creds is None:
        raise LabError("the lab's S3 is not set up: run `hastack lab up`")
    return client_for(creds, identity, host, service)


if __name__ == "__main__":
    main()
