"""Rotating the failover token (hastack:failoverToken).

A Hetzner API token is made and deleted only in the Hetzner console (Security ->
API tokens), so the operator makes the new one there. Then: the new token is
checked against the API (it must read the stack's floating IP), stored as the
stack's secret, converged onto the agent hosts (the load balancers and the
MariaDB masters: roles/hcloud_agent.py), and every agent host is checked to hold
it. Only then may the old one be deleted in the console: until that moment it
still works, for whoever kept a copy. The agents read the token file at each
call, so no agent restarts.
"""

from __future__ import annotations

import hashlib
import shlex
from typing import Callable, Mapping

from roles.hcloud_agent import TOKEN_FILE


class TokenError(Exception):
    pass


def fingerprint(token: str) -> str:
    """What is compared on the hosts: the token's SHA-256, never the token."""
    return hashlib.sha256(token.strip().encode()).hexdigest()


def check_token(token: str, api_endpoint: str, floating_ip_id: int, ca_file: str | None = None) -> None:
    """The token logs in to the Hetzner API and reads the stack's floating IP (what the agents need first)."""
    from hcloud import APIException, Client

    client = Client(token=token.strip(), api_endpoint=api_endpoint, application_name="hastack-rotate", timeout=10)
    if ca_file:
        # a private CA (the lab's API); hcloud has no public setting for it
        session = client._client._session
        session.verify = ca_file
        session.trust_env = False
    try:
        client.floating_ips.get_by_id(int(floating_ip_id))
    except APIException as e:
        raise TokenError(f"the Hetzner API refuses the token ({e.code}: {e.message}); make one with read & write "
                         "rights in the project of this stack") from None
    except Exception as e:  # the API not reachable: nothing is known about the token
        raise TokenError(f"could not ask the Hetzner API at {api_endpoint}: {e}") from None


def agent_hosts(entries: Mapping[str, Mapping]) -> list[str]:
    """The hosts that hold the token: those the inventory hands it to."""
    return sorted(name for name, data in entries.items() if data.get("failover_token"))


def holders(run: Callable[[str, str, float], tuple[bool, str, str]], hosts: list[str], token: str) -> dict[str, str]:
    """host -> "new" (holds ``token``), "other" (another token) or why it could not be read."""
    out = {}
    for name in hosts:
        ok, stdout, stderr = run(name, f"sha256sum {shlex.quote(TOKEN_FILE)}", 30)
        digest = stdout.split()[0] if ok and stdout.split() else None
        out[name] = ("new" if digest == fingerprint(token) else "other") if digest else \
            f"unreadable ({(stderr or stdout).strip()[-120:] or 'no answer'})"
    return out
