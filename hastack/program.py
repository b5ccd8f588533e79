"""The Pulumi program: config -> topology -> components -> exports."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from hastack import topology
from hastack.cloud.aws_backup import BackupBucket
from hastack.cloud.converge_resource import Converge, code_digest, data_digest
from hastack.cloud.hetzner import HetznerStack


def read_config() -> tuple[dict[str, Any], set[str]]:
    """The stack's config as the engine handed it over, and which keys are secrets."""
    flat = dict(runtime_config.CONFIG.get()) or runtime_config.get_config_env()
    secret_keys = {k for k in flat if runtime_config.is_config_secret(k)}
    plain = {k: v for k, v in flat.items() if k not in secret_keys}
    return topology.config_from_pulumi(plain), secret_keys


def hosts_output(topo: topology.Topology, hetzner: HetznerStack) -> dict[str, Any]:
    """name -> groups, addresses, ids and data: what the inventory adapter reads. No secrets."""
    out: dict[str, Any] = {}
    for host in topo.hosts:
        server = hetzner.servers[host.name]
        volume = hetzner.volumes.get(host.name)
        out[host.name] = {
            "groups": list(topo.host_roles(host)) + [host.location],
            "public_ipv4": server.ipv4_address,
            "public_ipv6": server.ipv6_address,
            "private_ip": host.private_ip,
            "server_id": server.id,
            "volume_id": volume.id if volume else None,
            "data": topo.host_data(host),
        }
    return out


def main() -> None:
    stack = pulumi.get_stack()
    config, secret_keys = read_config()
    if config.get("provider", "hetzner") != "hetzner":
        raise pulumi.RunError(f"stack {stack!r} has hastack:provider {config['provider']!r}; it runs on local machines: "
                              "use `hastack lab up`, not `pulumi up`")
    try:
        topo = topology.load(stack, config, secret_keys=secret_keys)
    except topology.TopologyError as err:
        # RunError: the message, without a Python traceback; nothing was registered.
        raise pulumi.RunError(str(err)) from None

    failover_token = pulumi.Config("hastack").require_secret("failoverToken")
    seed = pulumi.Config("hastack").require_secret("secretSeed")
    hetzner = HetznerStack("hetzner", topo)
    backup = BackupBucket("backup", topo)

    hosts = hosts_output(topo, hetzner)
    pulumi.export("hosts", hosts)
    pulumi.export("floatingIp", hetzner.floating_ip.ip_address)
    pulumi.export("floatingIpId", hetzner.floating_ip.id)
    pulumi.export("backupBucket", backup.bucket.bucket)
    pulumi.export("backupRegion", topo.backup.region)
    pulumi.export("backupKeyArn", backup.key.arn)
    secrets = pulumi.Output.secret({
        "failover_token": failover_token,
        "seed": seed,
        "backup_writer": backup.writer_credentials,
        "restore_reader": backup.reader_credentials,
    })
    pulumi.export("secrets", secrets)

    if topo.converge:
        # The same converge as `hastack converge`, once every server, volume and
        # the floating IP exist; again whenever host data, roles or templates change.
        outputs = pulumi.Output.all(
            hosts=hosts, floatingIp=hetzner.floating_ip.ip_address, floatingIpId=hetzner.floating_ip.id,
            backupBucket=backup.bucket.bucket, backupRegion=topo.backup.region, secrets=secrets)
        code = code_digest()
        Converge("converge", topo.stack, outputs=outputs,
                 digest=pulumi.Output.from_input(hosts).apply(lambda h: data_digest([h, code])),
                 opts=pulumi.ResourceOptions(depends_on=[hetzner, backup]))
