"""Offboarding an admin, and rotating a stack's secrets.

An admin who ran a converge or `pulumi up` could read every secret the stack
has. `hastack offboard NAME` removes them from the stack file, then rotates in
one pass everything they could have read: the backup keys and the failover
token are made new first, the three converges of the seed's and the stack
CA's rotations hand all of it to the hosts (the first one also removes the
admin's account everywhere), then the
old backup keys and the old token are deleted. Then every host is checked: no
account, no home, no key, no process of theirs.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from hastack.seed_rotation import rotate_together

KINDS = ("seed", "ca", "backup-keys", "failover-token")


class OffboardError(Exception):
    pass


# ---------------------------------------------------------------- the stack file


def remove_admin(text: str, name: str) -> str:
    """The stack file's text without admin ``name`` in hastack:admins, every other line as it was (comments
    and layout kept). The result is checked by parsing both: the only difference is that admin."""
    doc = yaml.safe_load(text) or {}
    admins = ((doc.get("config") or {}).get("hastack:admins")) or []
    names = [a.get("name") for a in admins if isinstance(a, dict)]
    if name not in names:
        raise OffboardError(f"{name!r} is not an admin of this stack (hastack:admins: {', '.join(names) or 'none'})")
    if len(names) == 1:
        raise OffboardError(f"{name!r} is the stack's only admin: add the admin who takes over first")
    lines = text.splitlines(keepends=True)
    item = re.compile(r"^(\s*)-\s+name:\s*['\"]?" + re.escape(name) + r"['\"]?\s*(#.*)?$")
    starts = [i for i, line in enumerate(lines) if item.match(line.rstrip("\n"))]
    if len(starts) != 1:
        raise OffboardError(f"cannot find {name!r} as one `- name: {name}` item in the stack file; remove it by hand")
    start = starts[0]
    indent = len(item.match(lines[start].rstrip("\n")).group(1))
    end = start + 1
    while end < len(lines):
        stripped = lines[end].strip()
        if stripped and (len(lines[end]) - len(lines[end].lstrip())) <= indent:
            break
        end += 1
    new = "".join(lines[:start] + lines[end:])
    expected = dict(doc, config={**doc["config"], "hastack:admins": [a for a in admins if a.get("name") != name]})
    if yaml.safe_load(new) != expected:
        raise OffboardError(f"removing {name!r} from the stack file would change more than that admin; "
                            "remove it by hand")
    return new


def stack_admins(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text()) or {}
    return [a.get("name") for a in (doc.get("config") or {}).get("hastack:admins") or []]


# ---------------------------------------------------------------- the rotation


def rotate_secrets(secrets, kinds: tuple[str, ...], endpoint: str, ask_token: Callable[[], str] | None,
                   token_holders: Callable[[str], dict[str, str]], say: Callable[[str], None],
                   fresh_backup: Callable[[], str] | None = None) -> list[str]:
    """Rotates ``kinds`` (of KINDS) through ``secrets`` (hastack.rotation.LabSecrets or PulumiSecrets) in one
    pass; returns what was done, one line each. ``fresh_backup()``, after a new seed: a MariaDB backup under
    the new seed's verification key (the old key is gone from the test restore); says how it went."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise OffboardError(f"unknown secret {', '.join(unknown)}: one of {', '.join(KINDS)} or all")
    done = []
    if "backup-keys" in kinds:
        done.append(secrets.new_backup_keys())
        say(done[-1])
    token = None
    if "failover-token" in kinds:
        token = secrets.new_token(endpoint, ask_token)
        done.append("a new failover token, checked: it reads the stack's floating IP")
        say(done[-1])
    staged = ([(secrets.load_seed, secrets.save_seed, None)] if "seed" in kinds else []) + \
        ([(secrets.load_ca, secrets.save_ca, secrets.new_ca())] if "ca" in kinds else [])
    if staged:
        # the seed and the CA in step: three converges for both
        stages = rotate_together(staged, secrets.converge, say=say)
        if "seed" in kinds:
            done.append(f"a new secret seed ({' -> '.join(stages)}): every MariaDB, Redis, Sentinel and Cassandra "
                        "password changed; the old ones are refused")
        if "seed" in kinds and fresh_backup is not None:
            done.append(fresh_backup())
            say(done[-1])
        if "ca" in kinds:
            done.append(f"a new stack CA ({' -> '.join(stages)}), with name constraints: every certificate issued "
                        "again by it; the old CA is trusted nowhere")
    else:
        secrets.converge("the new " + " and ".join(kinds))
    if token is not None:
        behind = {h: what for h, what in token_holders(token).items() if what != "new"}
        if behind:
            raise OffboardError("these agent hosts do not hold the new failover token (converge them, then check "
                                "again; keep the old token until then): "
                                + "; ".join(f"{h}: {what}" for h, what in behind.items()))
        done.append("every agent host holds the new failover token")
        say(done[-1])
        done.append(secrets.retire_token(endpoint))
        say(done[-1])
    if "backup-keys" in kinds:
        done.append(secrets.retire_backup_keys())
        say(done[-1])
    return done


# ---------------------------------------------------------------- what is left of the admin on the hosts


def traces_command(name: str) -> str:
    """Prints what is left of account ``name`` on a host: nothing when it is gone."""
    n = shlex.quote(name)
    return (f"id -u {n} >/dev/null 2>&1 && echo account; test -e /home/{n} && echo home; "
            f"pgrep -u {n} >/dev/null 2>&1 && echo processes; "
            f"grep -rqs -- {n} /etc/sudoers.d /etc/ssh/sshd_config.d && echo sudo-or-sshd; true")


def traces(run: Callable[[str, str, float], tuple[bool, str, str]], hosts: list[str], name: str) -> dict[str, str]:
    """host -> what is left of the admin there (or why the host could not be checked); hosts that are
    clean are left out."""
    left = {}
    for host in hosts:
        ok, out, err = run(host, traces_command(name), 30)
        if not ok:
            left[host] = f"could not be checked ({(err or out).strip()[-120:]})"
        elif out.split():
            left[host] = ", ".join(out.split())
    return left


@dataclass
class Offboarding:
    name: str
    stack: str
    started: float = field(default_factory=time.monotonic)
    done: list[str] = field(default_factory=list)

    def checklist(self, by_hand: list[str]) -> str:
        minutes = (time.monotonic() - self.started) / 60
        lines = [f"offboarded {self.name} from {self.stack} in {minutes:.1f} min:"]
        lines += [f"  [x] {d}" for d in self.done]
        lines += [f"  [ ] {d}" for d in by_hand]
        return "\n".join(lines)
