"""What the mariadb role writes: each target file and its template variables.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here, so the tests render exactly what hosts receive.
"""

from __future__ import annotations

from typing import Any, Mapping

from roles.mariadb import DONOR_PORT

CNF = "/etc/mysql/mariadb.conf.d/60-hastack.cnf"
DONOR_UNIT = "/etc/systemd/system/hastack-mariadb-donor.service"
JOIN = "/usr/local/sbin/hastack-mariadb-join"
WRITER_UNIT = "/etc/systemd/system/hastack-mariadb-writer.service"
EXPORTER_ARGS = "/etc/default/prometheus-mysqld-exporter"


def preferred(hostname: str, data: Mapping[str, Any]) -> bool:
    """Whether this master is the pair's preferred writer (the one a new pair is initialised on)."""
    return data["mariadb_writer"] == hostname


def cnf_vars(hostname: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "server_id": data["mariadb_server_id"],
        "gtid_domain_id": data["gtid_domain_id"],
        "auto_increment_increment": data["auto_increment_increment"],
        "auto_increment_offset": data["auto_increment_offset"],
        "buffer_pool_size": data["mariadb_innodb_buffer_pool_size"],
        "private_ip": data["private_ip"],
    }


def donor_vars(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"port": DONOR_PORT, "private_ip": data["private_ip"], "peer_name": data["mariadb_peer"]}


def join_vars(hostname: str, data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "database": data["mariadb_database"],
        "peer_ip": data["mariadb_peer_ip"],
        "peer_name": data["mariadb_peer"],
        "donor_port": DONOR_PORT,
        "preferred": "yes" if preferred(hostname, data) else "no",
    }


def exporter_vars(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"private_ip": data["private_ip"], "password": data["mariadb_passwords"]["exporter"]}


def template_vars(hostname: str, data: Mapping[str, Any], venv: str) -> dict[str, dict[str, Any]]:
    """target path -> the variables its template (templates/mariadb/<target>.j2) gets.

    ``data`` is the host's data (Topology.host_data and the inventory's additions, with
    ``mariadb_passwords``) over the role DEFAULTS; ``venv`` is the writer agent's virtualenv
    (roles.hcloud_agent.VENV).
    """
    return {
        CNF: cnf_vars(hostname, data),
        DONOR_UNIT: donor_vars(data),
        JOIN: join_vars(hostname, data),
        WRITER_UNIT: {"venv": venv},
        EXPORTER_ARGS: exporter_vars(data),
    }
