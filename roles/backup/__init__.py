"""The backup role, on every host whose role names backups (MariaDB: full copies
and continuous binlogs; Cassandra: snapshots; Redis: the primary's RDB):
streamed, compressed, encrypted on the host with age to the operator's
recipients, and put into the host's own prefix of the stack's S3 bucket in
Frankfurt (versioned, object-locked, SSE-KMS). The agent is agent.py."""

import re

from pydantic import Field, field_validator, model_validator

from hastack.role import Role, Section
from hastack.validators import lifecycle_problems

PORTS = ()  # backups push to S3; nothing listens

AGE_RECIPIENT = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")  # bech32, as age-keygen prints it


class BackupConfig(Section):
    """hastack:backup: the bucket, its retention, the schedule and who can decrypt."""

    region: str = Field("eu-central-1", pattern=r"^eu-central-1$")  # backups stay in Frankfurt
    prefix: str = Field("backups/", pattern=r"^[a-z0-9][a-z0-9/_-]*/$")
    retention_days: int = 30  # object lock, compliance mode: no version can be deleted sooner
    noncurrent_expire_days: int = 90  # replaced versions expire after this
    cold_after_days: int = 30  # objects move to GLACIER_IR
    schedule: str = Field("03:15", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")  # daily, UTC
    # seconds between binlog shipments: the recovery point of MariaDB (RPO) is about this plus an upload
    binlog_interval: int = Field(30, ge=10, le=300)
    # age public keys (age1...) that can decrypt the backups; their private keys never reach a server
    recipients: list[str] = []
    # the writers' and the reader's access keys: `hastack rotate backup-keys` raises it; `pulumi up` then makes
    # new keys, converges the hosts onto them, and deletes the old ones last
    key_generation: int = Field(1, ge=1)

    @field_validator("recipients")
    @classmethod
    def _age_recipients(cls, value: list[str]) -> list[str]:
        for r in value:
            if not AGE_RECIPIENT.match(r):
                raise ValueError(f"{r[:20]!r}... is not an age public key (age1 followed by 58 characters, "
                                 "as `age-keygen -y KEYFILE` prints it)")
        return value

    @model_validator(mode="after")
    def _lifecycle_s3_accepts(self):
        # what S3 and the object lock would refuse, each naming its key (hastack:backup.<key>)
        problems = lifecycle_problems(self.retention_days, self.noncurrent_expire_days, self.cold_after_days)
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _check(cfg):
    if cfg.provider == "hetzner" and not cfg.sections["backup"].recipients:
        yield ("hastack:backup.recipients = []: give at least one age public key that can decrypt the backups "
               "(`age-keygen -o backup.key` on the operator's machine, then `age-keygen -y backup.key`); "
               "keep the key file off every server")


def host_prefix(prefix: str, host: str) -> str:
    """Where one host's backups go in the bucket; its writer may put there and nowhere else."""
    return f"{prefix}{host}/"


def _backups(topo, host):
    from roles import role

    return role(host.role).backups


def verifier(topo) -> str | None:
    """The host that test-restores the MariaDB backups every week: the first monitoring host."""
    if not topo.hosts_with_role("mariadb"):
        return None
    monitoring = topo.hosts_with_role("monitoring")
    return monitoring[0].name if monitoring else None


# Where the S3 API is and which CA signs it: None for AWS itself (its regional endpoint,
# the system's CAs); a provider standing in for AWS (the lab) supplies both.
PROVIDED_DEFAULTS = {"backup_s3_endpoint": None, "backup_s3_ca": None}


def _host_data(topo, host):
    cfg = topo.section("backup")
    if host.name == verifier(topo):
        return {"backup_host": host.name, "backup_verifier": True, "backup_kinds": [],
                "backup_bucket_prefix": cfg.prefix, "backup_schedule": cfg.schedule,
                "backup_binlog_interval": cfg.binlog_interval, "backup_age_recipients": list(cfg.recipients)}
    return {
        "backup_host": host.name,
        "backup_prefix": host_prefix(cfg.prefix, host.name),
        "backup_kinds": list(_backups(topo, host)),
        "backup_schedule": cfg.schedule,
        "backup_binlog_interval": cfg.binlog_interval,
        "backup_age_recipients": list(cfg.recipients),
    }


def _from_outputs(outputs, secrets, data):
    """Each backup host gets its own writer's key (put-only, its own prefix) and nothing of the others';
    MariaDB hosts the verification key's public half; the verifier the reader and that key's private half."""
    from roles.backup.verify_key import verify_identity

    if data.get("backup_verifier"):
        reader = secrets.get("restore_reader")
        if not reader or not secrets.get("seed"):
            return {}
        return {"backup_verify_credentials": {**reader, "bucket": outputs.get("backupBucket"),
                                              "region": outputs.get("backupRegion"),
                                              "prefix": data["backup_bucket_prefix"]},
                # during a seed rotation also the other seed's: backups taken before its switch stay verifiable
                "backup_verify_identity": "\n".join(
                    verify_identity(seed)[0] for seed in (secrets["seed"], secrets.get("seed_also")) if seed)}
    writers = secrets.get("backup_writers") or {}
    if data.get("backup_host") not in writers:
        return {}
    verify = ({"backup_verify_recipients": [verify_identity(secrets["seed"])[1]]}
              if secrets.get("seed") and any(k.startswith("mariadb-") for k in data.get("backup_kinds", [])) else {})
    return {**verify, "backup_credentials": {
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
    check=_check,
    runs_on=lambda topo, host: bool(_backups(topo, host)) or host.name == verifier(topo),
    host_data=_host_data,
    from_outputs=_from_outputs,
    cli="roles.backup.cli:app",
    commands={"dr": "roles.backup.dr:app"},
)

DEFAULTS = ROLE.defaults
