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


def role_module(name: str):
    if name not in ALL_ROLES:
        raise KeyError(f"unknown role {name!r}; known roles: {', '.join(ALL_ROLES)}")
    return importlib.import_module(f"roles.{name}")
