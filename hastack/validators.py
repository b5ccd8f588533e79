"""Checks of single values from a stack file: each returns None or what is wrong and what would be valid."""

from __future__ import annotations

import base64
import binascii

SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


def ssh_public_key_problem(key: str) -> str | None:
    parts = key.split()
    if len(parts) < 2:
        return "not an OpenSSH public key ('<type> <base64> [comment]')"
    if parts[0] not in SSH_KEY_TYPES:
        return f"key type {parts[0]!r} not accepted; valid: {', '.join(SSH_KEY_TYPES)}"
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return "key body is not base64"
    if len(blob) < 4 or blob[4:4 + int.from_bytes(blob[:4], "big")].decode(errors="replace") != parts[0]:
        return "key body does not match its type (mangled or truncated?)"
    if parts[0] == "ssh-rsa" and len(blob) < 270:
        return "RSA keys under 2048 bits are refused"
    return None


def domain_problem(value: str) -> str | None:
    return None


def image_problem(value: str) -> str | None:
    return None
