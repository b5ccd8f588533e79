"""What the mariadb role writes: each target file and its template variables.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here, so the tests render exactly what hosts receive.
"""

from __future__ import annotations

import shlex
from typing import Any, Mapping

from roles.mariadb import DONOR_PORT

CNF = "/etc/mysql/mariadb.conf.d/60-hastack.cnf"
DONOR_UNIT = "/etc/systemd/system/hastack-mariadb-donor.service"
JOIN = "/usr/local/sbin/hastack-mariadb-join"


# Debian's mariadb.service starts /etc/mysql/debian-start after the server; it runs
# mariadb-upgrade in a background subshell, which on a data directory that came from
# elsewhere (a restore, a seed) rewrites the privilege tables. Account changes made
# meanwhile deadlock with it (and would wait a year), so wait for that subshell by its
# command line: it exists before `systemctl start` returns, where mariadb-upgrade may not
# have started yet. Still running after 10 minutes: an error, never a guess.
def wait_for_upgrade(seconds: int = 600) -> str:
    pattern = "'^/bin/bash /etc/mysql/debian-start'"
    return (f"for i in $(seq {seconds}); do pgrep -f {pattern} >/dev/null || break; sleep 1; done; "
            f"if pgrep -f {pattern} >/dev/null; then "
            f"echo 'MariaDB upgrade (/etc/mysql/debian-start) still running after {seconds} s' >&2; exit 1; fi")


WAIT_FOR_UPGRADE = wait_for_upgrade()

WRITER_UNIT = "/etc/systemd/system/hastack-mariadb-writer.service"
EXPORTER_ARGS = "/etc/default/prometheus-mysqld-exporter"
DATADIR = "/var/lib/mysql"
# The directories a master's data directory holds before it has any data of its own: a
# database is a directory of the data directory, and the package's install (Debian's postinst
# runs `mysql_install_db --skip-test-db`), like a rebuilt server's `mariadb-install-db
# --skip-test-db`, creates only MariaDB's own schemas; a data volume's file system brings
# lost+found. Everything else there is a database somebody made: user data.
SYSTEM_DIRS = ("mysql", "performance_schema", "sys", "lost+found")


def datadir_state(database: str, datadir: str = DATADIR) -> str:
    """A POSIX shell command printing what the data directory holds:

    ``member``  the application's database is there (this master belongs to the pair);
    ``fresh``   no database but MariaDB's own (a new install, or none yet): the only state a
                master may be seeded over;
    ``other <databases>``  databases, but not the application's (a renamed database, a stray
                restore): user data, never seeded over.

    It always exits 0 (the deploy gathers it as a fact; the join command uses it too).
    """
    dd, db = shlex.quote(datadir), shlex.quote(database)
    skip = " ".join(f"! -name {shlex.quote(name)}" for name in SYSTEM_DIRS)
    return (f"if [ -d {dd}/{db} ]; then echo member; "
            f"else dbs=$( (find {dd} -mindepth 1 -maxdepth 1 -type d {skip} -printf '%f\\n' 2>/dev/null || true) "
            f"| sort | tr '\\n' ' '); "
            f"if [ -z \"$dbs\" ]; then echo fresh; else echo \"other ${{dbs% }}\"; fi; fi")


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


def join_vars(hostname: str, data: Mapping[str, Any], datadir: str = DATADIR) -> dict[str, Any]:
    return {
        "hostname": hostname,
        "database": data["mariadb_database"],
        "datadir": datadir,
        "datadir_state": datadir_state(data["mariadb_database"], datadir),
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
