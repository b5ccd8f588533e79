"""The backup role: the agent, its root-only configuration, a systemd unit per job
and the timers (daily at the schedule, the binlog every few seconds)."""

import json
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, systemd

from roles.backup import DEFAULTS
from roles.backup import config as c
from roles import packages
from roles.template_file import template_file

AGENT_SOURCE = Path(__file__).resolve().parent / "agent.py"
VERIFY_SOURCE = Path(__file__).resolve().parent / "verify.py"


@deploy("backup", data_defaults=DEFAULTS)
def backup() -> None:
    if host.data.get("backup_verifier"):
        verifier()
    else:
        data_host()


def verifier() -> None:
    """The weekly test restore: a scratch MariaDB (the packaged server stays off), the reader's
    key and the verification key, root only."""
    d = host.data
    if not d.get("backup_verify_credentials"):
        raise ValueError(f"{host.name}: no restore reader or secret seed in the stack outputs (secrets)")
    packages.install("Test restore tools (MariaDB, boto3, zstd, age)",
                 packages=["mariadb-server", "mariadb-backup", "mariadb-client", "python3-boto3", "zstd", "age"],
                 no_recommends=True)
    # only scratch servers run here: the packaged one is neither started nor listening
    systemd.service(name="Packaged MariaDB stays off", service="mariadb.service", running=False, enabled=False)
    files.directory(name="Agent directory", path="/opt/hastack", user="root", group="root", mode="0755")
    files.put(name="Backup agent (shared code)", src=str(AGENT_SOURCE), dest="/opt/hastack/backup_agent.py",
              user="root", group="root", mode="0644")
    files.put(name="Test restore script", src=str(VERIFY_SOURCE), dest=c.VERIFY_SCRIPT, user="root", group="root",
              mode="0755")
    files.directory(name="Agent config directory", path="/etc/hastack", user="root", group="root", mode="0700")
    files.directory(name="Backup state", path="/var/lib/hastack/backup", user="root", group="root", mode="0700")
    # 0711: the scratch server runs as mysql and must reach its own directory (0700, mysql) below
    files.directory(name="Test restore work directory", path="/var/lib/hastack/verify", user="root", group="root",
                    mode="0711")
    files.put(name="Test restore configuration (root only: the reader's key)",
              src=StringIO(json.dumps(c.verify_config(d.dict()), indent=1, sort_keys=True) + "\n"),
              dest=c.VERIFY_CONFIG, user="root", group="root", mode="0600")
    files.put(name="Verification key (root only)", src=StringIO(d.backup_verify_identity + "\n"), dest=c.VERIFY_KEY,
              user="root", group="root", mode="0600")
    if d.backup_s3_ca:
        files.put(name="S3 endpoint CA", src=StringIO(d.backup_s3_ca), dest=c.CA_FILE, user="root", group="root",
                  mode="0644")
    tvars = c.verify_template_vars(host.name)
    units = [template_file("backup", t, tvars, name=f"Test restore unit {Path(t).name}")
             for t in (c.VERIFY_SERVICE, c.VERIFY_TIMER)]
    reload = any(u.will_change for u in units)
    systemd.service(name="Weekly test restore timer", service="hastack-backup-verify.timer", running=True,
                    enabled=True, daemon_reload=reload, restarted=reload)


def data_host() -> None:
    d = host.data
    if not d.get("backup_credentials"):
        raise ValueError(f"{host.name}: no backup credentials in the stack outputs (secrets.backup_writers)")
    if not d.backup_age_recipients:
        raise ValueError(f"{host.name}: no age recipient to encrypt backups to (hastack:backup.recipients)")
    data = d.dict()
    tools = ["python3-boto3", "zstd", "age"]
    if "mariadb-full" in d.backup_kinds:
        tools += ["python3-pymysql", "mariadb-backup"]
    packages.install("Backup tools (boto3, zstd, age)", packages=tools, no_recommends=True)

    files.directory(name="Agent directory", path="/opt/hastack", user="root", group="root", mode="0755")
    files.put(name="Backup agent", src=str(AGENT_SOURCE), dest=c.AGENT, user="root", group="root", mode="0755")
    files.directory(name="Agent config directory", path="/etc/hastack", user="root", group="root", mode="0700")
    files.directory(name="Backup state", path="/var/lib/hastack/backup", user="root", group="root", mode="0700")
    files.put(name="Backup configuration (root only: the host's writer key)",
              src=StringIO(json.dumps(c.agent_config(data, host.name), indent=1, sort_keys=True) + "\n"),
              dest=c.CONFIG, user="root", group="root", mode="0600")
    if d.backup_s3_ca:
        files.put(name="S3 endpoint CA", src=StringIO(d.backup_s3_ca), dest=c.CA_FILE, user="root", group="root",
                  mode="0644")
    if "redis-rdb" in d.backup_kinds:
        files.put(name="Redis password for RDB copies (root only)", src=StringIO(d.redis_passwords[c.REDIS_USER]),
                  dest=c.REDIS_PASSWORD_FILE, user="root", group="root", mode="0600")

    tvars = c.template_vars(data, host.name)
    units = [template_file("backup", t, tvars, name=f"Backup unit {Path(t).name}")
             for t in (c.SERVICE, c.DAILY_TIMER, c.BINLOG_TIMER)]
    reload = any(u.will_change for u in units)
    for kind in c.daily_kinds(data):
        systemd.service(name=f"Daily backup timer: {kind}", service=f"hastack-backup-daily@{kind}.timer",
                        running=True, enabled=True, daemon_reload=reload, restarted=reload)
    binlog = any(k in c.CONTINUOUS for k in d.backup_kinds)
    systemd.service(name="Binlog shipping timer", service="hastack-backup-binlog.timer",
                    running=binlog, enabled=binlog, daemon_reload=reload, restarted=binlog and reload)
