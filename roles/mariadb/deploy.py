"""The mariadb role: one master of a pair replicating each other over TLS, by GTID.

SQL that sets users and replication up is written to root-only files and
applied only when a file changes, so passwords never appear on a command
line and an unchanged pair sees no change.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from hastack.pki import CertificateAuthority
from hastack.templating import template_path
from roles.mariadb import DEFAULTS, MARIADB_PORT
from roles.tls_files import put_tls_files

SQL_DIR = "/var/lib/hastack/mariadb"
CNF = "/etc/mysql/mariadb.conf.d/60-hastack.cnf"


def _q(value: str) -> str:
    """An SQL string literal (the values here are addresses and hex passwords)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def users_sql(d) -> str:
    pw = d.mariadb_passwords
    peer = d.mariadb_peer_ip
    lines = [
        "-- Managed by hastack: accounts of this node, never replicated (each node has its own).",
        "SET sql_log_bin = 0;",
        "DELETE FROM mysql.global_priv WHERE User = '';",
        "DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost';",
        f"CREATE USER IF NOT EXISTS 'repl'@{_q(peer)};",
        f"ALTER USER 'repl'@{_q(peer)} IDENTIFIED BY {_q(pw['repl'])} REQUIRE SSL;",
        f"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'repl'@{_q(peer)};",
        "CREATE USER IF NOT EXISTS 'exporter'@'localhost';",
        f"ALTER USER 'exporter'@'localhost' IDENTIFIED BY {_q(pw['exporter'])} WITH MAX_USER_CONNECTIONS 3;",
        "GRANT PROCESS, BINLOG MONITOR, SLAVE MONITOR, SELECT ON *.* TO 'exporter'@'localhost';",
    ]
    for ip in d.mariadb_app_ips:
        # no READ_ONLY ADMIN (nor SUPER): the passive master's read_only holds for the application
        lines += [
            f"CREATE USER IF NOT EXISTS 'app'@{_q(ip)};",
            f"ALTER USER 'app'@{_q(ip)} IDENTIFIED BY {_q(pw['app'])} REQUIRE SSL;",
            f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX ON `{d.mariadb_database}`.* TO 'app'@{_q(ip)};",
        ]
    return "\n".join(lines + ["FLUSH PRIVILEGES;", ""])


def replication_sql(d) -> str:
    return "\n".join([
        "-- Managed by hastack: replicate from the other master, by GTID, over verified TLS.",
        "STOP SLAVE;",
        (f"CHANGE MASTER TO MASTER_HOST={_q(d.mariadb_peer_ip)}, MASTER_PORT={MARIADB_PORT}, MASTER_USER='repl', "
         f"MASTER_PASSWORD={_q(d.mariadb_passwords['repl'])}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=5, "
         "MASTER_SSL=1, MASTER_SSL_CA='/etc/mysql/tls/ca.crt', MASTER_SSL_VERIFY_SERVER_CERT=1;"),
        "START SLAVE;",
        "",
    ])


def _apply_sql(name: str, path: str, sql: str):
    put = files.put(name=f"{name} (SQL)", src=StringIO(sql), dest=path, user="root", group="root", mode="0600")
    server.shell(name=name, commands=[f"mariadb --batch < {path}"], _if=put.did_change)


@deploy("mariadb", data_defaults=DEFAULTS)
def mariadb() -> None:
    d = host.data
    writer = d.mariadb_writer == host.name
    apt.packages(name="MariaDB", packages=["mariadb-server", "mariadb-backup"], no_recommends=True)

    issued = CertificateAuthority(d.pki_dir, d.stack).issue(f"mariadb-{host.name}", dns=[host.name],
                                                            ips=[d.private_ip], client=True)
    tls = put_tls_files("MariaDB", "/etc/mysql/tls", "mysql", issued)
    cnf = files.template(
        name="MariaDB settings", src=template_path("mariadb", CNF), dest=CNF, user="root", group="root", mode="0644",
        hostname=host.name, server_id=d.mariadb_server_id, gtid_domain_id=d.gtid_domain_id,
        auto_increment_increment=d.auto_increment_increment, auto_increment_offset=d.auto_increment_offset,
        buffer_pool_size=d.mariadb_innodb_buffer_pool_size, private_ip=d.private_ip, writer=writer)
    systemd.service(name="MariaDB running", service="mariadb.service", running=True, enabled=True,
                    restarted=cnf.will_change or any(op.will_change for op in tls))

    files.directory(name="SQL directory", path=SQL_DIR, user="root", group="root", mode="0700")
    _apply_sql("MariaDB accounts", f"{SQL_DIR}/users.sql", users_sql(d))
    if writer:
        # created once on the writer; replication carries it to the other master
        _apply_sql("Application database", f"{SQL_DIR}/database.sql",
                   f"CREATE DATABASE IF NOT EXISTS `{d.mariadb_database}`;\n")
    _apply_sql("Replication from the other master", f"{SQL_DIR}/replication.sql", replication_sql(d))
