from hastack.ports import Port

MARIADB_PORT = 3306

PORTS = (
    Port("mysql", MARIADB_PORT, sources=("app", "mariadb"), description="MariaDB clients and replication (TLS)"),
    Port("mysqld-exporter", 9104, sources=("monitoring",), description="Prometheus MySQL exporter"),
)

DEFAULTS = {
    "mariadb_database": "hastack",
    "mariadb_innodb_buffer_pool_size": "256M",
}
