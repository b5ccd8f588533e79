"""What the app role writes: each target file and its template variables.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here, so the tests render exactly what hosts receive.
"""

from __future__ import annotations

from typing import Any, Mapping

from roles.app import APP_PORT
from roles.mariadb import MARIADB_PORT, WRITER_AGENT_PORT
from roles.redis import REDIS_PORT

PROXY_CFG = "/etc/haproxy/haproxy.cfg"  # the local proxy to the MariaDB writer
UNIT = "/etc/systemd/system/hastack-app.service"
SETTINGS_DIR = "/etc/hastack-app"       # root-only: passwords and the TLS key, handed over as credentials
CA_FILE = f"{SETTINGS_DIR}/ca.crt"      # the stack CA as the app trusts it (handed over as a credential too)


def proxy_vars(hostname: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "port": MARIADB_PORT,
        "agent_port": WRITER_AGENT_PORT,
        "masters": data["mariadb_masters"],
    }


def unit_vars(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "app_exec": data["app_exec"],
        "bind": data["private_ip"],
        "port": APP_PORT,
        "dependencies": data.get("app_dependencies") or [],
        "tls": data["app_tls"],
        "database": data["mariadb_database"],
        "ca_file": "%d/ca.crt",  # %d: the unit's credentials directory, where CA_FILE arrives
        "ca_credential": CA_FILE,
        "redis_hosts": [f"{ip}:{REDIS_PORT}" for ip in data["redis_hosts"].values()],
    }


def template_vars(hostname: str, data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """target path -> the variables its template (templates/app/<target>.j2) gets.

    ``data`` is the host's data (Topology.host_data and the inventory's additions) over the
    role DEFAULTS.
    """
    return {
        PROXY_CFG: proxy_vars(hostname, data),
        UNIT: unit_vars(data),
    }
