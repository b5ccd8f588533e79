"""Host data for the template tests: what pyinfra hands a role's deploy on a stack's host.

The stack's topology, exported as `pulumi up` exports it (hastack.outputs, the builder
the program and the lab use), read by the inventory adapter the converge uses (hastack.inventory.host_entries:
the addresses, ids and the secrets a host's roles get), over the role's DEFAULTS (pyinfra's
@deploy data_defaults: host data wins). Every template test takes its data from here and
its variables from the role's config.template_vars, so a test renders what a host gets.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from hastack.inventory import host_entries
from hastack.stackfile import load_stack
from hastack.model import Host, Topology
from hastack.outputs import Provided, Server, stack_outputs as build_outputs
from roles import role
from tests.support import stack_ca

SEED = "template-test-seed"       # hastack:secretSeed: every service password derives from it
FLOATING_IP = "203.0.113.10"      # TEST-NET-3
FLOATING_IP_ID = 4711
FAILOVER_TOKEN = "template-test-hcloud-token"
SERVER_ID_BASE = 1000             # server ids: SERVER_ID_BASE + the host's position in the topology


@functools.lru_cache(maxsize=None)
def topology(stack: str) -> Topology:
    return load_stack(stack)


def public_ip(stack: str, name: str) -> str:
    """The host's public address as these tests give it (TEST-NET-2, by position in the topology)."""
    names = [h.name for h in topology(stack).hosts]
    return f"198.51.100.{names.index(name) + 1}"


def stack_outputs(stack: str) -> dict[str, Any]:
    """The stack's outputs as `pulumi stack output --json --show-secrets` prints them."""
    topo = topology(stack)
    servers = {h.name: Server(server_id=SERVER_ID_BASE + i, public_ipv4=public_ip(stack, h.name))
               for i, h in enumerate(topo.hosts)}
    return build_outputs(topo, servers, floating_ip=FLOATING_IP, floating_ip_id=FLOATING_IP_ID,
                         secrets={"failover_token": FAILOVER_TOKEN, "seed": SEED, "ca": stack_ca.OUTPUT},
                         # the test CA's own directory: every stack's certificates come from it
                         provided=Provided({"pki_dir": str(stack_ca.CA.dir)}))


@functools.lru_cache(maxsize=None)
def _entries(stack: str) -> dict[str, dict[str, Any]]:
    return host_entries(stack_outputs(stack))


def host_data(stack: str, host: Host | str, role_name: str, **overrides: Any) -> dict[str, Any]:
    """``role``'s data on ``host`` of ``stack``: {**DEFAULTS, **inventory host data, **overrides}.

    ``overrides`` stand for group or host data an operator sets (e.g. ``app_tls=False``).
    A fresh copy every call: tests may change it.
    """
    name = host if isinstance(host, str) else host.name
    entry = _entries(stack)[name]
    if role_name not in entry["roles"]:
        raise ValueError(f"{name} of stack {stack} does not run the {role_name} role (it runs {entry['roles']})")
    return copy.deepcopy({**role(role_name).defaults, **entry, **overrides})


def hosts(stack: str, role: str) -> list[Host]:
    """Every host of ``stack`` that runs ``role`` (its own role, or base/sentinel/backup)."""
    topo = topology(stack)
    return [h for h in topo.hosts if role in topo.host_roles(h)]
