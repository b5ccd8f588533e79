"""Firewall rules from the ports each role declares: the host firewall (nftables,
private network included) and the Hetzner firewall (what comes from outside)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hastack.ports import ADMINS, PRIVATE, PUBLIC, Port

if TYPE_CHECKING:
    from hastack.model.topology import Host, Topology


@dataclass(frozen=True)
class Rule:
    """One resolved firewall rule: a declared port and the CIDRs allowed to reach it."""

    role: str
    port: Port
    cidrs: tuple[str, ...]


def source_cidrs(topo: Topology, source: str) -> tuple[str, ...]:
    if source == PUBLIC:
        return ("0.0.0.0/0", "::/0")
    if source == ADMINS:
        return topo.admin_cidrs
    if source == PRIVATE:
        return (topo.subnet,)
    if source in topo.role_names:
        return tuple(f"{h.private_ip}/32" for h in topo.hosts_with_role(source))
    raise KeyError(f"unknown port source {source!r}")


def host_rules(topo: Topology, host: Host) -> tuple[Rule, ...]:
    """Every rule the host's own firewall (nftables) enforces, private network included."""
    rules = []
    for port in topo.ports(host):
        cidrs: list[str] = []
        for source in port.sources:
            cidrs.extend(c for c in source_cidrs(topo, source) if c not in cidrs)
        if cidrs:
            rules.append(Rule(host.role, port, tuple(cidrs)))
    return tuple(rules)


def public_rules(topo: Topology, role: str) -> tuple[Rule, ...]:
    """Rules for the Hetzner firewall of a role: only what comes from outside.

    Hetzner's firewall filters the public interface only; the private
    network is guarded by each host's nftables rules.
    """
    hosts = topo.hosts_with_role(role)
    if not hosts:
        return ()
    rules = []
    for port in topo.ports(hosts[0]):
        cidrs: list[str] = []
        for source in port.sources:
            if source in (PUBLIC, ADMINS):
                cidrs.extend(source_cidrs(topo, source))
        if cidrs:
            rules.append(Rule(role, port, tuple(cidrs)))
    return tuple(rules)
