"""The stack outputs contract: what a provisioned stack tells its configuration.

One builder writes it, whoever provisioned the machines: the Pulumi program
(with the cloud's server ids and addresses, as Pulumi outputs) and the lab
(with its own, as plain values). The inventory only reads it. It is what
`pulumi stack output --json --show-secrets` prints:

  hosts         name -> groups, addresses, server and volume ids, data (no secrets)
  floatingIp    the site's address; floatingIpId its id at the provider
  backupBucket  the S3 bucket (and backupRegion)
  secrets       one secret output: the failover token, the seed, the backup keys, the stack CA
                (ca.cert, ca.key: from the secret hastack:ca)
  restoreSource only with hastack:restoreFrom (never in the lab), one secret output: the
                source stack's name as configured (stack), its backupBucket, backupRegion
                and secrets.restore_reader, which `hastack restore --from <stack>` reads
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from hastack.model import Topology

REQUIRED = ("hosts", "floatingIp")


@dataclass(frozen=True)
class Server:
    """What the provider knows of one host (plain values or Pulumi outputs)."""

    server_id: Any
    public_ipv4: Any
    public_ipv6: Any = None
    volume_id: Any = None


@dataclass(frozen=True)
class Provided:
    """Host data a provider supplies in place of the defaults: the lab's Hetzner API
    endpoint and CA, where hosts get Python packages, where the stack CA lives."""

    data: Mapping[str, Any] = field(default_factory=dict)


def host_outputs(topo: Topology, machines: Mapping[str, Server], provided: Provided = Provided()) -> dict[str, Any]:
    """name -> the host's entry in the ``hosts`` output."""
    out: dict[str, Any] = {}
    for host in topo.hosts:
        machine = machines[host.name]
        out[host.name] = {
            "groups": list(topo.host_roles(host)) + [host.location],
            "public_ipv4": machine.public_ipv4,
            "public_ipv6": machine.public_ipv6,
            "private_ip": host.private_ip,
            "server_id": machine.server_id,
            "volume_id": machine.volume_id,
            "data": {**topo.host_data(host), **provided.data},
        }
    return out


def stack_outputs(topo: Topology, machines: Mapping[str, Server], *, floating_ip: Any, floating_ip_id: Any,
                  secrets: Any, backup_bucket: Any = None, provided: Provided = Provided()) -> dict[str, Any]:
    """Every output a stack exports, by name."""
    outputs = {
        "hosts": host_outputs(topo, machines, provided),
        "floatingIp": floating_ip,
        "floatingIpId": floating_ip_id,
        "secrets": secrets,
    }
    if backup_bucket is not None:
        outputs["backupBucket"] = backup_bucket
        outputs["backupRegion"] = topo.section("backup").region
    return outputs
