"""What the sentinel role writes: its bootstrap configuration and the template's variables.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here, so the tests render exactly what hosts receive.
"""

from __future__ import annotations

from typing import Any, Mapping

from roles.redis import REDIS_PORT, acl_hash
from roles.sentinel import SENTINEL_PORT

SENTINEL_CONF = "/etc/redis/sentinel.conf"
# in the bootstrap file only: once Sentinel has rewritten the file it is Sentinel's
BOOTSTRAP_MARKER = "hastack-sentinel-bootstrap"
# Sentinel keeps its passwords in that file too: a new seed reaches a running Sentinel as commands
AUTH_COMMANDS = "/var/lib/hastack/sentinel/passwords.redis"
AUTH_ACCEPTED = "/var/lib/hastack/sentinel/passwords.accepted"
GROUP = "hastack"


def sentinel_vars(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "private_ip": data["private_ip"],
        "port": SENTINEL_PORT,
        "redis_port": REDIS_PORT,
        "primary_ip": data["redis_primary_ip"],
        "quorum": data["sentinel_quorum"],
        "sentinel_password": data["redis_passwords"]["sentinel"],
        "down_after_ms": data["sentinel_down_after_ms"],
        "failover_timeout_ms": data["sentinel_failover_timeout_ms"],
    }


def template_vars(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """target path -> the variables its template (templates/sentinel/<target>.j2) gets.

    ``data`` is the host's data (Topology.host_data and the inventory's additions, with
    ``redis_passwords``) over the role DEFAULTS.
    """
    return {SENTINEL_CONF: sentinel_vars(data)}


def accepted(data: Mapping[str, Any]) -> list[str]:
    """Every password the Sentinels' clients and peers may use (two while the seed rotates), theirs first."""
    return (data.get("redis_accepted") or {}).get("sentinel") or [data["redis_passwords"]["sentinel"]]


def auth_commands(data: Mapping[str, Any]) -> str:
    """What a running Sentinel is told when the seed changes: the passwords it accepts (hashes), the one it
    gives other Sentinels and the one it gives Redis (the clients' own), then its file rewritten."""
    password = data["redis_passwords"]["sentinel"]
    hashes = " ".join(f"#{acl_hash(pw)}" for pw in accepted(data))
    return "\n".join([
        f"ACL SETUSER default on resetpass {hashes} ~* &* +@all",
        f"SENTINEL CONFIG SET sentinel-pass {password}",
        f"SENTINEL SET {GROUP} auth-pass {password}",
        "SENTINEL FLUSHCONFIG",
        "",
    ])


def apply_auth_command(port: int) -> str:
    """Sends auth_commands to the local Sentinel, logging in with whichever accepted password it still takes
    (the old one before the first change); the passwords stay in root-only files, off the command line."""
    cli = (f"timeout 10 redis-cli --tls --cacert /etc/redis/tls/ca.crt -h 127.0.0.1 -p {port} --no-auth-warning")
    return (f"while read -r pw; do "
            f"if REDISCLI_AUTH=\"$pw\" {cli} PING | grep -qx PONG; then "
            f"out=$(REDISCLI_AUTH=\"$pw\" {cli} < {AUTH_COMMANDS}); echo \"$out\"; "
            f"echo \"$out\" | grep -v -x OK && exit 1; exit 0; fi; done < {AUTH_ACCEPTED}; "
            f"echo 'no accepted password logs in to Sentinel' >&2; exit 1")
