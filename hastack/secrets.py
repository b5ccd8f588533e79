"""Service passwords, derived from one stack secret.

A stack holds a single random seed (`pulumi config set --secret
hastack:secretSeed ...`; the lab makes its own). Every service password is
HMAC-SHA256(seed, purpose): nothing else to store or rotate by hand, and
changing the seed rotates them all on the next converge.
"""

from __future__ import annotations

import hashlib
import hmac

REDIS_USERS = ("app", "replica", "sentinel", "exporter")


def derive(seed: str, purpose: str) -> str:
    if not seed:
        raise ValueError("no secret seed: set hastack:secretSeed (pulumi config set --secret)")
    return hmac.new(seed.encode(), purpose.encode(), hashlib.sha256).hexdigest()[:40]


def redis_passwords(seed: str) -> dict[str, str]:
    return {user: derive(seed, f"redis/{user}") for user in REDIS_USERS}


def acl_hash(password: str) -> str:
    """Redis ACL files take SHA-256 hashes, so no password sits on disk in clear."""
    return hashlib.sha256(password.encode()).hexdigest()


MARIADB_USERS = ("repl", "app", "exporter")


def mariadb_passwords(seed: str) -> dict[str, str]:
    return {user: derive(seed, f"mariadb/{user}") for user in MARIADB_USERS}


# admin: the generated superuser that replaces cassandra/cassandra; jmx: nodetool's JMX login
CASSANDRA_USERS = ("admin", "jmx")


def cassandra_passwords(seed: str) -> dict[str, str]:
    return {user: derive(seed, f"cassandra/{user}") for user in CASSANDRA_USERS}
