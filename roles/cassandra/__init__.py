from roles.cassandra.bundle import CASSANDRA_VERSION, JMX_EXPORTER_VERSION
from hastack.ports import Port

PORTS = (
    Port("cassandra-internode", 7000, sources=("cassandra",), description="Cassandra gossip and streaming (TLS)"),
    Port("cassandra-cql", 9042, sources=("app", "cassandra"), description="CQL native transport (TLS)"),
    Port("cassandra-jmx-exporter", 7070, sources=("monitoring",), description="Prometheus JMX exporter agent"),
)

DEFAULTS = {
    "cassandra_version": CASSANDRA_VERSION,
    "cassandra_jmx_exporter_version": JMX_EXPORTER_VERSION,
    # Where Cassandra comes from. None: the bundle built on the operator's machine
    # (roles.cassandra.bundle, served to the hosts). Otherwise Apache's binary tarball
    # (https://downloads.apache.org/cassandra/<v>/apache-cassandra-<v>-bin.tar.gz) and its
    # published sha256; the agent jar then comes from the bundle lock's pinned checksum.
    "cassandra_tarball_url": None,
    "cassandra_tarball_sha256": None,
    # None: Cassandra's own rule from the machine's memory (roles.cassandra.config.heap_size)
    "cassandra_heap_mb": None,
    "cassandra_num_tokens": 16,
    # JMX listens on loopback only; nodetool and the exporter agent are local
    "cassandra_jmx_port": 7199,
    # Cassandra's start-up checks ask for this many memory map areas
    "cassandra_vm_max_map_count": 1048575,
    "cassandra_extra_jvm_options": [],
}
