"""The topology: a validated stack config turned into hosts and cluster facts.

Roles are read from their definitions (roles/<role>/__init__.py); this
module names none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hastack.model import firewall
from hastack.model.allocation import Host
from hastack.model.schema import LOCATIONS, StackConfigBase
from hastack.ports import Port
from hastack.role import Placement, Section, merge_data
from roles import all_roles, role


@dataclass(frozen=True)
class Admin:
    name: str
    ssh_key: str


@dataclass(frozen=True)
class Topology:
    stack: str
    config: StackConfigBase = field(repr=False)
    hosts: tuple[Host, ...]
    clusters: dict[str, Any]  # role -> the facts its cluster function gives
    secrets_missing: tuple[str, ...] = ()

    # -- the stack as a whole

    @property
    def provider(self) -> str:
        return self.config.provider

    @property
    def locations(self) -> tuple[str, ...]:
        return tuple(self.config.locations)

    @property
    def network_zone(self) -> str:
        return LOCATIONS[self.config.locations[0]]

    @property
    def ip_range(self) -> str:
        return self.config.network.ip_range

    @property
    def subnet(self) -> str:
        return self.config.network.subnet

    @property
    def image(self) -> str:
        return self.config.image

    @property
    def domain(self) -> str | None:
        return self.config.domain

    @property
    def admins(self) -> tuple[Admin, ...]:
        return tuple(Admin(a.name, a.ssh_key) for a in self.config.admins)

    @property
    def admin_cidrs(self) -> tuple[str, ...]:
        return tuple(self.config.admin_cidrs)

    @property
    def floating_ip_home(self) -> str:
        return self.config.locations[0]

    @property
    def lab(self):
        return self.config.lab

    @property
    def converge(self) -> bool:
        return self.config.converge

    @property
    def restore_from(self) -> str | None:
        """The stack whose backups this one restores from (hastack:restoreFrom), as configured."""
        return self.config.restore_from

    # -- roles

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in all_roles() if r.placement is not None)

    @property
    def roles_in_use(self) -> tuple[str, ...]:
        return tuple(r for r in self.role_names if self.hosts_with_role(r))

    def placement(self, name: str) -> Placement:
        return role(name).placement

    def cluster(self, name: str) -> Any:
        """A role's cluster facts (the Cassandra ring, the MariaDB pair, ...)."""
        return self.clusters[name]

    def section(self, key: str) -> Section:
        """A role's top-level block of the stack file (hastack:cassandra, hastack:backup)."""
        return self.config.sections[key]

    def settings(self, name: str) -> dict[str, Any]:
        """A role's settings as the stack file gives them (host data keys); unset ones are not here."""
        r = role(name)
        return getattr(self.config.settings, name).data(r.settings_prefix)

    def resolved_settings(self, name: str) -> dict[str, Any]:
        """A role's settings with its defaults filled in."""
        r = role(name)
        return {**r.defaults, **self.settings(name)}

    @property
    def floating_ip_hosts(self) -> tuple[Host, ...]:
        """The hosts sharing the floating IP; the first holds it at creation."""
        return tuple(h for h in self.hosts if role(h.role).placement.floating_ip)

    # -- lookups

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r} in stack {self.stack}; hosts: {', '.join(h.name for h in self.hosts)}")

    def hosts_with_role(self, name: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if h.role == name)

    def host_roles(self, host: Host) -> tuple[str, ...]:
        """Every role that runs on a host, in the order they run: its own, and
        those that run beside it (base everywhere, a Sentinel where one votes, ...)."""
        return tuple(r.name for r in all_roles()
                     if r.name == host.role or (r.runs_on is not None and r.runs_on(self, host)))

    # -- ports and firewalls

    def ports(self, host: Host) -> tuple[Port, ...]:
        return tuple(p for name in self.host_roles(host) for p in role(name).ports)

    def host_rules(self, host: Host) -> tuple[firewall.Rule, ...]:
        return firewall.host_rules(self, host)

    def public_rules(self, name: str) -> tuple[firewall.Rule, ...]:
        return firewall.public_rules(self, name)

    # -- what configuration needs

    def host_data(self, host: Host) -> dict[str, Any]:
        """The facts and settings a host's roles need, as plain data (no secrets)."""
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
        }
        for name in data["roles"]:
            r = role(name)
            if r.host_data is not None:
                merge_data(data, r.host_data(self, host))
            merge_data(data, self.settings(name))
        return data
