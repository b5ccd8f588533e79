"""Stack outputs -> a pyinfra inventory, in memory.

Reads what `pulumi stack output --json --show-secrets` prints (the way
pyinfra's terraform connector reads `terraform output -json`): the ``hosts``
output gives names, groups, addresses and data; secrets come from the
``secrets`` output and go only to the hosts that need them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from pyinfra.api import Inventory

from hastack.outputs import REQUIRED as REQUIRED_OUTPUTS
from hastack.pki import CAMismatch, CertificateAuthority
from hastack.role import merge_data
from roles import role
# Where a converge keeps the stack CA (from the stack's outputs) and what it issued, per stack; keys 0600,
# never committed. HASTACK_PKI_ROOT moves it out of the checkout.
DEFAULT_PKI_ROOT = Path(__file__).resolve().parent.parent / "pki"


def pki_root() -> Path:
    return Path(os.environ.get("HASTACK_PKI_ROOT") or DEFAULT_PKI_ROOT)


class InventoryError(ValueError):
    pass


def stack_outputs(stack: str, cwd: str | None = None) -> dict[str, Any]:
    """Ask the Pulumi CLI for a deployed stack's outputs (secrets included, never printed)."""
    try:
        proc = subprocess.run(["pulumi", "stack", "output", "--json", "--show-secrets", "--stack", stack],
                              capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError:
        raise InventoryError(f"the Pulumi CLI is not installed: it reads the outputs of stack {stack!r} "
                             "(`pulumi stack output`); install it, or pass --outputs FILE where a command takes it") from None
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
    installed: set[str] = set()
    for name, host in outputs["hosts"].items():
        data = dict(host.get("data") or {})
        groups = host.get("groups") or []
        address = host.get("public_ipv4") or host.get("private_ip")
        if not address:
            raise InventoryError(f"hosts.{name}: no address (public_ipv4 or private_ip) in the stack outputs")
        admins = [a["name"] for a in data.get("admins") or []]
        if ssh_user and ssh_user not in admins:
            # the converge would remove the very account it logs in with, halfway through
            raise InventoryError(f"the converge connects as {ssh_user!r} (HASTACK_SSH_USER), which is not an admin "
                                 f"of the stack (admins: {', '.join(admins) or 'none'}): the converge would remove "
                                 "the account it logs in with; connect as one of the admins that stay")
        data.update(
            ssh_hostname=address,
            ssh_user=ssh_user or admins[0],
            _sudo=True,
            groups=groups,
            server_id=host.get("server_id"),
            volume_id=host.get("volume_id"),
            floating_ip=outputs["floatingIp"],
            floating_ip_id=outputs.get("floatingIpId"),
            public_ip=host.get("public_ipv4"),
            pki_dir=data.get("pki_dir") or str(pki_root() / data.get("stack", "stack")),
            # while the stack's CA rotates, the other CA its services trust (hastack.ca_rotation)
            ca_also=list(secrets.get("ca_also") or []),
        )
        if data["pki_dir"] not in installed:
            install_stack_ca(data["pki_dir"], data.get("stack", "stack"), secrets.get("ca"), data["ca_also"])
            installed.add(data["pki_dir"])
        # each role says what its hosts take from the outputs: no secret reaches a host that does not use it
        for role_name in data.get("roles") or []:
            take = role(role_name).from_outputs
            if take is not None:
                merge_data(data, take(outputs, secrets, data))
        entries[name] = data
    return entries


def install_stack_ca(pki_dir: str, stack: str, ca: dict[str, str] | None, also: list[str] = ()) -> None:
    """The stack's CA from its outputs into ``pki_dir`` (0600), before any role issues a certificate."""
    if not ca or not ca.get("cert") or not ca.get("key"):
        raise InventoryError(f"the stack outputs hold no CA (secrets.ca): run `hastack ca store --stack {stack}` "
                             "and `pulumi up`; a converge never makes a new CA")
    try:
        CertificateAuthority(pki_dir, stack, also=also).install(ca["cert"], ca["key"])
    except (ValueError, CAMismatch) as e:
        raise InventoryError(f"the stack CA: {e}") from None


class StackInventory(Inventory):
    """pyinfra's inventory, each host's group data merged once. Host data is looked up some
    176,000 times in a converge of the lab (every operation and fact asks each of pyinfra's global arguments),
    and pyinfra merges the host's groups' data again for each; the groups' data never changes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._merged_groups: dict[tuple[str, ...], dict] = {}

    def get_groups_data(self, groups):
        key = tuple(groups)
        if key not in self._merged_groups:
            self._merged_groups[key] = super().get_groups_data(groups)
        return self._merged_groups[key]


def make_inventory(entries: dict[str, dict[str, Any]]) -> Inventory:
    groups: dict[str, list[str]] = {}
    for name, data in entries.items():
        for group in data.get("groups", []):
            groups.setdefault(group, []).append(name)
    return StackInventory(
        ([(name, data) for name, data in entries.items()], {}),
        **{group: (names, {}) for group, names in groups.items()},
    )


def inventory_from_outputs(outputs: dict[str, Any], ssh_user: str | None = None) -> Inventory:
    return make_inventory(host_entries(outputs, ssh_user))
