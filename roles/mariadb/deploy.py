"""The mariadb role: one master of a pair replicating each other over TLS, by GTID.

SQL that sets users and replication up is written to root-only files and
applied only when a file changes, so passwords never appear on a command
line and an unchanged pair sees no change. A master without any data of its
own (the second of a new pair, or one rebuilt empty) is seeded from its peer
with mariabackup; one holding databases, or running writable, never is. Both
masters boot read-only; the writer agent makes one writable. A running master
is restarted for a new configuration by the pair's rolling restart, one master
at a time (roles/mariadb/restart.py).
"""

import json
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd

from hastack.host_runs import in_step
from hastack.templating import template_path
from roles import hcloud_agent, rolling_restart
from roles.data_volume import mount_data_volume
from roles import access_gate, witness
from roles.mariadb import DEFAULTS, MARIADB_PORT, WRITER_AGENT_PORT, WRITER_PEER_PORT
from roles.mariadb import config as c
from roles.mariadb.config import CNF, JOIN, WAIT_FOR_UPGRADE
from roles.mariadb.restart import RESTART_MARK
from roles.tls_files import issue, put_tls_files
from roles import packages

SQL_DIR = "/var/lib/hastack/mariadb"
HOLD_FILE = f"{SQL_DIR}/hold-writes"  # the writer agent's hold_file
AGENT_SOURCE = Path(__file__).resolve().parent / "writer_agent.py"
# the name the application's TLS client checks, whichever master its local proxy reaches
WRITER_NAME = "mariadb-writer"


def _q(value: str) -> str:
    """An SQL string literal (the values here are addresses and hex passwords)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def identified(passwords: list[str]) -> str:
    """One password: IDENTIFIED BY. Two, while the seed rotates: either logs in (MariaDB tries each in turn)."""
    if len(passwords) == 1:
        return f"IDENTIFIED BY {_q(passwords[0])}"
    return "IDENTIFIED VIA " + " OR ".join(f"mysql_native_password USING PASSWORD({_q(p)})" for p in passwords)


def users_sql(d) -> str:
    pw = d.mariadb_passwords
    accepted = d.get("mariadb_accepted") or {user: [p] for user, p in pw.items()}
    peer = d.mariadb_peer_ip
    lines = [
        "-- Managed by hastack: accounts of this node, never replicated (each node has its own).",
        "SET sql_log_bin = 0;",
        "SET SESSION lock_wait_timeout = 60;  -- a lock held elsewhere fails the converge, never hangs it",
        "DELETE FROM mysql.global_priv WHERE User = '';",
        "DELETE FROM mysql.global_priv WHERE User = 'root' AND Host <> 'localhost';",
        # a seeded copy carries the donor's accounts: its replication user is for another address
        # (B608: a file the mariadb client runs binds no parameters; the values are the topology's, quoted by _q)
        f"DELETE FROM mysql.global_priv WHERE User = 'repl' AND Host <> {_q(peer)};",  # nosec B608
        f"CREATE USER IF NOT EXISTS 'repl'@{_q(peer)};",
        f"ALTER USER 'repl'@{_q(peer)} {identified(accepted['repl'])} REQUIRE SSL;",
        # SHOW DATABASES: the peer's seed step asks whether this node holds the pair's data
        f"GRANT REPLICATION SLAVE, BINLOG MONITOR, SHOW DATABASES ON *.* TO 'repl'@{_q(peer)};",
        "CREATE USER IF NOT EXISTS 'exporter'@'localhost';",
        f"ALTER USER 'exporter'@'localhost' {identified(accepted['exporter'])} WITH MAX_USER_CONNECTIONS 3;",
        "GRANT PROCESS, BINLOG MONITOR, SLAVE MONITOR, SELECT ON *.* TO 'exporter'@'localhost';",
    ]
    for ip in d.mariadb_app_ips:
        # no READ_ONLY ADMIN (nor SUPER): the passive master's read_only holds for the application
        lines += [
            f"CREATE USER IF NOT EXISTS 'app'@{_q(ip)};",
            f"ALTER USER 'app'@{_q(ip)} {identified(accepted['app'])} REQUIRE SSL;",
            f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, ALTER, INDEX ON `{d.mariadb_database}`.* TO 'app'@{_q(ip)};",
        ]
    return "\n".join(lines + ["FLUSH PRIVILEGES;", ""])


def replication_sql(d) -> str:
    return "\n".join([
        "-- Managed by hastack: replicate from the other master, by GTID, over verified TLS.",
        "STOP SLAVE;",
        # A master that has only written (the first of a new pair) starts from its own position:
        # asking the peer for its domain from the beginning would fail once the peer's binlog
        # begins later (a seeded peer's does). A position already set is not touched: setting it
        # again, even to itself, fails on a writer whose binlog has moved past it (error 1947).
        "DELIMITER //",
        "BEGIN NOT ATOMIC",
        "  IF @@GLOBAL.gtid_slave_pos = '' THEN SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos; END IF;",
        "END//",
        "DELIMITER ;",
        (f"CHANGE MASTER TO MASTER_HOST={_q(d.mariadb_peer_ip)}, MASTER_PORT={MARIADB_PORT}, MASTER_USER='repl', "
         f"MASTER_PASSWORD={_q(d.mariadb_passwords['repl'])}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=5, "
         "MASTER_SSL=1, MASTER_SSL_CA='/etc/mysql/tls/ca.crt', MASTER_SSL_VERIFY_SERVER_CERT=1;"),
        "START SLAVE;",
        "",
    ])


def peer_client_cnf(d) -> str:
    """How this node's seed step reaches the peer: the replication account, verified TLS."""
    return "\n".join([
        "# Managed by hastack: the peer master, as this node's replication account sees it.",
        "[client]",
        f"host = {d.mariadb_peer_ip}",
        f"port = {MARIADB_PORT}",
        "user = repl",
        f"password = {d.mariadb_passwords['repl']}",
        "ssl-ca = /etc/mysql/tls/ca.crt",
        "ssl-verify-server-cert",
        "connect-timeout = 5",
        "",
    ])


def _apply_sql(name: str, path: str, sql: str, force: bool = False):
    """Returns the operation that applies the SQL."""
    put = files.put(name=f"{name} (SQL)", src=StringIO(sql), dest=path, user="root", group="root", mode="0600")
    return server.shell(name=name, commands=[f"{WAIT_FOR_UPGRADE}; mariadb --batch < {path}"],
                        _if=lambda: force or put.did_change())


@deploy("mariadb", data_defaults=DEFAULTS)
def mariadb() -> None:
    d = host.data
    tvars = c.template_vars(host.name, d.dict(), venv=hcloud_agent.VENV)

    def template(name, target, mode):
        return files.template(name=name, src=template_path("mariadb", target), dest=target,
                              user="root", group="root", mode=mode, **tvars[target])

    mount_data_volume("/var/lib/mysql")  # before the package puts its data directory there
    packages.install("MariaDB", packages=["mariadb-server", "mariadb-backup", "socat", "prometheus-mysqld-exporter"],
                 no_recommends=True)

    issued = issue(f"mariadb-{host.name}", ["/etc/mysql/tls/server.crt", "/etc/mysql/tls/server.key"],
                   dns=[host.name, WRITER_NAME], ips=[d.private_ip], client=True)
    tls = put_tls_files("MariaDB", "/etc/mysql/tls", "mysql", issued)
    cnf = template("MariaDB settings", CNF, "0644")
    # member: it holds the application database; fresh: no database but MariaDB's own (what the package's
    # install leaves, or a server rebuilt empty); other: databases, but not the application's (config.datadir_state)
    state = (host.get_fact(Command, c.datadir_state(d.mariadb_database)) or "").split(" ", 1)[0]
    member = state == "member"
    # a master with data is restarted by the pair's rolling restart (roles/mariadb/restart.py), never here;
    # a fresh one serves nothing yet: restarted here, before it is initialised or seeded
    rolling_restart.running("MariaDB", "mariadb.service", RESTART_MARK, [cnf], new_member=state == "fresh")
    # new TLS files alone (a certificate renewed, the stack CA rotating): taken in place for new connections,
    # no restart (a writer's restart fails the writes in flight)
    rolling_restart.reload_in_place("MariaDB takes its new TLS files", "mariadb.service", "mariadb -e 'FLUSH SSL'",
                                    tls)

    files.directory(name="SQL directory", path=SQL_DIR, user="root", group="root", mode="0700")
    _apply_sql("MariaDB accounts", f"{SQL_DIR}/users.sql", users_sql(d))

    # -- membership: a new pair is initialised on the preferred master, the other is seeded from it
    donor = template("Seed donor unit", c.DONOR_UNIT, "0644")
    systemd.service(name="Seed donor running", service="hastack-mariadb-donor.service", running=True, enabled=True,
                    daemon_reload=donor.will_change, restarted=donor.will_change or any(op.will_change for op in tls))
    files.put(name="Peer client settings", src=StringIO(peer_client_cnf(d)), dest="/etc/mysql/hastack-peer.cnf",
              user="root", group="root", mode="0600")
    template("Join command", JOIN, "0750")
    if state == "fresh" and d.get("mariadb_hold_new_pair"):
        # a stack restored from another's backups: no writes until `hastack restore mariadb` ends
        files.file(name="Hold writes until the restore", path=HOLD_FILE, user="root", group="root", mode="0600",
                   touch=True)
    if not member:
        # In step with the peer (hastack.host_runs): both fresh masters of a new pair are set up and
        # answering before either asks the other whether it holds the pair's data, and `init` has run on
        # both before either runs `seed`. Only a fresh master is seeded; the join command refuses one
        # holding other databases, or running writable, and moves the data directory it replaces aside.
        in_step(server.shell(name="Initialise the pair (preferred master of a new pair)", commands=[f"{JOIN} init"]))
        in_step(server.shell(name="Seed from the peer (mariabackup)", commands=[f"{JOIN} seed"]))
        # the copy brought the peer's accounts and replication settings: this node's own go back on top
        _apply_sql("MariaDB accounts after seeding", f"{SQL_DIR}/users.sql", users_sql(d), force=True)
    # in step: a new pair's seeded master has its copy before the other starts replicating from it
    in_step(_apply_sql("Replication from the other master", f"{SQL_DIR}/replication.sql", replication_sql(d),
                       force=not member))

    # -- the single writer
    hcloud_agent.install(system_site_packages=True)  # PyMySQL from Debian, hcloud from pip
    packages.install("PyMySQL for the writer agent", packages=["python3-pymysql"], no_recommends=True)
    agent = files.put(name="Writer agent", src=str(AGENT_SOURCE), dest="/opt/hastack/mariadb_writer.py",
                      user="root", group="root", mode="0644")
    # one certificate (this host's name) for the peer channel and the witness
    witness.put_client_tls()
    # a master its peer fenced may be off while an admin is removed: its gate settles access at boot
    access_gate.install("mariadb")
    wcfg = witness.client_config()
    failover_after = float(d.mariadb_failover_after)
    config = {
        **hcloud_agent.api_config(),
        "name": host.name, "peer_name": d.mariadb_peer, "peer_ip": d.mariadb_peer_ip, "preferred": d.mariadb_writer,
        "bind": d.private_ip, "port": WRITER_AGENT_PORT, "peer_port": WRITER_PEER_PORT,
        "peer_server_id": d.get("mariadb_peer_server_id"),
        "tls_cert": wcfg["witness_cert"], "tls_key": wcfg["witness_key"], "tls_ca": wcfg["witness_ca"],
        "witness_name": wcfg["witness_name"], "witness_ip": wcfg["witness_ip"], "witness_port": wcfg["witness_port"],
        # an isolated writer steps down well before the witness lets the other side claim its epoch
        "failover_after": failover_after, "isolation_after": round(0.4 * failover_after, 2),
        "state_file": f"{SQL_DIR}/writer-state.json",
        "metrics_file": "/var/lib/prometheus/node-exporter/hastack_mariadb_writer.prom",
    }
    agent_cfg = files.put(name="Writer agent configuration", src=StringIO(json.dumps(config, indent=2, sort_keys=True) + "\n"),
                          dest="/etc/hastack/mariadb-writer.json", user="root", group="root", mode="0600")
    unit = template("Writer agent unit", c.WRITER_UNIT, "0644")
    # new TLS files alone are taken by the running agent (writer_agent.TLSFiles): a restart would leave the
    # health port stale for a moment, and the app servers would drop the writer's connections
    systemd.service(name="Writer agent running", service="hastack-mariadb-writer.service", running=True, enabled=True,
                    daemon_reload=unit.will_change,
                    restarted=unit.will_change or agent.will_change or agent_cfg.will_change)

    # -- metrics
    exporter = template("MySQL exporter settings", c.EXPORTER_ARGS, "0600")
    systemd.service(name="MySQL exporter running", service="prometheus-mysqld-exporter.service", running=True,
                    enabled=True, restarted=exporter.will_change)
