"""The backup role, on every host with a data volume: backups to the stack's S3
bucket in Frankfurt (versioned, object-locked, SSE-KMS)."""

from pydantic import Field, model_validator

from hastack.role import Role, Section
from hastack.validators import lifecycle_problems

PORTS = ()  # backups push to S3; nothing listens


class BackupConfig(Section):
    """hastack:backup: the bucket and its retention (hastack/cloud/aws_backup.py)."""

    region: str = Field("eu-central-1", pattern=r"^eu-central-1$")  # backups stay in Frankfurt
    prefix: str = Field("backups/", pattern=r"^[a-z0-9][a-z0-9/_-]*/$")
    retention_days: int = 30  # object lock, compliance mode: no version can be deleted sooner
    noncurrent_expire_days: int = 90  # replaced versions expire after this
    cold_after_days: int = 30  # objects move to GLACIER_IR
    schedule: str = Field("03:15", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")  # daily, UTC

    @model_validator(mode="after")
    def _lifecycle_s3_accepts(self):
        # what S3 and the object lock would refuse, each naming its key (hastack:backup.<key>)
        problems = lifecycle_problems(self.retention_days, self.noncurrent_expire_days, self.cold_after_days)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def host_prefix(prefix: str, host: str) -> str:
    """Where one host's backups go in the bucket; its writer may put there and nowhere else."""
    return f"{prefix}{host}/"


# Where the S3 API is and which CA signs it: None for AWS itself (its regional endpoint,
# the system's CAs); a provider standing in for AWS (the lab) supplies both.
PROVIDED_DEFAULTS = {"backup_s3_endpoint": None, "backup_s3_ca": None}


def _host_data(topo, host):
    return {"backup_host": host.name, "backup_prefix": host_prefix(topo.section("backup").prefix, host.name)}


def _from_outputs(outputs, secrets, data):
    """Each backup host gets its own writer's key (put-only, its own prefix) and nothing of the others'."""
    writers = secrets.get("backup_writers") or {}
    if data.get("backup_host") not in writers:
        return {}
    return {"backup_credentials": {
        **writers[data["backup_host"]],
        "bucket": outputs.get("backupBucket"),
        "region": outputs.get("backupRegion"),
        "prefix": data["backup_prefix"],
    }}


ROLE = Role(
    name="backup",
    ports=PORTS,
    section=("backup", BackupConfig),
    provided_defaults=PROVIDED_DEFAULTS,
    runs_on=lambda topo, host: topo.placement(host.role).data_volume,
    host_data=_host_data,
    from_outputs=_from_outputs,
)

DEFAULTS = ROLE.defaults
