"""Rotating the stack CA without downtime: three converges, as the seed (hastack.seed_rotation).

1. accept: the CA stays and still signs; every service trusts it and the next
   CA (their CA files hold both).
2. switch: the next CA becomes the stack's CA: every certificate is issued
   again by it, host by host through the roles' rolling restarts; services
   still trust both, so a host on the new certificate and one on the old
   keep talking (MariaDB replication, Cassandra internode, Redis, the app).
3. done: the previous CA is dropped; services trust only the new one.

A value is a CA's certificate then its key (PEM), as the secret hastack:ca.
The stage is kept with the stack's secrets (hastack:caNext / hastack:caPrevious,
or the lab's .lab/secrets/ca.next / ca.previous). The new CA carries name
constraints for the stack as it is (hastack.pki.new_ca).
"""

from __future__ import annotations

from dataclasses import dataclass

from hastack.pki import new_ca, split_pem
from hastack.seed_rotation import SeedState

CA, CA_NEXT, CA_PREVIOUS = "ca", "caNext", "caPrevious"


@dataclass(frozen=True)
class CAState(SeedState):
    KEYS = (CA, CA_NEXT, CA_PREVIOUS)
    WHAT = "CA"
    STAGE_TEXT = {
        "accept": "every service trusts the old and the new CA; certificates stay those of the old",
        "switch": "every certificate is issued again by the new CA, host by host; services still trust both",
        "done": "services trust only the new CA; the old one and its certificates no longer verify",
    }

    def __post_init__(self):
        # PEM, however it was stored (the Pulumi CLI prints values without their last newline)
        for name in ("seed", "next", "previous"):
            value = getattr(self, name)
            if value:
                object.__setattr__(self, name, value.strip() + "\n")
        super().__post_init__()

    def new_value(self) -> str:
        raise ValueError("a new CA is made for the stack's names (hastack.ca_rotation.make_next)")

    def secrets(self) -> dict:
        """For the converge: the CA that signs (certificate and key), and the other CA's certificate."""
        also = self.next or self.previous
        return {"ca": split_pem(self.seed), **({"ca_also": [split_pem(also)["cert"]]} if also else {})}


def make_next(stack: str, dns: list[str], networks: list[str]):
    """``new`` for the rotation: a CA for the stack's names and networks, as hastack:ca holds it."""
    def new() -> str:
        cert, key = new_ca(stack, dns, networks)
        return cert + key
    return new


def permitted_names(topo, floating_ip: str | None) -> tuple[list[str], list[str]]:
    """(DNS names, networks) a stack's CA may sign: every name a host of the stack can have (the configured
    names, or <stack>-<short><n> up to the role's largest count, so growing a role needs no new CA), the
    names roles give their certificates (the MariaDB writer's, the site's), the private network and the
    floating IP."""
    from roles import all_roles

    dns: set[str] = set()
    for r in all_roles():
        if r.placement is None:
            continue
        configured = getattr(topo.config.roles, r.name).names
        dns.update(configured or [f"{topo.stack}-{r.placement.short_name}{i}"
                                  for i in range(1, r.placement.max_count + 1)])
    dns.add("mariadb-writer")
    dns.add(topo.domain or f"{topo.stack}.invalid")
    networks = [topo.ip_range] + ([f"{floating_ip}/32"] if floating_ip else [])
    return sorted(dns), networks
