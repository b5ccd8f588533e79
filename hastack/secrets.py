"""Service passwords, derived from one stack secret.

A stack holds a single random seed (`pulumi config set --secret
hastack:secretSeed ...`; the lab makes its own). Every service password is
HMAC-SHA256(seed, purpose): nothing else to store or rotate by hand, and
changing the seed rotates them all on the next converge. Each role names
its accounts and purposes (roles/<role>/__init__.py: passwords).
"""

from __future__ import annotations

import hashlib
import hmac


def derive(seed: str, purpose: str) -> str:
    if not seed:
        raise ValueError("no secret seed: set hastack:secretSeed (pulumi config set --secret)")
    return hmac.new(seed.encode(), purpose.encode(), hashlib.sha256).hexdigest()[:40]


def seeds(secrets) -> list[str]:
    """The seeds whose passwords the services accept: the stack's seed, and while a rotation runs the
    other one (``seed_also``: the next seed before the clients switch to it, the previous one after).
    Clients always use the first (``secrets["seed"]``)."""
    return [s for s in (secrets.get("seed"), secrets.get("seed_also")) if s]


def accepted(seed_list: list[str], prefix: str, users) -> dict[str, list[str]]:
    """user -> every password a service accepts for it, the clients' own first."""
    return {user: [derive(seed, f"{prefix}/{user}") for seed in seed_list] for user in users}
