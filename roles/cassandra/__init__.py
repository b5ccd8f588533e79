"""The cassandra role: an Apache Cassandra ring over TLS with password auth.

The pyinfra deploy installs and configures each node; the ring itself (join
one node at a time, replace, rolling restarts, the superuser) is changed by
the ring step (ring.py) that the converge runs after every host's roles."""

from dataclasses import dataclass

from pydantic import Field, field_validator, model_validator

from hastack.ports import Port
from hastack.role import Placement, Role, Section, Settings
from hastack.secrets import accepted, derive, seeds
from hastack.validators import config_name_problem
from roles.cassandra.bundle import CASSANDRA_VERSION, JMX_EXPORTER_VERSION

CQL_PORT = 9042

PORTS = (
    Port("cassandra-internode", 7000, sources=("cassandra",), description="Cassandra gossip and streaming (TLS)"),
    # monitoring: a TLS handshake checks the certificate and its expiry (no CQL account)
    Port("cassandra-cql", CQL_PORT, sources=("app", "cassandra", "monitoring"), description="CQL native transport (TLS)"),
    Port("cassandra-jmx-exporter", 7070, sources=("monitoring",), description="Prometheus JMX exporter agent"),
)

SINGLE_RACK = "rack1"  # the rack when there are fewer locations than replicas
# admin: the generated superuser that replaces cassandra/cassandra; jmx: nodetool's JMX login
USERS = ("admin", "jmx")


class RingConfig(Section):
    """hastack:cassandra: the ring's shape."""

    cluster_name: str = "hastack"
    datacenter: str = "dc1"
    replication_factor: int = Field(3, ge=1, le=10)

    @field_validator("cluster_name", "datacenter")
    @classmethod
    def _config_name(cls, value: str, info) -> str:
        problem = config_name_problem(value, info.field_name.replace("_", " "))
        if problem:
            raise ValueError(problem)
        return value


class CassandraSettings(Settings):
    """hastack:settings.cassandra -> host data cassandra_<key>."""

    version: str = CASSANDRA_VERSION
    jmx_exporter_version: str = JMX_EXPORTER_VERSION
    # Where Cassandra comes from. None: the bundle built on the operator's machine
    # (roles.cassandra.bundle, served to the hosts). Otherwise Apache's binary tarball
    # (https://downloads.apache.org/cassandra/<v>/apache-cassandra-<v>-bin.tar.gz) and its
    # published sha256; the agent jar then comes from the bundle lock's pinned checksum.
    tarball_url: str | None = Field(None, pattern=r"^https://\S+\.tar\.gz$")
    tarball_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    # None: Cassandra's own rule from the machine's memory (roles.cassandra.config.heap_size)
    heap_mb: int | None = Field(None, ge=256, le=31744)
    num_tokens: int = Field(16, ge=1, le=256)
    # JMX listens on loopback only; nodetool and the exporter agent are local
    jmx_port: int = Field(7199, ge=1024, le=65535)
    # Cassandra's start-up checks ask for this many memory map areas
    vm_max_map_count: int = Field(1048575, ge=65530)
    extra_jvm_options: list[str] = []

    @field_validator("extra_jvm_options")
    @classmethod
    def _jvm_options(cls, value: list[str]) -> list[str]:
        for option in value:
            if not option.startswith("-") or any(c.isspace() for c in option):
                raise ValueError(f"{option!r}: one JVM option per entry, starting with '-', e.g. -Dcassandra.ring_delay_ms=5000")
        return value

    @model_validator(mode="after")
    def _tarball(self):
        if bool(self.tarball_url) != bool(self.tarball_sha256):
            raise ValueError("tarballUrl and tarballSha256 go together (the archive's published sha256)")
        if self.version != CASSANDRA_VERSION and not self.tarball_url:
            raise ValueError(f"version {self.version!r}: the bundle is locked to {CASSANDRA_VERSION} "
                             "(roles/cassandra/bundle.lock); another version needs tarballUrl and tarballSha256")
        return self


@dataclass(frozen=True)
class Node:
    host: str
    rack: str
    seed: bool


@dataclass(frozen=True)
class Ring:
    cluster_name: str
    datacenter: str
    replication_factor: int
    nodes: tuple[Node, ...]
    join_order: dict  # node -> private address, in the order nodes join the ring: seeds first


def _cluster(hosts, cfg) -> Ring:
    ring_cfg: RingConfig = cfg.sections["cassandra"]
    rf = ring_cfg.replication_factor
    cass = [h for h in hosts if h.role == "cassandra"]
    # Racks are locations when there are at least as many as the replication
    # factor: one replica per location. With fewer, Cassandra's token allocation
    # refuses rack counts between 1 and RF, so the ring is one rack and replicas
    # land on distinct nodes (each on its own physical host: spread placement groups).
    locations = list(dict.fromkeys(h.location for h in cass))
    rack_of = {h.name: h.location if len(locations) >= rf else SINGLE_RACK for h in cass}
    racks = list(dict.fromkeys(rack_of.values()))
    # One seed per rack (two when there is a single rack), never every node.
    per_rack = 1 if len(racks) > 1 else 2
    max_seeds = max(1, min(3, len(cass) - 1))
    seeds: list[str] = []
    for rack in racks:
        # within a rack, seeds from different locations where there are any
        members = sorted((h for h in cass if rack_of[h.name] == rack), key=lambda h: h.index)
        firsts = []
        for h in members:
            if all(f.location != h.location for f in firsts):
                firsts.append(h)
        for h in (firsts + [h for h in members if h not in firsts])[:per_rack]:
            if len(seeds) < max_seeds:
                seeds.append(h.name)
    nodes = tuple(Node(host=h.name, rack=rack_of[h.name], seed=h.name in seeds) for h in cass)
    address = {h.name: h.private_ip for h in cass}
    return Ring(cluster_name=ring_cfg.cluster_name, datacenter=ring_cfg.datacenter, replication_factor=rf,
                nodes=nodes, join_order={n.host: address[n.host] for n in sorted(nodes, key=lambda n: not n.seed)})


def _check(cfg):
    count, rf = cfg.role_config("cassandra").count, cfg.sections["cassandra"].replication_factor
    if count < rf:
        yield (f"hastack:roles.cassandra.count = {count}: fewer nodes than hastack:cassandra.replicationFactor ({rf}); "
               f"give at least {max(3, rf)} nodes or lower the replication factor")


def _host_data(topo, host):
    ring: Ring = topo.cluster("cassandra")
    node = next(n for n in ring.nodes if n.host == host.name)
    return {
        "cassandra_cluster": ring.cluster_name,
        "cassandra_datacenter": ring.datacenter,
        "cassandra_rack": node.rack,
        "cassandra_seeds": [topo.host(n.host).private_ip for n in ring.nodes if n.seed],
        "cassandra_replication_factor": ring.replication_factor,
        "cassandra_index": host.index,
        # the ring, in the order nodes join it: seeds first
        "cassandra_nodes": ring.join_order,
    }


def passwords(seed: str) -> dict[str, str]:
    return {user: derive(seed, f"cassandra/{user}") for user in USERS}


def _from_outputs(outputs, secrets, data):
    if not secrets.get("seed"):
        return {}
    # while the seed rotates, the admin's other password lets the converge log in and change it
    return {"cassandra_passwords": passwords(secrets["seed"]),
            "cassandra_accepted": accepted(seeds(secrets), "cassandra", USERS)}


ROLE = Role(
    name="cassandra",
    ports=PORTS,
    settings=CassandraSettings,
    settings_prefix="cassandra_",
    placement=Placement(short_name="cass", first_address=80, min_count=3, max_count=60,
                        count_rule="at least 3 and at most 60", data_volume=True),
    section=("cassandra", RingConfig),
    check=_check,
    cluster=_cluster,
    backups=("cassandra-snapshot",),
    host_data=_host_data,
    from_outputs=_from_outputs,
    host_kernel={"vm.max_map_count": "cassandra_vm_max_map_count"},
    after_roles="roles.cassandra.ring:after_roles",
    after_roles_alone=True,  # the ring needs only its nodes: it forms while other hosts still converge
    after_roles_look="roles.cassandra.ring:look_ahead",
    cli="roles.cassandra.cli:app",
    restore="roles.cassandra.restore:restore",
    restore_cli="roles.cassandra.restore:command",
)

DEFAULTS = ROLE.defaults
