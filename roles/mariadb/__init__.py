from hastack.ports import Port

PORTS = (
    Port("mysql", 3306, sources=("app", "mariadb"), description="MariaDB clients and replication (TLS)"),
    Port("mysqld-exporter", 9104, sources=("monitoring",), description="Prometheus MySQL exporter"),
)
