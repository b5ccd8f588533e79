from hastack.ports import Port

PORTS = (
    Port("cassandra-internode", 7000, sources=("cassandra",), description="Cassandra gossip and streaming (TLS)"),
    Port("cassandra-cql", 9042, sources=("app", "cassandra"), description="CQL native transport (TLS)"),
    Port("cassandra-jmx-exporter", 7070, sources=("monitoring",), description="Prometheus JMX exporter agent"),
)
