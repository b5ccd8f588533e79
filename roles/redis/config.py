"""What the redis role writes: each target file and its template variables.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here, so the tests render exactly what hosts receive.
"""

from __future__ import annotations

from typing import Any, Mapping

from roles.base.config import stack_ca_file
from roles.redis import acl_hash
from roles.redis import REDIS_PORT

USERS_ACL = "/etc/redis/users.acl"
# what never changes at runtime; redis.conf includes it. In a directory of its own: lynis takes every
# *.conf directly in /etc/redis for one more Redis configuration, and would count each finding twice.
SETTINGS_DIR = "/etc/redis/conf.d"
SETTINGS = f"{SETTINGS_DIR}/hastack.conf"
FORMER_SETTINGS = "/etc/redis/hastack.conf"  # where earlier versions put it
REDIS_CONF = "/etc/redis/redis.conf"    # the include and the replication line
EXPORTER_ARGS = "/etc/default/prometheus-redis-exporter"
SENTINEL_AUTH = "/etc/redis/.sentinel-auth"  # lets the converge ask the Sentinels, root only


def replica_of(data: Mapping[str, Any], current_primary: str | None = None) -> str | None:
    """The primary this host replicates: ``current_primary`` (what the Sentinels report, None
    before any runs) or the topology's; None when that is this host itself."""
    primary = current_primary or data["redis_primary_ip"]
    return None if primary == data["private_ip"] else primary


def users_vars(data: Mapping[str, Any]) -> dict[str, Any]:
    # every password an account accepts (two while the seed rotates), the clients' own first
    accepted = data.get("redis_accepted") or {user: [pw] for user, pw in data["redis_passwords"].items()}
    return {"hashes": {user: [acl_hash(pw) for pw in pws] for user, pws in accepted.items()}}


def settings_vars(hostname: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "private_ip": data["private_ip"],
        "port": REDIS_PORT,
        "replica_password": data["redis_passwords"]["replica"],
        "appendfsync": data["redis_appendfsync"],
        "maxmemory": data["redis_maxmemory"],
        "maxmemory_policy": data["redis_maxmemory_policy"],
    }


def redis_conf_vars(hostname: str, data: Mapping[str, Any], current_primary: str | None = None) -> dict[str, Any]:
    return {"hostname": hostname, "primary_ip": replica_of(data, current_primary), "port": REDIS_PORT,
            "settings": SETTINGS}


def exporter_vars(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"private_ip": data["private_ip"], "port": REDIS_PORT, "password": data["redis_passwords"]["exporter"],
            "ca_file": stack_ca_file(data["stack"])}


def template_vars(hostname: str, data: Mapping[str, Any],
                  current_primary: str | None = None) -> dict[str, dict[str, Any]]:
    """target path -> the variables its template (templates/redis/<target>.j2) gets.

    ``data`` is the host's data (Topology.host_data and the inventory's additions, with
    ``redis_passwords``) over the role DEFAULTS; ``current_primary`` is the primary's address
    as the Sentinels report it at converge time (None when none answers).
    """
    return {
        USERS_ACL: users_vars(data),
        SETTINGS: settings_vars(hostname, data),
        REDIS_CONF: redis_conf_vars(hostname, data, current_primary),
        EXPORTER_ARGS: exporter_vars(data),
    }
