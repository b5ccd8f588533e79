"""The S3 backup bucket in Frankfurt and the two identities that use it.

Hardened against deletion: versioning plus object lock in COMPLIANCE mode
(no one, root included, can delete a locked version early), a writer that
holds no delete permission at all, and a bucket policy refusing plain HTTP.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from hastack.model import Topology

# Actions the writer needs for uploads (multipart included) and to read back
# what it wrote for verification. Nothing that deletes or reconfigures.
WRITER_OBJECT_ACTIONS = [
    "s3:PutObject",
    "s3:GetObject",
    "s3:AbortMultipartUpload",
    "s3:ListMultipartUploadParts",
]
READER_OBJECT_ACTIONS = ["s3:GetObject", "s3:GetObjectVersion"]
COLD_STORAGE_CLASS = "GLACIER_IR"  # instant retrieval: a restore must not wait hours


def writer_policy(bucket_arn: str, key_arn: str, prefix: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "WriteBackups", "Effect": "Allow", "Action": WRITER_OBJECT_ACTIONS,
             "Resource": f"{bucket_arn}/{prefix}*"},
            {"Sid": "ListBackups", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": bucket_arn,
             "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
            {"Sid": "EncryptWithBackupKey", "Effect": "Allow",
             "Action": ["kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt"], "Resource": key_arn},
        ],
    }, sort_keys=True)


def reader_policy(bucket_arn: str, key_arn: str, prefix: str) -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadBackups", "Effect": "Allow", "Action": READER_OBJECT_ACTIONS,
             "Resource": f"{bucket_arn}/{prefix}*"},
            {"Sid": "ListBackups", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
             "Resource": bucket_arn, "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}}},
            {"Sid": "DecryptWithBackupKey", "Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": key_arn},
        ],
    }, sort_keys=True)


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

        self.key = aws.kms.Key(
            "backup-key", description=f"hastack {topo.stack} backups", enable_key_rotation=True,
            deletion_window_in_days=30, tags=tags, opts=kept)
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

        self.writer, self.writer_credentials = self._identity(
            "backup-writer", topo.stack, writer_policy, cfg.prefix, provider, tags)
        self.reader, self.reader_credentials = self._identity(
            "restore-reader", topo.stack, reader_policy, cfg.prefix, provider, tags)

        self.register_outputs({"bucket": self.bucket.bucket, "key_arn": self.key.arn})

    def _identity(self, name: str, stack: str, policy_fn, prefix: str, provider, tags):
        """An IAM user with one inline policy on this bucket and key; its access key only as a secret."""
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        user = aws.iam.User(name, name=f"hastack-{stack}-{name}", path="/hastack/", tags=tags, opts=child)
        aws.iam.UserPolicy(
            f"{name}-policy", user=user.name,
            policy=pulumi.Output.all(self.bucket.arn, self.key.arn).apply(lambda a: policy_fn(a[0], a[1], prefix)),
            opts=child)
        key = aws.iam.AccessKey(f"{name}-key", user=user.name,
                                opts=pulumi.ResourceOptions(parent=self, provider=provider,
                                                            additional_secret_outputs=["secret"]))
        return user, pulumi.Output.secret({"access_key_id": key.id, "secret_access_key": key.secret})
