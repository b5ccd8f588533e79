"""Stack outputs -> a pyinfra inventory, in memory.

Reads what `pulumi stack output --json --show-secrets` prints (the way
pyinfra's terraform connector reads `terraform output -json`): the ``hosts``
output gives names, groups, addresses and data; secrets come from the
``secrets`` output and go only to the hosts that need them. The stack's CA
(``secrets.ca``) goes along as ``stack_ca`` for the converge, which writes it
to a private directory for its run (hastack.stack_ca); it never becomes
pyinfra host data.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from pyinfra.api import Inventory

from hastack.outputs import REQUIRED as REQUIRED_OUTPUTS
from hastack.role import merge_data
from hastack.stack_ca import HOST_DATA_KEY
from roles import role


class InventoryError(ValueError):
    pass


def stack_outputs(stack: str, cwd: str | None = None) -> dict[str, Any]:
    """Ask the Pulumi CLI for a deployed stack's outputs (secrets included, never printed)."""
    proc = subprocess.run(["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack],
                          capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        raise InventoryError(f"pulumi stack output for {stack!r} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout)


def host_entries(outputs: dict[str, Any], ssh_user: str | None = None) -> dict[str, dict[str, Any]]:
    """name -> pyinfra host data (connection, topology data, the secrets its roles need)."""
    missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
    if missing:
        raise InventoryError(f"stack outputs lack {', '.join(missing)}; has `pulumi up` completed for this stack?")
    secrets = outputs.get("secrets") or {}
    if isinstance(secrets, str):
        raise InventoryError("the 'secrets' output is still encrypted; read outputs with --show-secrets")
    entries: dict[str, dict[str, Any]] = {}
    for name, host in outputs["hosts"].items():
        data = dict(host.get("data") or {})
        groups = host.get("groups") or []
        address = host.get("public_ipv4") or host.get("private_ip")
        if not address:
            raise InventoryError(f"hosts.{name}: no address (public_ipv4 or private_ip) in the stack outputs")
        data.update(
            ssh_hostname=address,
            ssh_user=ssh_user or data["admins"][0]["name"],
            _sudo=True,
            groups=groups,
            server_id=host.get("server_id"),
            volume_id=host.get("volume_id"),
            floating_ip=outputs["floatingIp"],
            floating_ip_id=outputs.get("floatingIpId"),
            public_ip=host.get("public_ipv4"),
        )
        if secrets.get("ca"):
            data[HOST_DATA_KEY] = secrets["ca"]  # checked by the converge, which alone uses it
        # each role says what its hosts take from the outputs: no secret reaches a host that does not use it
        for role_name in data.get("roles") or []:
            take = role(role_name).from_outputs
            if take is not None:
                merge_data(data, take(outputs, secrets, data))
        entries[name] = data
    return entries


def make_inventory(entries: dict[str, dict[str, Any]]) -> Inventory:
    groups: dict[str, list[str]] = {}
    for name, data in entries.items():
        for group in data.get("groups", []):
            groups.setdefault(group, []).append(name)
    # the CA key stays out of pyinfra: the converge hands roles a directory (pki_dir) instead
    hosts = [(name, {k: v for k, v in data.items() if k != HOST_DATA_KEY}) for name, data in entries.items()]
    return Inventory(
        (hosts, {}),
        **{group: (names, {}) for group, names in groups.items()},
    )


def inventory_from_outputs(outputs: dict[str, Any], ssh_user: str | None = None) -> Inventory:
    return make_inventory(host_entries(outputs, ssh_user))
