from hastack.ports import Port
from roles import HCLOUD_DEFAULTS

MARIADB_PORT = 3306
WRITER_AGENT_PORT = 9106
DONOR_PORT = 4444

PORTS = (
    Port("mysql", MARIADB_PORT, sources=("app", "mariadb"), description="MariaDB clients and replication (TLS)"),
    Port("mariadb-writer", WRITER_AGENT_PORT, sources=("app", "mariadb"),
         description="which master takes writes (HAProxy agent-check, the peer's agent)"),
    Port("mariadb-seed", DONOR_PORT, sources=("mariadb",), description="mariabackup stream to a re-seeded peer (mutual TLS)"),
    Port("mysqld-exporter", 9104, sources=("monitoring",), description="Prometheus MySQL exporter"),
)

DEFAULTS = {
    **HCLOUD_DEFAULTS,  # the writer agent fences a dead peer through the Hetzner API
    "mariadb_database": "hastack",
    "mariadb_innodb_buffer_pool_size": "256M",
    # seconds the active master may be unreachable before the other takes writes
    "mariadb_failover_after": 2.0,
}
