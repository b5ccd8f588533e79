"""The Pulumi program: config -> topology -> components -> exports."""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from hastack import model as topology
from hastack.ca_rotation import CA_NEXT, CA_PREVIOUS
from hastack.cloud.aws_backup import BackupBucket, restore_source
from hastack.cloud.converge_resource import Converge, code_digest, data_digest
from hastack.cloud.hetzner import HetznerStack
from hastack.outputs import Server, stack_outputs
from hastack.pki import split_pem
from hastack.seed_rotation import NEXT, PREVIOUS, SEED
from hastack.stackfile import PLAIN_TEXT_REFUSED


def read_config() -> tuple[dict[str, Any], set[str]]:
    """The stack's config as the engine handed it over, and which keys are secrets."""
    flat = dict(runtime_config.CONFIG.get()) or runtime_config.get_config_env()
    secret_keys = {k for k in flat if runtime_config.is_config_secret(k)}
    # a credential of any provider set without --secret sits in the stack file in plain text
    exposed = sorted(k for k in flat if k in PLAIN_TEXT_REFUSED and k not in secret_keys)
    if exposed:
        raise pulumi.RunError("invalid stack config:\n" + "\n".join(
            f"  - {k}: is stored in plain text; remove it and run `pulumi config set --secret {k} <value>`"
            for k in exposed))
    plain = {k: v for k, v in flat.items() if k not in secret_keys}
    return topology.config_from_pulumi(plain), secret_keys


def stack_ca(hastack_config: pulumi.Config, stack: str) -> pulumi.Output:
    """The stack CA from its custody, the secret hastack:ca (its certificate, then its key). Without it
    nothing runs, rather than a converge that makes a new CA and replaces every certificate of the stack;
    the converge checks that the key is the certificate's (hastack.inventory.install_stack_ca)."""
    ca = hastack_config.get_secret("ca")
    if ca is None:
        raise pulumi.RunError(f"stack {stack!r} has no CA (the secret hastack:ca): run `hastack ca store --stack "
                              f"{stack}` once; it makes the CA, or stores the one in pki/{stack}/ if this machine "
                              "converged the stack before")
    return pulumi.Output.secret(ca.apply(split_pem))


def ca_also(hastack_config: pulumi.Config) -> dict[str, pulumi.Output]:
    """While the stack CA rotates (hastack.ca_rotation): the other CA's certificate, which services trust too."""
    also = [key for key in (CA_NEXT, CA_PREVIOUS) if hastack_config.get(key) is not None]
    if len(also) == 2:
        raise pulumi.RunError(f"hastack:{CA_NEXT} and hastack:{CA_PREVIOUS} are both set: a CA rotation is either "
                              f"before its switch or after it; `hastack rotate ca` sets one at a time")
    if not also:
        return {}
    return {"ca_also": hastack_config.require_secret(also[0]).apply(lambda pem: [split_pem(pem)["cert"]])}


def seed_secrets(hastack_config: pulumi.Config) -> dict[str, pulumi.Output]:
    """The seed clients use and, while it rotates (hastack.seed_rotation), the other one services accept."""
    seed = hastack_config.require_secret(SEED)
    also = [key for key in (NEXT, PREVIOUS) if hastack_config.get(key) is not None]
    if len(also) == 2:
        raise pulumi.RunError(f"hastack:{NEXT} and hastack:{PREVIOUS} are both set: a seed rotation is either before "
                              f"its switch or after it; `hastack rotate seed` sets one at a time")
    return {"seed": seed, **({"seed_also": hastack_config.require_secret(also[0])} if also else {})}


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

    hastack_config = pulumi.Config("hastack")
    failover_token = hastack_config.require_secret("failoverToken")
    seed = seed_secrets(hastack_config)
    ca = stack_ca(hastack_config, stack)  # before any resource: without it nothing is created
    trusted_too = ca_also(hastack_config)
    hetzner = HetznerStack("hetzner", topo)
    backup = BackupBucket("backup", topo)

    secrets = pulumi.Output.secret({
        "failover_token": failover_token,
        **seed,
        "backup_writers": backup.writer_credentials,  # host -> its own put-only key
        "restore_reader": backup.reader_credentials,
        "ca": ca,
        **trusted_too,
    })
    machines = {
        name: Server(server_id=server.id, public_ipv4=server.ipv4_address, public_ipv6=server.ipv6_address,
                      volume_id=hetzner.volumes[name].id if name in hetzner.volumes else None)
        for name, server in hetzner.servers.items()
    }
    outputs = stack_outputs(topo, machines, floating_ip=hetzner.floating_ip.ip_address,
                            floating_ip_id=hetzner.floating_ip.id, secrets=secrets, backup_bucket=backup.bucket.bucket)
    for name, value in outputs.items():
        pulumi.export(name, value)
    pulumi.export("backupKeyArn", backup.key.arn)
    if topo.restore_from is not None:
        # for `hastack restore` only: the converge does not need the source's reader key
        pulumi.export("restoreSource", restore_source(topo.restore_from))

    if topo.converge:
        # The same converge as `hastack converge`, once every server, volume and
        # the floating IP exist; again whenever host data, a secret, or the code it runs changes.
        code = code_digest()
        Converge("converge", topo.stack, outputs=pulumi.Output.all(**outputs),
                 digest=pulumi.Output.all(outputs["hosts"], secrets).apply(lambda v: data_digest([v[0], v[1], code])),
                 opts=pulumi.ResourceOptions(depends_on=[hetzner, backup]))
