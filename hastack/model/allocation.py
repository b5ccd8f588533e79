"""Where hosts go: names, locations and private addresses, from each role's placement."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from hastack.model.schema import StackConfigBase, host_names, role_names
from roles import role


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


def allocate(stack: str, cfg: StackConfigBase) -> tuple[Host, ...]:
    """Every host of the stack. Each role owns a fixed block of the subnet, so growing
    one role never renumbers another (a changed private IP would replace the server);
    hosts of a role are spread round-robin over the locations."""
    subnet = ipaddress.ip_network(cfg.network.subnet)
    hosts = []
    for name in role_names():
        rc = cfg.role_config(name)
        first = role(name).placement.first_address
        for i, host in enumerate(host_names(stack, cfg, name)):
            hosts.append(Host(
                name=host,
                role=name,
                index=i + 1,
                location=cfg.locations[i % len(cfg.locations)],
                server_type=rc.server_type,
                private_ip=str(subnet.network_address + first + i),
                volume_size=rc.volume_size,
            ))
    return tuple(hosts)
