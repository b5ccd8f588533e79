"""What the sentinel role writes: its bootstrap configuration and the template's variables.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here, so the tests render exactly what hosts receive.
"""

from __future__ import annotations

from typing import Any, Mapping

from roles.redis import REDIS_PORT
from roles.sentinel import SENTINEL_PORT

SENTINEL_CONF = "/etc/redis/sentinel.conf"
# in the bootstrap file only: once Sentinel has rewritten the file it is Sentinel's
BOOTSTRAP_MARKER = "hastack-sentinel-bootstrap"


def sentinel_vars(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "private_ip": data["private_ip"],
        "port": SENTINEL_PORT,
        "redis_port": REDIS_PORT,
        "primary_ip": data["redis_primary_ip"],
        "quorum": data["sentinel_quorum"],
        "sentinel_password": data["redis_passwords"]["sentinel"],
        "down_after_ms": data["sentinel_down_after_ms"],
        "failover_timeout_ms": data["sentinel_failover_timeout_ms"],
    }


def template_vars(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """target path -> the variables its template (templates/sentinel/<target>.j2) gets.

    ``data`` is the host's data (Topology.host_data and the inventory's additions, with
    ``redis_passwords``) over the role DEFAULTS.
    """
    return {SENTINEL_CONF: sentinel_vars(data)}
