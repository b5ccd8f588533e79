"""The S3 backup bucket in Frankfurt, its KMS key and the identities that use them.

Hardened against deletion: versioning plus object lock in COMPLIANCE mode
(no one, root included, can delete a locked version early), one put-only
writer per backup host confined to that host's prefix (no read, list or
delete at all), a separate restore reader, a key that only a break-glass role
(MFA) may disable or schedule for deletion, and a bucket policy refusing
plain HTTP.

The policies are pure functions of ARNs: the lab's S3 (hastack/lab/s3.py)
applies exactly the same ones.

A stack that restores from another (hastack:restoreFrom) also carries that
stack's bucket and restore reader in its outputs (restore_source).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import pulumi
import pulumi_aws as aws

from hastack.model import Topology
from roles.backup import host_prefix

# What one backup host's writer may do: put objects under its own prefix (a
# multipart upload is CreateMultipartUpload, UploadPart and
# CompleteMultipartUpload, all authorised as s3:PutObject) and abort its own
# unfinished uploads. Nothing that reads, lists, deletes or reconfigures: a
# stolen writer key can add backups, never read, remove or overwrite-to-lose one
# (versioning keeps the old version, the object lock keeps it for retentionDays).
WRITER_OBJECT_ACTIONS = ["s3:PutObject", "s3:AbortMultipartUpload"]
# SSE-KMS uploads need exactly these on the bucket's key. kms:Decrypt too, although
# the writer never reads: "To perform a multipart upload with encryption using an
# AWS KMS key, the requester must have permission to the kms:Decrypt and
# kms:GenerateDataKey actions on the key ... because Amazon S3 must decrypt and read
# data from the encrypted file parts before it completes the multipart upload"
# (S3 API reference, CreateMultipartUpload, Permissions:
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_CreateMultipartUpload.html).
WRITER_KEY_ACTIONS = ["kms:GenerateDataKey", "kms:Decrypt"]
READER_OBJECT_ACTIONS = ["s3:GetObject", "s3:GetObjectVersion"]
READER_LIST_ACTIONS = ["s3:ListBucket", "s3:ListBucketVersions"]
READER_KEY_ACTIONS = ["kms:Decrypt"]
# Denied on the key to every principal but the break-glass role (key_policy).
KEY_DESTRUCTION_ACTIONS = ["kms:DisableKey", "kms:ScheduleKeyDeletion"]
# What the break-glass role may do to the key (and undo).
BREAK_GLASS_KEY_ACTIONS = ["kms:CancelKeyDeletion", "kms:DescribeKey", "kms:DisableKey", "kms:EnableKey",
                           "kms:ScheduleKeyDeletion"]
COLD_STORAGE_CLASS = "GLACIER_IR"  # instant retrieval: a restore must not wait hours


def _via_s3(key_arn: str) -> dict:
    """The key only through S3 in the key's region: the identity cannot call KMS directly."""
    region = key_arn.split(":")[3]
    return {"StringEquals": {"kms:ViaService": f"s3.{region}.amazonaws.com"}}


def writer_policy(bucket_arn: str, key_arn: str, prefix: str) -> str:
    """One backup host's writer: put-only under ``prefix`` (``<backup prefix><host>/``)."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "PutOwnBackups", "Effect": "Allow", "Action": WRITER_OBJECT_ACTIONS,
             "Resource": f"{bucket_arn}/{prefix}*"},
            {"Sid": "EncryptWithBackupKey", "Effect": "Allow", "Action": WRITER_KEY_ACTIONS, "Resource": key_arn,
             "Condition": _via_s3(key_arn)},
        ],
    }, sort_keys=True)


def reader_policy(bucket_arn: str, key_arn: str, prefix: str) -> str:
    """The restore identity: list and read every host's backups (every version), decrypt them."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadBackups", "Effect": "Allow", "Action": READER_OBJECT_ACTIONS,
             "Resource": f"{bucket_arn}/{prefix}*"},
            {"Sid": "ListBackups", "Effect": "Allow", "Action": READER_LIST_ACTIONS,
             "Resource": bucket_arn, "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
            {"Sid": "DecryptWithBackupKey", "Effect": "Allow", "Action": READER_KEY_ACTIONS, "Resource": key_arn,
             "Condition": _via_s3(key_arn)},
        ],
    }, sort_keys=True)


def key_policy(account_id: str, break_glass_role_arn: str, key_admin_arns: Sequence[str] = ()) -> str:
    """The backup key's policy. Losing the key loses every backup (object lock keeps
    ciphertext, not the means to read it), so disabling it and scheduling its deletion
    are denied to every principal but the break-glass role.

    The account keeps full administration (statement ``AccountAdministersKey``, the
    default key policy's root statement, which also lets IAM policies grant use of the
    key, as the writers' and the reader's do), so the key never becomes unmanageable.

    kms:PutKeyPolicy is deliberately NOT denied. KMS runs a "key policy lockout safety
    check" on CreateKey and PutKeyPolicy: unless BypassPolicyLockoutSafetyCheck is set,
    the new policy must allow the calling principal a subsequent PutKeyPolicy; setting
    the flag "increases the risk that the KMS key becomes unmanageable. Do not set this
    value to true indiscriminately" (KMS API reference, CreateKey and PutKeyPolicy,
    BypassPolicyLockoutSafetyCheck:
    https://docs.aws.amazon.com/kms/latest/APIReference/API_PutKeyPolicy.html).
    Denying PutKeyPolicy to all but the break-glass role would make `pulumi up` (not
    running as that role) fail that check when it creates or changes the key, or need
    the bypass; and were the role ever unusable, nobody but AWS Support could fix the
    policy of the key every backup depends on. So an administrator can still lift the
    deny, but only by a deliberate, separately logged PutKeyPolicy (CloudTrail) first:
    no script, `pulumi destroy` or stray kms:* grant disables or deletes the key, and a
    scheduled deletion still waits the key's 30-day window, cancellable.

    Key policies name the key as Resource "*" (the policy is attached to it).
    """
    statements = [
        {"Sid": "AccountAdministersKey", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
         "Action": "kms:*", "Resource": "*"},
    ]
    if key_admin_arns:
        statements.append({
            "Sid": "KeyAdministrators", "Effect": "Allow", "Principal": {"AWS": sorted(key_admin_arns)},
            "Action": ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
                       "kms:Revoke*", "kms:Get*", "kms:TagResource", "kms:UntagResource", "kms:CancelKeyDeletion"],
            "Resource": "*"})
    statements += [
        {"Sid": "BreakGlassMayDisableOrDeleteKey", "Effect": "Allow", "Principal": {"AWS": break_glass_role_arn},
         "Action": BREAK_GLASS_KEY_ACTIONS, "Resource": "*"},
        # aws:PrincipalArn of a role session is the role's ARN; compared as a string, so a
        # break-glass role deleted and made again (by an IAM administrator) still matches
        {"Sid": "DenyKeyDestructionExceptBreakGlass", "Effect": "Deny", "Principal": {"AWS": "*"},
         "Action": KEY_DESTRUCTION_ACTIONS, "Resource": "*",
         "Condition": {"ArnNotEquals": {"aws:PrincipalArn": break_glass_role_arn}}},
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def break_glass_trust_policy(account_id: str) -> str:
    """Who may assume the break-glass role: principals of this account that IAM allows
    sts:AssumeRole on it (an account's root user itself cannot assume roles), and only
    with MFA."""
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "AccountWithMfa", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
             "Action": "sts:AssumeRole", "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "true"}}},
        ],
    }, sort_keys=True)


def backup_hosts(topo: Topology) -> list[str]:
    """The hosts that take backups (their role names some): one writer each. (The backup role
    also runs on the monitoring host, which only reads: the weekly test restore.)"""
    from roles import role

    return [h.name for h in topo.hosts if "backup" in topo.host_roles(h) and role(h.role).backups]


def writer_name(stack: str, host: str) -> str:
    return f"hastack-{stack}-backup-{host}"


def reader_name(stack: str) -> str:
    return f"hastack-{stack}-restore-reader"


def break_glass_name(stack: str) -> str:
    return f"hastack-{stack}-backup-break-glass"


def bucket_policy(bucket_arn: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
             "Resource": [bucket_arn, f"{bucket_arn}/*"],
             "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
            {"Sid": "DenyOldTls", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
             "Resource": [bucket_arn, f"{bucket_arn}/*"],
             "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}}},
            {"Sid": "DenyBucketDeletion", "Effect": "Deny", "Principal": "*", "Action": "s3:DeleteBucket",
             "Resource": bucket_arn},
        ],
    }, sort_keys=True)


class BackupBucket(pulumi.ComponentResource):
    def __init__(self, name: str, topo: Topology, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hastack:aws:BackupBucket", name, None, opts)
        cfg = topo.section("backup")
        tags = {"stack": topo.stack, "purpose": "backups"}
        provider = aws.Provider("aws-backup", region=cfg.region, opts=pulumi.ResourceOptions(parent=self))
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        kept = pulumi.ResourceOptions(parent=self, provider=provider, protect=True)

        # the account the stack deploys into: its root administers the key (key_policy)
        account_id = aws.get_caller_identity_output(opts=pulumi.InvokeOptions(provider=provider)).account_id
        self.break_glass = aws.iam.Role(
            "backup-break-glass", name=break_glass_name(topo.stack), path="/hastack/",
            description="the only principal that may disable or schedule deletion of the backup key (MFA)",
            assume_role_policy=account_id.apply(break_glass_trust_policy), max_session_duration=3600, tags=tags,
            opts=child)
        self.key = aws.kms.Key(
            "backup-key", description=f"hastack {topo.stack} backups", enable_key_rotation=True,
            deletion_window_in_days=30, tags=tags,
            policy=pulumi.Output.all(account_id, self.break_glass.arn).apply(lambda a: key_policy(a[0], a[1])),
            opts=kept)
        aws.kms.Alias("backup-key-alias", name=f"alias/hastack-{topo.stack}-backups", target_key_id=self.key.key_id,
                      opts=child)

        self.bucket = aws.s3.Bucket(
            "backups", bucket_prefix=f"hastack-{topo.stack}-backups-", object_lock_enabled=True,
            force_destroy=False, tags=tags, opts=kept)
        bucket_id = self.bucket.id

        aws.s3.BucketOwnershipControls(
            "backups-ownership", bucket=bucket_id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"), opts=child)
        self.public_access_block = aws.s3.BucketPublicAccessBlock(
            "backups-public-access", bucket=bucket_id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        versioning = aws.s3.BucketVersioning(
            "backups-versioning", bucket=bucket_id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            "backups-encryption", bucket=bucket_id,
            rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="aws:kms", kms_master_key_id=self.key.arn),
                bucket_key_enabled=True)],
            opts=child)
        aws.s3.BucketObjectLockConfiguration(
            "backups-object-lock", bucket=bucket_id, object_lock_enabled="Enabled",
            rule=aws.s3.BucketObjectLockConfigurationRuleArgs(
                default_retention=aws.s3.BucketObjectLockConfigurationRuleDefaultRetentionArgs(
                    mode="COMPLIANCE", days=cfg.retention_days)),
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[versioning]))
        aws.s3.BucketLifecycleConfiguration(
            "backups-lifecycle", bucket=bucket_id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="backups-to-cold-storage", status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=cfg.prefix),
                    transitions=[aws.s3.BucketLifecycleConfigurationRuleTransitionArgs(
                        days=cfg.cold_after_days, storage_class=COLD_STORAGE_CLASS)],
                    noncurrent_version_transitions=[
                        aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionTransitionArgs(
                            noncurrent_days=cfg.cold_after_days, storage_class=COLD_STORAGE_CLASS)],
                    noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=cfg.noncurrent_expire_days),
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=7),
                ),
            ],
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[versioning]))
        aws.s3.BucketPolicy(
            "backups-policy", bucket=bucket_id, policy=self.bucket.arn.apply(bucket_policy),
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[self.public_access_block]))

        self.key_generation = cfg.key_generation
        # one put-only writer per backup host, each confined to its own prefix
        self.writers: dict[str, aws.iam.User] = {}
        writer_credentials = {}
        for host in backup_hosts(topo):
            prefix = host_prefix(cfg.prefix, host)
            self.writers[host], writer_credentials[host] = self._identity(
                f"backup-writer-{host}", writer_name(topo.stack, host), writer_policy, prefix, provider, tags)
        self.writer_credentials = pulumi.Output.secret(writer_credentials)
        self.reader, self.reader_credentials = self._identity(
            "restore-reader", reader_name(topo.stack), reader_policy, cfg.prefix, provider, tags)

        self.register_outputs({"bucket": self.bucket.bucket, "key_arn": self.key.arn,
                               "break_glass_role_arn": self.break_glass.arn})

    def _identity(self, name: str, user_name: str, policy_fn, prefix: str, provider, tags):
        """An IAM user with one inline policy on this bucket and key; its access key only as a secret."""
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        user = aws.iam.User(name, name=user_name, path="/hastack/", tags=tags, opts=child)
        aws.iam.UserPolicy(
            f"{name}-policy", user=user.name,
            policy=pulumi.Output.all(self.bucket.arn, self.key.arn).apply(lambda a: policy_fn(a[0], a[1], prefix)),
            opts=child)
        key = aws.iam.AccessKey(access_key_name(name, self.key_generation), user=user.name,
                                opts=pulumi.ResourceOptions(parent=self, provider=provider,
                                                            additional_secret_outputs=["secret"]))
        return user, pulumi.Output.secret({"access_key_id": key.id, "secret_access_key": key.secret})


def access_key_name(identity: str, generation: int) -> str:
    """A new generation is a new resource: Pulumi creates it before the converge and deletes the old one
    at the end of the update, once the hosts use the new key. The first keeps its original name."""
    return f"{identity}-key" if generation == 1 else f"{identity}-key-{generation}"


# ---------------------------------------------------------------- restoring from another stack


def source_stack_name(restore_from: str, organization: str, project: str) -> str:
    """The Pulumi stack reference of hastack:restoreFrom: a bare name (prod) is a stack of this
    organization and project; a name with a '/' is already Pulumi's own reference."""
    if "/" in restore_from:
        return restore_from
    return f"{organization}/{project}/{restore_from}"


def restore_source_of(restore_from: str, source: Mapping[str, Any]) -> dict:
    """``restoreSource`` from the source stack's outputs (backupBucket, backupRegion, secrets)."""
    reader = (source.get("secrets") or {}).get("restore_reader")
    missing = [name for name, value in (("backupBucket", source.get("backupBucket")),
                                        ("backupRegion", source.get("backupRegion")),
                                        ("secrets.restore_reader", reader)) if not value]
    if missing:
        raise pulumi.RunError(f"hastack:restoreFrom = {restore_from!r}: that stack's outputs have no "
                              f"{', '.join(missing)}; it must be a hastack stack on Hetzner that has run `pulumi up`")
    return {
        "stack": restore_from,
        "backupBucket": source["backupBucket"],
        "backupRegion": source["backupRegion"],
        "secrets": {"restore_reader": reader},
    }


def restore_source(restore_from: str) -> pulumi.Output:
    """The source stack's bucket, region and restore reader, read through a stack reference;
    one secret output.

    Nothing is granted here and nothing changes in the source stack: its reader identity
    already may list and read its bucket, and decrypt its key through S3 (the reader's IAM
    policy; the key policy's AccountAdministersKey statement lets IAM grant that). Both stacks
    live in the same AWS account, of which the reader is an IAM user.
    """
    ref = pulumi.StackReference(
        "restore-from", stack_name=source_stack_name(restore_from, pulumi.get_organization(), pulumi.get_project()))
    source = pulumi.Output.all(backupBucket=ref.get_output("backupBucket"), backupRegion=ref.get_output("backupRegion"),
                               secrets=ref.get_output("secrets"))
    return pulumi.Output.secret(source.apply(lambda s: restore_source_of(restore_from, s)))
