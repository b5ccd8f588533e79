"""pyinfra roles, one package per role.

Each role's ``__init__`` is pure data (its ports and defaults) so the
topology model can read it without importing pyinfra; the pyinfra deploy
lives in the role's ``deploy`` module.
"""

import importlib

# Roles a host can be given in the topology. ``base`` runs on every host,
# ``sentinel`` where a Redis Sentinel votes, ``backup`` on the data hosts;
# none of these three is assigned by config.
HOST_ROLES = ("loadbalancer", "app", "mariadb", "redis", "cassandra", "monitoring")
ALL_ROLES = ("base",) + HOST_ROLES + ("sentinel", "backup")

# Hosts that run an agent calling the Hetzner API (load balancers: the
# floating IP; MariaDB masters: fencing) share these settings.
HCLOUD_DEFAULTS = {
    "hcloud_api_endpoint": "https://api.hetzner.cloud/v1",
    "hcloud_api_ca": None,  # PEM of a private CA for the API (the lab's); None: system CAs
    "hcloud_pip_source": ["hcloud==2.27.0"],  # pip arguments installing the Hetzner library
}


def role_module(name: str):
    if name not in ALL_ROLES:
        raise KeyError(f"unknown role {name!r}; known roles: {', '.join(ALL_ROLES)}")
    return importlib.import_module(f"roles.{name}")
