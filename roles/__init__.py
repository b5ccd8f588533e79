"""pyinfra roles, one package per role.

Each role's ``__init__`` defines ``ROLE`` (hastack.role.Role): pure data and
functions that the model, the inventory and the converge read without
importing pyinfra. The pyinfra deploy lives in the role's ``deploy`` module.
"""

import importlib
from functools import cache

# Every role, in the order a host runs them. ``base`` runs on every host,
# ``sentinel`` where a Redis Sentinel votes, ``backup`` on hosts with a data
# volume; the others are given hosts by the stack file (hastack:roles).
ALL_ROLES = ("base", "loadbalancer", "app", "mariadb", "redis", "cassandra", "monitoring", "sentinel", "backup")

# Hosts that run an agent calling the Hetzner API (load balancers: the
# floating IP; MariaDB masters: fencing) share these; a provider (the lab) may
# supply its own endpoint and CA.
HCLOUD_DEFAULTS = {
    "hcloud_api_endpoint": "https://api.hetzner.cloud/v1",
    "hcloud_api_ca": None,  # PEM of a private CA for the API (the lab's); None: system CAs
    # pip's index options for the agents' locked packages (roles/agent-requirements.txt); none: PyPI
    "agent_pip_index": [],
}


@cache
def role(name: str):
    """The role's definition (hastack.role.Role)."""
    if name not in ALL_ROLES:
        raise KeyError(f"unknown role {name!r}; known roles: {', '.join(ALL_ROLES)}")
    return importlib.import_module(f"roles.{name}").ROLE


def all_roles() -> tuple:
    return tuple(role(n) for n in ALL_ROLES)


def host_roles() -> tuple[str, ...]:
    """Roles the stack file gives hosts, in address order."""
    return tuple(r.name for r in all_roles() if r.placement is not None)
