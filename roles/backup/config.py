"""What the backup role writes: the agent's configuration, its units and timers.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here.
"""

from __future__ import annotations

from typing import Any, Mapping

AGENT = "/opt/hastack/backup_agent.py"
CONFIG = "/etc/hastack/backup.json"
CA_FILE = "/etc/hastack/backup-s3-ca.pem"
SERVICE = "/etc/systemd/system/hastack-backup@.service"
DAILY_TIMER = "/etc/systemd/system/hastack-backup-daily@.timer"
BINLOG_TIMER = "/etc/systemd/system/hastack-backup-binlog.timer"
# the weekly test restore on the monitoring host (verify.py)
VERIFY_SCRIPT = "/opt/hastack/backup_verify.py"
VERIFY_CONFIG = "/etc/hastack/backup-verify.json"
VERIFY_KEY = "/etc/hastack/backup-verify.key"
VERIFY_SERVICE = "/etc/systemd/system/hastack-backup-verify.service"
VERIFY_TIMER = "/etc/systemd/system/hastack-backup-verify.timer"
VERIFY_SCHEDULE = "Sun *-*-* 05:30:00"  # after the daily backups of Sunday
# continuous kinds run on their own timer; the others daily at the schedule
CONTINUOUS = ("mariadb-binlog",)
# the Redis account that may copy an RDB (roles/redis: ROLE, SYNC)
REDIS_USER = "backup"
REDIS_PASSWORD_FILE = "/etc/hastack/backup-redis.password"  # nosec B105  # the path of the password's file


def daily_kinds(data: Mapping[str, Any]) -> list[str]:
    return [k for k in data["backup_kinds"] if k not in CONTINUOUS]


def agent_config(data: Mapping[str, Any], hostname: str) -> dict[str, Any]:
    """/etc/hastack/backup.json (root only: it holds the host's writer key)."""
    cfg = {
        "stack": data["stack"],
        "host": hostname,
        "kinds": list(data["backup_kinds"]),
        **_bucket(data, data["backup_credentials"]),
        "recipients": list(data["backup_age_recipients"]),
        "verify_recipients": list(data.get("backup_verify_recipients") or []),
        "private_ip": data["private_ip"],
    }
    if "mariadb-full" in data["backup_kinds"]:
        cfg["mariadb_database"] = data.get("mariadb_database", "hastack")
    if "cassandra-snapshot" in data["backup_kinds"]:
        cfg["cassandra_datacenter"] = data.get("cassandra_datacenter")
        cfg["cassandra_rack"] = data.get("cassandra_rack")
    if "redis-rdb" in data["backup_kinds"]:
        from roles.redis import REDIS_PORT

        cfg.update(redis_port=REDIS_PORT, redis_user=REDIS_USER, redis_ca="/etc/redis/tls/ca.crt",
                   redis_password_file=REDIS_PASSWORD_FILE)
    return cfg


def verify_config(data: Mapping[str, Any]) -> dict[str, Any]:
    """/etc/hastack/backup-verify.json (root only: it holds the restore reader's key)."""
    return {**_bucket(data, data["backup_verify_credentials"]), "identity_file": VERIFY_KEY}


def _bucket(data: Mapping[str, Any], creds: Mapping[str, Any]) -> dict[str, Any]:
    """Where the bucket is and the identity that reaches it (a writer's, or the reader's)."""
    return {
        "bucket": creds["bucket"],
        "region": creds["region"],
        "prefix": creds["prefix"],
        "access_key_id": creds["access_key_id"],
        "secret_access_key": creds["secret_access_key"],
        "endpoint": data.get("backup_s3_endpoint"),
        "ca_file": CA_FILE if data.get("backup_s3_ca") else None,
    }


def verify_template_vars(hostname: str) -> dict[str, dict[str, Any]]:
    return {
        VERIFY_SERVICE: {"hostname": hostname, "script": VERIFY_SCRIPT, "config": VERIFY_CONFIG},
        VERIFY_TIMER: {"hostname": hostname, "schedule": VERIFY_SCHEDULE},
    }


def template_vars(data: Mapping[str, Any], hostname: str) -> dict[str, dict[str, Any]]:
    return {
        SERVICE: {"hostname": hostname, "agent": AGENT, "config": CONFIG},
        DAILY_TIMER: {"hostname": hostname, "schedule": data["backup_schedule"], "random_delay": "15min"},
        BINLOG_TIMER: {"hostname": hostname, "interval": int(data["backup_binlog_interval"])},
    }
