"""The restore-verification key: an age key pair derived from the stack's secret seed.

The weekly verification on the monitoring host restores the MariaDB backups into a
scratch instance, so it must decrypt them; the operators' keys never reach a server.
MariaDB backups are therefore also encrypted to this key (and only they: Cassandra and
Redis backups are not), whose private half lives on the monitoring host alone (0600).
Derived, not stored: HMAC(seed, purpose) is the X25519 secret, so every converge computes
the same pair and changing the seed rotates it.
"""

from __future__ import annotations

import hashlib
import hmac

import bech32
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PURPOSE = "backup/verify-age-key"


def _encode(hrp: str, data: bytes) -> str:
    return bech32.bech32_encode(hrp, bech32.convertbits(data, 8, 5))


def verify_identity(seed: str) -> tuple[str, str]:
    """(AGE-SECRET-KEY-1..., age1...) as age-keygen writes and `age-keygen -y` prints them."""
    if not seed:
        raise ValueError("no secret seed: set hastack:secretSeed (pulumi config set --secret)")
    secret = hmac.new(seed.encode(), PURPOSE.encode(), hashlib.sha256).digest()
    public = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return _encode("age-secret-key-", secret).upper(), _encode("age", public)
