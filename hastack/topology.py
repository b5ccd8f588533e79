"""The topology model: stack config in, hosts and cluster facts out.

Pure Python (no Pulumi, no pyinfra). Pulumi, the lab and the inventory all
read this; nothing re-derives hosts, addresses or cluster roles elsewhere.
Every problem in a config is reported at once, each naming the key, the
value and what would be valid, before any resource or connection is made.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from hastack.ports import ADMINS, PRIVATE, PUBLIC, Port
from roles import HOST_ROLES, role_module

NAMESPACE = "hastack"

# Hetzner Cloud locations and the network zone each belongs to. A private
# network's subnet lives in one zone, so a stack's locations must share it.
LOCATIONS = {
    "fsn1": "eu-central",
    "nbg1": "eu-central",
    "hel1": "eu-central",
    "ash": "us-east",
    "hil": "us-west",
    "sin": "ap-southeast",
}

SERVER_TYPES = frozenset(
    "cx22 cx32 cx42 cx52 cx23 cx33 cx43 cx53 "
    "cpx11 cpx21 cpx31 cpx41 cpx51 cpx12 cpx22 cpx32 cpx42 cpx52 cpx62 "
    "cax11 cax21 cax31 cax41 "
    "ccx13 ccx23 ccx33 ccx43 ccx53 ccx63".split()
)

PROVIDERS = ("hetzner", "lab")

# Secrets a real (Hetzner) stack cannot run without. The lab makes its own.
REQUIRED_SECRETS = {
    "hetzner": ("hastack:failoverToken", "hastack:secretSeed"),
    "lab": (),
}

SECRET_KEYS = frozenset(k for keys in REQUIRED_SECRETS.values() for k in keys)

# Fixed address blocks per role inside the subnet, so growing one role never
# renumbers another (a changed private IP would replace the server).
ADDRESS_BLOCKS = {
    "loadbalancer": (10, 2),
    "app": (20, 40),
    "mariadb": (60, 2),
    "redis": (70, 5),
    "cassandra": (80, 60),
    "monitoring": (150, 1),
}

SHORT_NAMES = {
    "loadbalancer": "lb",
    "app": "app",
    "mariadb": "db",
    "redis": "redis",
    "cassandra": "cass",
    "monitoring": "mon",
}

# count rules: (minimum, maximum, why)
COUNT_RULES = {
    "loadbalancer": (2, 2, "exactly 2: one active, one standby sharing the floating IP"),
    "app": (1, 40, "between 1 and 40"),
    "mariadb": (2, 2, "exactly 2: a master-master pair"),
    "redis": (1, 5, "between 1 and 5 (2 or more for automatic failover)"),
    "cassandra": (3, 60, "at least 3 and at most 60"),
    "monitoring": (1, 1, "exactly 1"),
}

DATA_ROLES = ("mariadb", "cassandra")
SINGLE_RACK = "rack1"  # the Cassandra rack when there are fewer locations than replicas

RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))

SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
RESERVED_USERS = frozenset("root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc nobody sshd systemd-network systemd-resolve messagebus _apt mysql redis cassandra prometheus haproxy".split())


class TopologyError(ValueError):
    """A stack config that must not be built; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid stack config:\n" + "\n".join(f"  - {p}" for p in problems))


# ---------------------------------------------------------------- config schema


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class AdminConfig(_Model):
    name: str
    ssh_key: str


class RoleConfig(_Model):
    count: int
    server_type: str
    volume_size: int | None = Field(default=None, description="GB, data roles only")
    names: list[str] | None = None


class NetworkConfig(_Model):
    ip_range: str = "10.20.0.0/16"
    subnet: str = "10.20.1.0/24"


class CassandraConfig(_Model):
    cluster_name: str = "hastack"
    datacenter: str = "dc1"
    replication_factor: int = 3


class BackupConfig(_Model):
    region: str = "eu-central-1"
    prefix: str = "backups/"
    retention_days: int = 30
    noncurrent_expire_days: int = 90
    cold_after_days: int = 30
    schedule: str = "03:15"


class LabConfig(_Model):
    public_range: str = "198.18.0.0/24"
    floating_ip: str = "198.18.0.100"


class StackConfig(_Model):
    provider: str = "hetzner"
    locations: list[str]
    network: NetworkConfig = NetworkConfig()
    admins: list[AdminConfig] = []
    admin_cidrs: list[str] = []
    image: str = "debian-12"
    domain: str | None = None
    roles: dict[str, RoleConfig]
    cassandra: CassandraConfig = CassandraConfig()
    backup: BackupConfig = BackupConfig()
    lab: LabConfig | None = None
    converge: bool = True


# ---------------------------------------------------------------- the model


@dataclass(frozen=True)
class Host:
    name: str
    role: str
    index: int  # 1-based within its role
    location: str
    server_type: str
    private_ip: str
    volume_size: int | None = None

    @property
    def labels(self) -> dict[str, str]:
        return {"role": self.role}


@dataclass(frozen=True)
class MariaDBNode:
    host: str
    server_id: int
    gtid_domain_id: int
    auto_increment_offset: int


@dataclass(frozen=True)
class CassandraNode:
    host: str
    rack: str
    seed: bool


@dataclass(frozen=True)
class Rule:
    """One resolved firewall rule: a declared port and the CIDRs allowed to reach it."""

    role: str
    port: Port
    cidrs: tuple[str, ...]


@dataclass(frozen=True)
class Admin:
    name: str
    ssh_key: str


@dataclass(frozen=True)
class Topology:
    stack: str
    provider: str
    locations: tuple[str, ...]
    network_zone: str
    ip_range: str
    subnet: str
    image: str
    domain: str | None
    admins: tuple[Admin, ...]
    admin_cidrs: tuple[str, ...]
    hosts: tuple[Host, ...]
    floating_ip_home: str
    mariadb: tuple[MariaDBNode, ...]
    mariadb_auto_increment_increment: int
    cassandra_cluster: str
    cassandra_datacenter: str
    cassandra_replication_factor: int
    cassandra: tuple[CassandraNode, ...]
    redis_primary: str
    redis_replicas: tuple[str, ...]
    redis_sentinels: tuple[str, ...]
    monitoring: str
    backup: BackupConfig
    lab: LabConfig | None = None
    converge: bool = True
    secrets_missing: tuple[str, ...] = field(default=())

    # -- lookups

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in stack {self.stack}; hosts: {', '.join(h.name for h in self.hosts)}")

    def hosts_with_role(self, role: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role == role)

    @property
    def loadbalancers(self) -> tuple[Host, ...]:
        return self.hosts_with_role("loadbalancer")

    @property
    def roles_in_use(self) -> tuple[str, ...]:
        return tuple(r for r in HOST_ROLES if self.hosts_with_role(r))

    def host_roles(self, host: Host) -> tuple[str, ...]:
        """Every role that runs on a host: base, its own, a Redis Sentinel where
        one votes, backup on data hosts."""
        extra = ("sentinel",) if host.name in self.redis_sentinels else ()
        extra += ("backup",) if host.role in DATA_ROLES else ()
        return ("base", host.role) + extra

    # -- ports and firewalls

    def ports(self, host: Host) -> tuple[Port, ...]:
        ports: list[Port] = []
        for role in self.host_roles(host):
            ports.extend(role_module(role).PORTS)
        return tuple(ports)

    def source_cidrs(self, source: str) -> tuple[str, ...]:
        if source == PUBLIC:
            return ("0.0.0.0/0", "::/0")
        if source == ADMINS:
            return self.admin_cidrs
        if source == PRIVATE:
            return (self.subnet,)
        if source in HOST_ROLES:
            return tuple(f"{h.private_ip}/32" for h in self.hosts_with_role(source))
        raise KeyError(f"unknown port source {source!r}")

    def host_rules(self, host: Host) -> tuple[Rule, ...]:
        """Every rule the host's own firewall (nftables) enforces, private network included."""
        rules = []
        for port in self.ports(host):
            cidrs: list[str] = []
            for source in port.sources:
                cidrs.extend(c for c in self.source_cidrs(source) if c not in cidrs)
            if cidrs:
                rules.append(Rule(host.role, port, tuple(cidrs)))
        return tuple(rules)

    def public_rules(self, role: str) -> tuple[Rule, ...]:
        """Rules for the Hetzner firewall of a role: only what comes from outside.

        Hetzner's firewall filters the public interface only; the private
        network is guarded by each host's nftables rules.
        """
        hosts = self.hosts_with_role(role)
        if not hosts:
            return ()
        rules = []
        for port in self.ports(hosts[0]):
            cidrs: list[str] = []
            for source in port.sources:
                if source in (PUBLIC, ADMINS):
                    cidrs.extend(self.source_cidrs(source))
            if cidrs:
                rules.append(Rule(role, port, tuple(cidrs)))
        return tuple(rules)

    # -- per-host facts for configuration

    @property
    def cassandra_join_order(self) -> dict[str, str]:
        """Cassandra node -> private address, in the order nodes join the ring: seeds first."""
        return {n.host: self.host(n.host).private_ip for n in sorted(self.cassandra, key=lambda n: not n.seed)}

    def host_data(self, host: Host) -> dict[str, Any]:
        """The facts a host's roles need, as plain data (no secrets)."""
        data: dict[str, Any] = {
            "stack": self.stack,
            "role": host.role,
            "roles": list(self.host_roles(host)),
            "location": host.location,
            "private_ip": host.private_ip,
            "subnet": self.subnet,
            "admins": [{"name": a.name, "ssh_key": a.ssh_key} for a in self.admins],
            "etc_hosts": {h.name: h.private_ip for h in self.hosts},
            "firewall": [
                {"name": r.port.name, "port": r.port.port, "protocol": r.port.protocol, "cidrs": list(r.cidrs)}
                for r in self.host_rules(host)
            ],
            "monitoring_ip": self.host(self.monitoring).private_ip,
        }
        if host.role == "loadbalancer":
            peer = next(h for h in self.loadbalancers if h.name != host.name)
            data["lb_index"] = host.index
            data["vrrp_peer"] = peer.name
            data["vrrp_peer_ip"] = peer.private_ip
            data["domain"] = self.domain
            data["app_servers"] = {h.name: h.private_ip for h in self.hosts_with_role("app")}
        if host.role == "mariadb":
            node = next(n for n in self.mariadb if n.host == host.name)
            peer = next(n for n in self.mariadb if n.host != host.name)
            data.update(
                mariadb_server_id=node.server_id,
                gtid_domain_id=node.gtid_domain_id,
                auto_increment_increment=self.mariadb_auto_increment_increment,
                auto_increment_offset=node.auto_increment_offset,
                mariadb_peer=peer.host,
                mariadb_peer_ip=self.host(peer.host).private_ip,
                # single writer: the first master takes writes, the other is read-only
                mariadb_writer=self.mariadb[0].host,
                mariadb_app_ips=[h.private_ip for h in self.hosts_with_role("app")],
            )
        if host.role == "cassandra":
            node = next(n for n in self.cassandra if n.host == host.name)
            data.update(
                cassandra_cluster=self.cassandra_cluster,
                cassandra_datacenter=self.cassandra_datacenter,
                cassandra_rack=node.rack,
                cassandra_seeds=[self.host(n.host).private_ip for n in self.cassandra if n.seed],
                cassandra_replication_factor=self.cassandra_replication_factor,
                cassandra_index=host.index,
                # the ring, in the order nodes join it: seeds first
                cassandra_nodes=self.cassandra_join_order,
            )
        if host.role in ("redis", "app") or host.name in self.redis_sentinels:
            data.update(
                redis_primary=self.redis_primary,
                redis_primary_ip=self.host(self.redis_primary).private_ip,
                redis_sentinels=[self.host(s).private_ip for s in self.redis_sentinels],
                redis_hosts={h.name: h.private_ip for h in self.hosts_with_role("redis")},
            )
        if host.role == "app":
            data["mariadb_ips"] = [self.host(n.host).private_ip for n in self.mariadb]
            data["mariadb_masters"] = {n.host: self.host(n.host).private_ip for n in self.mariadb}
            # the local proxy to the writer; both masters' certificates carry this name
            data["etc_hosts"]["mariadb-writer"] = "127.0.0.1"
        return data


# ---------------------------------------------------------------- loading


def config_from_pulumi(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Pulumi's flat ``namespace:key`` map (values JSON-encoded) -> this model's keys.

    Keys of other namespaces (``hcloud:token``, ``aws:region``) are left out.
    """
    out: dict[str, Any] = {}
    for key, value in flat.items():
        ns, _, name = key.partition(":")
        if ns != NAMESPACE:
            continue
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[name] = value
    return out


def _fmt_loc(loc: tuple) -> str:
    key = NAMESPACE + ":"
    for i, part in enumerate(loc):
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += ("." if i else "") + str(part)
    return key


def _pydantic_problems(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        key = _fmt_loc(e["loc"])
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            valid = _valid_keys(parent)
            if parent == ("roles",):
                continue  # reported with the list of roles below
            problems.append(f"{key}: unknown key; valid keys here: {', '.join(valid)}")
        elif e["type"] == "missing":
            problems.append(f"{key}: required but not set")
        else:
            problems.append(f"{key} = {e.get('input')!r}: {e['msg']}")
    return problems


def _valid_keys(loc: tuple) -> list[str]:
    model: type[BaseModel] = StackConfig
    for part in loc:
        if isinstance(part, int):
            continue
        fld = next((f for n, f in model.model_fields.items() if to_camel(n) == part or n == part), None)
        if fld is None:
            return []
        ann = fld.annotation
        for candidate in getattr(ann, "__args__", ()) + (ann,):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
            if getattr(candidate, "__origin__", None) is list:
                inner = candidate.__args__[0]
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break
    return sorted(to_camel(n) for n in model.model_fields)


def load(stack: str, config: Mapping[str, Any], secret_keys: set[str] | frozenset[str] = frozenset(),
         require_secrets: bool = True) -> Topology:
    """Validate a stack's config (keys without the ``hastack:`` prefix) and build its topology.

    ``secret_keys`` names the secrets set for the stack (``hastack:failoverToken``);
    with ``require_secrets=False`` (offline plan) missing ones are recorded, not fatal.
    """
    problems: list[str] = []
    if not NAME_RE.match(stack or ""):
        problems.append(f"stack name {stack!r}: must be lowercase letters, digits and '-', starting with a letter")

    raw = dict(config)
    for key in SECRET_KEYS:
        name = key.partition(":")[2]
        if name in raw:
            raw.pop(name)
            problems.append(f"{key}: is stored in plain text; remove it and run `pulumi config set --secret {key} <value>`")

    # Unknown roles are reported with the valid list before pydantic sees them.
    roles_raw = raw.get("roles")
    if isinstance(roles_raw, Mapping):
        for role in roles_raw:
            if role not in HOST_ROLES:
                problems.append(f"{NAMESPACE}:roles.{role}: unknown role; valid roles: {', '.join(HOST_ROLES)}")
        raw["roles"] = {k: v for k, v in roles_raw.items() if k in HOST_ROLES}

    try:
        cfg = StackConfig.model_validate(raw)
    except ValidationError as err:
        raise TopologyError(problems + _pydantic_problems(err)) from None

    problems += _check(stack, cfg)
    missing = tuple(k for k in REQUIRED_SECRETS.get(cfg.provider, ()) if k not in secret_keys)
    if missing and require_secrets:
        for key in missing:
            problems.append(f"{key}: required secret is not set; run `pulumi config set --secret {key} <value>`")
    if problems:
        raise TopologyError(problems)
    return _build(stack, cfg, missing)


def _check(stack: str, cfg: StackConfig) -> list[str]:
    p: list[str] = []
    ns = NAMESPACE

    if cfg.provider not in PROVIDERS:
        p.append(f"{ns}:provider = {cfg.provider!r}: valid providers: {', '.join(PROVIDERS)}")

    # locations
    if not cfg.locations:
        p.append(f"{ns}:locations = []: give at least one Hetzner location, e.g. [nbg1, fsn1]")
    for i, loc in enumerate(cfg.locations):
        if loc not in LOCATIONS:
            p.append(f"{ns}:locations[{i}] = {loc!r}: unknown location; valid: {', '.join(LOCATIONS)}")
    zones = {LOCATIONS[loc] for loc in cfg.locations if loc in LOCATIONS}
    if len(zones) > 1:
        p.append(f"{ns}:locations = {cfg.locations}: locations span network zones {sorted(zones)}; "
                 "one private network needs them all in one zone (e.g. fsn1, nbg1, hel1 are eu-central)")
    if len(set(cfg.locations)) != len(cfg.locations):
        p.append(f"{ns}:locations = {cfg.locations}: a location is listed twice")

    # networks
    nets: dict[str, ipaddress.IPv4Network] = {}
    for key, value in (("network.ipRange", cfg.network.ip_range), ("network.subnet", cfg.network.subnet)):
        try:
            net = ipaddress.ip_network(value, strict=True)
        except ValueError as e:
            p.append(f"{ns}:{key} = {value!r}: not a network in CIDR form ({e}); e.g. 10.20.0.0/16")
            continue
        if net.version != 4 or not any(net.subnet_of(r) for r in RFC1918):
            p.append(f"{ns}:{key} = {value!r}: not a private range; use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
            continue
        nets[key] = net
    if len(nets) == 2:
        rng, sub = nets["network.ipRange"], nets["network.subnet"]
        if not sub.subnet_of(rng):
            p.append(f"{ns}:network.subnet = {cfg.network.subnet!r}: must lie inside {ns}:network.ipRange ({cfg.network.ip_range})")
        if sub.prefixlen > 24:
            p.append(f"{ns}:network.subnet = {cfg.network.subnet!r}: too small; use a /24 or larger (role address blocks need 160 addresses)")
    if cfg.lab is not None:
        try:
            pub = ipaddress.ip_network(cfg.lab.public_range, strict=True)
        except ValueError as e:
            p.append(f"{ns}:lab.publicRange = {cfg.lab.public_range!r}: not a network in CIDR form ({e})")
        else:
            for key, net in nets.items():
                if pub.overlaps(net):
                    p.append(f"{ns}:lab.publicRange = {cfg.lab.public_range!r}: overlaps {ns}:{key} ({net}); choose ranges that do not overlap")
            try:
                fip = ipaddress.ip_address(cfg.lab.floating_ip)
                if fip not in pub:
                    p.append(f"{ns}:lab.floatingIp = {cfg.lab.floating_ip!r}: must lie inside {ns}:lab.publicRange ({pub})")
            except ValueError:
                p.append(f"{ns}:lab.floatingIp = {cfg.lab.floating_ip!r}: not an IPv4 address")
    elif cfg.provider == "lab":
        p.append(f"{ns}:lab: required when {ns}:provider is 'lab' (give publicRange and floatingIp)")

    # admins
    if not cfg.admins:
        p.append(f"{ns}:admins = []: at least one admin with a name and an SSH public key is required (SSH is key-only)")
    seen_admins: set[str] = set()
    for i, admin in enumerate(cfg.admins):
        if not USER_RE.match(admin.name) or admin.name in RESERVED_USERS:
            p.append(f"{ns}:admins[{i}].name = {admin.name!r}: must be a Linux user name ([a-z_][a-z0-9_-]*, max 32) and not a system account")
        if admin.name in seen_admins:
            p.append(f"{ns}:admins[{i}].name = {admin.name!r}: duplicate admin name")
        seen_admins.add(admin.name)
        problem = _ssh_key_problem(admin.ssh_key)
        if problem:
            p.append(f"{ns}:admins[{i}].sshKey = {_short(admin.ssh_key)!r}: {problem}")

    if not cfg.admin_cidrs:
        p.append(f"{ns}:adminCidrs = []: list the networks admins connect from (office, VPN), e.g. [203.0.113.0/24]")
    for i, cidr in enumerate(cfg.admin_cidrs):
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as e:
            p.append(f"{ns}:adminCidrs[{i}] = {cidr!r}: not a network in CIDR form ({e}); e.g. 203.0.113.0/24")
            continue
        if net.prefixlen == 0:
            p.append(f"{ns}:adminCidrs[{i}] = {cidr!r}: would open SSH to the whole internet; "
                     "list your office or VPN ranges instead, e.g. 203.0.113.0/24")

    # roles
    for role in HOST_ROLES:
        rc = cfg.roles.get(role)
        lo, hi, why = COUNT_RULES[role]
        if rc is None:
            p.append(f"{ns}:roles.{role}: required but not set (count: {why})")
            continue
        if not lo <= rc.count <= hi:
            p.append(f"{ns}:roles.{role}.count = {rc.count}: must be {why}")
        if rc.server_type not in SERVER_TYPES:
            p.append(f"{ns}:roles.{role}.serverType = {rc.server_type!r}: unknown server type; valid: {', '.join(sorted(SERVER_TYPES))}")
        if role in DATA_ROLES:
            if rc.volume_size is None or not 10 <= rc.volume_size <= 10240:
                p.append(f"{ns}:roles.{role}.volumeSize = {rc.volume_size!r}: data roles need a volume of 10 to 10240 GB")
        elif rc.volume_size is not None:
            p.append(f"{ns}:roles.{role}.volumeSize = {rc.volume_size!r}: only {' and '.join(DATA_ROLES)} get data volumes")
        if rc.names is not None:
            if len(rc.names) != rc.count:
                p.append(f"{ns}:roles.{role}.names = {rc.names}: gives {len(rc.names)} names for count {rc.count}")
            for j, name in enumerate(rc.names):
                if not NAME_RE.match(name):
                    p.append(f"{ns}:roles.{role}.names[{j}] = {name!r}: must be a hostname (lowercase letters, digits, '-')")

    cass = cfg.roles.get("cassandra")
    rf = cfg.cassandra.replication_factor
    if rf < 1:
        p.append(f"{ns}:cassandra.replicationFactor = {rf}: must be at least 1 (3 is usual)")
    if cass is not None and cass.count < rf:
        p.append(f"{ns}:roles.cassandra.count = {cass.count}: fewer nodes than {ns}:cassandra.replicationFactor ({rf}); "
                 f"give at least {max(3, rf)} nodes or lower the replication factor")
    if not re.match(r"^[A-Za-z0-9_-]{1,48}$", cfg.cassandra.datacenter):
        p.append(f"{ns}:cassandra.datacenter = {cfg.cassandra.datacenter!r}: letters, digits, '_' and '-' only")

    # duplicate names (only possible with explicit names)
    if not p:
        names: dict[str, str] = {}
        for role in HOST_ROLES:
            for name in _names(stack, cfg, role):
                if name in names:
                    p.append(f"{ns}:roles.{role}.names: host name {name!r} is also used by role {names[name]}; host names must be unique")
                names[name] = role

    # backup
    if cfg.backup.region != "eu-central-1":
        p.append(f"{ns}:backup.region = {cfg.backup.region!r}: backups stay in Frankfurt; valid: eu-central-1")
    if not 1 <= cfg.backup.retention_days <= 3650:
        p.append(f"{ns}:backup.retentionDays = {cfg.backup.retention_days}: must be 1 to 3650")
    if cfg.backup.noncurrent_expire_days <= cfg.backup.retention_days:
        p.append(f"{ns}:backup.noncurrentExpireDays = {cfg.backup.noncurrent_expire_days}: must exceed "
                 f"{ns}:backup.retentionDays ({cfg.backup.retention_days}); locked versions cannot expire earlier")
    if not re.match(r"^([01]\d|2[0-3]):[0-5]\d$", cfg.backup.schedule):
        p.append(f"{ns}:backup.schedule = {cfg.backup.schedule!r}: daily time as HH:MM (UTC), e.g. 03:15")
    if not re.match(r"^[a-z0-9][a-z0-9/_-]*/$", cfg.backup.prefix):
        p.append(f"{ns}:backup.prefix = {cfg.backup.prefix!r}: lowercase path ending in '/', e.g. backups/")
    return p


def _ssh_key_problem(key: str) -> str | None:
    parts = key.split()
    if len(parts) < 2:
        return "not an OpenSSH public key ('<type> <base64> [comment]')"
    if parts[0] not in SSH_KEY_TYPES:
        return f"key type {parts[0]!r} not accepted; valid: {', '.join(SSH_KEY_TYPES)}"
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return "key body is not base64"
    # The blob starts with its own type name; a mismatch means a mangled paste.
    if len(blob) < 4 or blob[4:4 + int.from_bytes(blob[:4], "big")].decode(errors="replace") != parts[0]:
        return "key body does not match its type (mangled or truncated?)"
    if parts[0] == "ssh-rsa" and len(blob) < 270:
        return "RSA keys under 2048 bits are refused"
    return None


def _short(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


def _names(stack: str, cfg: StackConfig, role: str) -> list[str]:
    rc = cfg.roles[role]
    if rc.names:
        return list(rc.names)
    return [f"{stack}-{SHORT_NAMES[role]}{i}" for i in range(1, rc.count + 1)]


def _build(stack: str, cfg: StackConfig, secrets_missing: tuple[str, ...]) -> Topology:
    subnet = ipaddress.ip_network(cfg.network.subnet)
    hosts: list[Host] = []
    for role in HOST_ROLES:
        rc = cfg.roles[role]
        base, _size = ADDRESS_BLOCKS[role]
        for i, name in enumerate(_names(stack, cfg, role)):
            hosts.append(Host(
                name=name,
                role=role,
                index=i + 1,
                # Spread each role round-robin over the locations.
                location=cfg.locations[i % len(cfg.locations)],
                server_type=rc.server_type,
                private_ip=str(subnet.network_address + base + i),
                volume_size=rc.volume_size,
            ))

    def names(role: str) -> list[Host]:
        return [h for h in hosts if h.role == role]

    mariadb = tuple(
        MariaDBNode(host=h.name, server_id=h.index, gtid_domain_id=h.index, auto_increment_offset=h.index)
        for h in names("mariadb")
    )

    cass_hosts = names("cassandra")
    # Racks are locations when there are at least as many as the replication
    # factor: one replica per location. With fewer, Cassandra's token allocation
    # refuses rack counts between 1 and RF, so the ring is one rack and replicas
    # land on distinct nodes (each on its own physical host: spread placement groups).
    locations = list(dict.fromkeys(h.location for h in cass_hosts))
    rack_of = {h.name: h.location if len(locations) >= cfg.cassandra.replication_factor else SINGLE_RACK
               for h in cass_hosts}
    racks = list(dict.fromkeys(rack_of.values()))
    # One seed per rack (two when there is a single rack), never every node.
    per_rack = 1 if len(racks) > 1 else 2
    max_seeds = max(1, min(3, len(cass_hosts) - 1))
    seeds: list[str] = []
    for rack in racks:
        # within a rack, seeds from different locations where there are any
        members = sorted((h for h in cass_hosts if rack_of[h.name] == rack), key=lambda h: h.index)
        firsts: list[Host] = []
        for h in members:
            if all(f.location != h.location for f in firsts):
                firsts.append(h)
        for h in (firsts + [h for h in members if h not in firsts])[:per_rack]:
            if len(seeds) < max_seeds:
                seeds.append(h.name)
    cassandra = tuple(CassandraNode(host=h.name, rack=rack_of[h.name], seed=h.name in seeds) for h in cass_hosts)

    redis_hosts = [h.name for h in names("redis")]
    monitoring = names("monitoring")[0].name
    # Sentinel needs three voters in separate failure domains: the Redis hosts
    # plus the monitoring host. A single Redis host gets no automatic failover.
    sentinels = tuple(redis_hosts + [monitoring])[:3] if len(redis_hosts) >= 2 else ()

    return Topology(
        stack=stack,
        provider=cfg.provider,
        locations=tuple(cfg.locations),
        network_zone=LOCATIONS[cfg.locations[0]],
        ip_range=cfg.network.ip_range,
        subnet=cfg.network.subnet,
        image=cfg.image,
        domain=cfg.domain,
        admins=tuple(Admin(a.name, a.ssh_key) for a in cfg.admins),
        admin_cidrs=tuple(cfg.admin_cidrs),
        hosts=tuple(hosts),
        floating_ip_home=cfg.locations[0],
        mariadb=mariadb,
        mariadb_auto_increment_increment=2,
        cassandra_cluster=cfg.cassandra.cluster_name,
        cassandra_datacenter=cfg.cassandra.datacenter,
        cassandra_replication_factor=cfg.cassandra.replication_factor,
        cassandra=cassandra,
        redis_primary=redis_hosts[0],
        redis_replicas=tuple(redis_hosts[1:]),
        redis_sentinels=sentinels,
        monitoring=monitoring,
        backup=cfg.backup,
        lab=cfg.lab,
        converge=cfg.converge,
        secrets_missing=secrets_missing,
    )
