"""The mariadb role: a master-master pair replicating both ways by GTID over TLS,
one writer at a time (the writer agent, writer_agent.py), seeding a rebuilt
master from its peer with mariabackup."""

from dataclasses import dataclass

from pydantic import Field

from hastack.ports import Port
from hastack.role import Placement, Role, Settings
from hastack.secrets import accepted, derive, seeds
from roles import HCLOUD_DEFAULTS, witness

MARIADB_PORT = 3306
WRITER_AGENT_PORT = 9106  # the health answer the app servers' HAProxy reads
WRITER_PEER_PORT = 9109  # the two agents' own channel (mutual TLS)
DONOR_PORT = 4444

PORTS = (
    Port("mysql", MARIADB_PORT, sources=("app", "mariadb"), description="MariaDB clients and replication (TLS)"),
    # the other master too: agents before the witness asked it there (a pair upgraded one by one)
    Port("mariadb-writer", WRITER_AGENT_PORT, sources=("app", "mariadb"),
         description="which master takes writes (the app servers' HAProxy agent-check)"),
    Port("mariadb-writer-peer", WRITER_PEER_PORT, sources=("mariadb",),
         description="the writer agents' channel to each other (mutual TLS)"),
    Port("mariadb-seed", DONOR_PORT, sources=("mariadb",), description="mariabackup stream to a re-seeded peer (mutual TLS)"),
    Port("mysqld-exporter", 9104, sources=("monitoring",), description="Prometheus MySQL exporter"),
)

USERS = ("repl", "app", "exporter")


class MariaDBSettings(Settings):
    """hastack:settings.mariadb -> host data mariadb_<key>."""

    database: str = Field("hastack", pattern=r"^[a-z][a-z0-9_]{0,63}$")  # the application's database
    innodb_buffer_pool_size: str = Field("256M", pattern=r"^\d+[KMG]$")
    # seconds the active master may be unreachable before the other takes writes
    failover_after: float = Field(2.0, ge=1.0, le=60.0)


@dataclass(frozen=True)
class Node:
    host: str
    server_id: int
    gtid_domain_id: int
    auto_increment_offset: int


@dataclass(frozen=True)
class Pair:
    nodes: tuple[Node, ...]
    writer: str  # the master that takes writes at a cold start
    auto_increment_increment: int = 2

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.host == name)

    def peer(self, name: str) -> Node:
        return next(n for n in self.nodes if n.host != name)


def _cluster(hosts, cfg) -> Pair:
    # odd and even keys, one GTID domain each: the two never collide
    nodes = tuple(Node(host=h.name, server_id=h.index, gtid_domain_id=h.index, auto_increment_offset=h.index)
                  for h in hosts if h.role == "mariadb")
    return Pair(nodes=nodes, writer=nodes[0].host)


def _host_data(topo, host):
    pair: Pair = topo.cluster("mariadb")
    node, peer = pair.node(host.name), pair.peer(host.name)
    return {
        "mariadb_server_id": node.server_id,
        "gtid_domain_id": node.gtid_domain_id,
        "auto_increment_increment": pair.auto_increment_increment,
        "auto_increment_offset": node.auto_increment_offset,
        "mariadb_peer": peer.host,
        "mariadb_peer_ip": topo.host(peer.host).private_ip,
        # single writer: the first master takes writes, the other is read-only
        "mariadb_writer": pair.writer,
        "mariadb_app_ips": [h.private_ip for h in topo.hosts_with_role("app")],
        # a new pair of a stack restored from another's backups holds writes until `hastack restore mariadb`
        "mariadb_hold_new_pair": topo.restore_from is not None,
        **witness.client_data(topo),
    }


def client_data(topo) -> dict:
    """What a client of the pair (the app's local proxy) needs."""
    pair: Pair = topo.cluster("mariadb")
    return {
        "mariadb_ips": [topo.host(n.host).private_ip for n in pair.nodes],
        "mariadb_masters": {n.host: topo.host(n.host).private_ip for n in pair.nodes},
        "mariadb_database": topo.resolved_settings("mariadb")["mariadb_database"],
    }


def passwords(seed: str) -> dict[str, str]:
    return {user: derive(seed, f"mariadb/{user}") for user in USERS}


def _from_outputs(outputs, secrets, data):
    out = {"mariadb_peer_server_id": outputs["hosts"][data["mariadb_peer"]].get("server_id")}
    if secrets.get("seed"):
        out["mariadb_passwords"] = passwords(secrets["seed"])
        out["mariadb_accepted"] = accepted(seeds(secrets), "mariadb", USERS)
    if "failover_token" in secrets:  # the writer agent fences a dead peer through the Hetzner API
        out["failover_token"] = secrets["failover_token"]
    return out


ROLE = Role(
    name="mariadb",
    ports=PORTS,
    settings=MariaDBSettings,
    settings_prefix="mariadb_",
    provided_defaults=HCLOUD_DEFAULTS,
    placement=Placement(short_name="db", first_address=60, min_count=2, max_count=2,
                        count_rule="exactly 2: a master-master pair", data_volume=True),
    cluster=_cluster,
    backups=("mariadb-full", "mariadb-binlog"),
    host_data=_host_data,
    from_outputs=_from_outputs,
    after_roles="roles.mariadb.restart:after_roles",  # a new configuration: one master at a time
    restore="roles.mariadb.restore:restore",
    restore_cli="roles.mariadb.restore:command",
)

DEFAULTS = ROLE.defaults
