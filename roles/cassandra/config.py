"""What the cassandra role writes: each target file and its template variables.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here, so the tests render exactly what hosts receive.
"""

from __future__ import annotations

from typing import Any

from roles.cassandra.bundle import agent_jar
from hastack.pki import Issued
from roles.cassandra import DEFAULTS, PORTS

HOME = "/opt/cassandra"          # a link to /opt/cassandra-<version> (roles.cassandra.bundle.install_script)
CONF_DIR = "/etc/cassandra"
TLS_DIR = "/etc/cassandra/tls"
DATA_DIR = "/var/lib/cassandra"  # the data volume's mount point on real hosts
LOG_DIR = "/var/log/cassandra"
JAVA = "/usr/bin/java"           # Debian 12's openjdk-17-jre-headless
JMX_USER = "jmx"

_PORT = {p.name: p.port for p in PORTS}

# the Prometheus JMX exporter agent's rules (it reloads the file when it changes)
EXPORTER_CONFIG = f"{CONF_DIR}/jmx-exporter.yaml"
JMX_PASSWORD_FILE = f"{CONF_DIR}/jmxremote.password"
# Files a running node reads again by itself, so a change needs no restart: the exporter agent its rules at
# the next scrape, the JVM's JMX login module the password file at every login (a new JMX password logs in
# at once and the old one is refused; the access file, by contrast, is read at start only).
READ_AGAIN_WHEN_USED = (EXPORTER_CONFIG, JMX_PASSWORD_FILE)

# target -> mode; owner cassandra. The JMX files must be readable by their owner alone
# (the JVM refuses a password file others can read).
CONFIG_FILES = {
    f"{CONF_DIR}/cassandra.yaml": "0644",
    f"{CONF_DIR}/cassandra-rackdc.properties": "0644",
    f"{CONF_DIR}/jvm.options": "0644",
    f"{CONF_DIR}/jvm17.options": "0644",
    f"{CONF_DIR}/logback.xml": "0644",
    f"{CONF_DIR}/logback-tools.xml": "0644",
    EXPORTER_CONFIG: "0644",
    f"{CONF_DIR}/jmxremote.access": "0400",
    JMX_PASSWORD_FILE: "0400",
}
UNIT = "/etc/systemd/system/cassandra.service"
NODETOOL = "/usr/local/bin/nodetool"
REPAIR_SERVICE = "/etc/systemd/system/cassandra-repair.service"
REPAIR_TIMER = "/etc/systemd/system/cassandra-repair.timer"
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def heap_size(mem_mb: int, override: int | None = None) -> int:
    """Heap in MiB: Cassandra's rule max(min(1/2 ram, 1G), min(1/4 ram, 8G)), unless overridden."""
    if mem_mb <= 0:
        raise ValueError(f"memory must be positive, got {mem_mb} MiB")
    if override is not None:
        if not 0 < override < mem_mb:
            raise ValueError(f"cassandra_heap_mb {override} must be above 0 and below the machine's {mem_mb} MiB")
        return override
    return max(min(mem_mb // 2, 1024), min(mem_mb // 4, 8192))


def _get(data: Any, key: str) -> Any:
    """host.data (pyinfra) or a plain dict; role defaults fill what the host does not set."""
    value = data.get(key) if hasattr(data, "get") else getattr(data, key, None)
    return DEFAULTS.get(key) if value is None else value


def template_vars(data: Any, mem_mb: int, jmx_password: str) -> dict[str, Any]:
    """Every variable the cassandra templates take, from a host's data (Topology.host_data keys)."""
    private_ip, seeds = _get(data, "private_ip"), list(_get(data, "cassandra_seeds") or [])
    rf = int(_get(data, "cassandra_replication_factor"))
    if not private_ip:
        raise ValueError("cassandra: no private_ip in host data")
    if not seeds:
        raise ValueError("cassandra: no seeds in host data; the topology names at least one")
    if rf < 1:
        raise ValueError(f"cassandra: replication factor must be at least 1, got {rf}")
    if not jmx_password:
        raise ValueError("cassandra: no JMX password")
    return {
        "version": _get(data, "cassandra_version"),
        "cluster_name": _get(data, "cassandra_cluster"),
        "datacenter": _get(data, "cassandra_datacenter"),
        "rack": _get(data, "cassandra_rack"),
        "seeds": seeds,
        "replication_factor": rf,
        "num_tokens": int(_get(data, "cassandra_num_tokens")),
        "listen_address": private_ip,
        "storage_port": _PORT["cassandra-internode"],
        "native_port": _PORT["cassandra-cql"],
        "exporter_port": _PORT["cassandra-jmx-exporter"],
        "jmx_port": int(_get(data, "cassandra_jmx_port")),
        "jmx_user": JMX_USER,
        "jmx_password": jmx_password,
        "jmx_exporter_jar": agent_jar(_get(data, "cassandra_jmx_exporter_version")),
        "heap_mb": heap_size(mem_mb, _get(data, "cassandra_heap_mb")),
        "extra_jvm_options": list(_get(data, "cassandra_extra_jvm_options")),
        "home": HOME,
        "conf_dir": CONF_DIR,
        "tls_dir": TLS_DIR,
        "data_dir": DATA_DIR,
        "log_dir": LOG_DIR,
        "java": JAVA,
    }


def repair_timer_vars(data: Any) -> dict[str, Any]:
    """The repair timer's weekday: one node a day at most, the ring's nodes (by cassandra_index)
    repair on different weekdays."""
    return {"weekday": WEEKDAYS[(int(_get(data, "cassandra_index")) - 1) % 7]}


def node_pem(issued: Issued) -> str:
    """PEMBasedSslContextFactory's keystore: the private key and the certificate chain in one file
    (mode 0600, owner cassandra); the truststore is the CA certificate alone."""
    return issued.key_pem + issued.chain_pem
