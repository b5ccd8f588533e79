"""Port declarations: each role states what it serves and to whom.

The Hetzner firewall, the host nftables rules and the exposure tests are all
generated from these declarations; nothing else lists ports.
"""

from __future__ import annotations

from dataclasses import dataclass

# Who may reach a port. Besides these, a source may name a host role
# ("app", "monitoring", ...): the private addresses of that role's hosts.
PUBLIC = "public"  # anyone on the internet
ADMINS = "admins"  # the stack's admin CIDRs
PRIVATE = "private"  # every host on the private network

PROTOCOLS = ("tcp", "udp", "icmp", "vrrp")


@dataclass(frozen=True)
class Port:
    name: str
    port: int | None
    protocol: str = "tcp"
    sources: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"port {self.name}: protocol {self.protocol!r} not in {PROTOCOLS}")
        if self.protocol in ("tcp", "udp") and not self.port:
            raise ValueError(f"port {self.name}: {self.protocol} needs a port number")
        if not self.sources:
            raise ValueError(f"port {self.name}: declare who may reach it")

    @property
    def is_internet_facing(self) -> bool:
        """Reachable from outside the private network (Hetzner firewall territory)."""
        return PUBLIC in self.sources or ADMINS in self.sources
