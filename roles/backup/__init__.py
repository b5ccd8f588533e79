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


def _from_outputs(outputs, secrets, data):
    if "backup_writer" not in secrets:
        return {}
    return {"backup_credentials": dict(secrets["backup_writer"], bucket=outputs.get("backupBucket"),
                                       region=outputs.get("backupRegion"))}


ROLE = Role(
    name="backup",
    ports=PORTS,
    section=("backup", BackupConfig),
    runs_on=lambda topo, host: topo.placement(host.role).data_volume,
    from_outputs=_from_outputs,
)

DEFAULTS = ROLE.defaults
