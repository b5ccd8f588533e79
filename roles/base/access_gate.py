"""hastack-access-gate: at boot, admins removed while this host was off are removed before it serves.

A converge removes a former admin from every host it reaches; a host that is
off at the time (a MariaDB master its peer fenced by powering it off) keeps
the account until a later converge reaches it. This gate closes that gap: at
boot, before sshd, user sessions and MariaDB start, it asks the witness (the
monitoring host, over mutual TLS with this host's certificate) for the
stack's current admins and their keys, then

* removes every local admin (a member of the admin group) the stack no
  longer has: its processes killed, the account and home deleted;
* gives every remaining admin exactly the keys the stack lists.

It never adds an admin (that is the converge's work). Until the witness
answers, the gate waits, and with it sshd and MariaDB: the host does not
serve with an access list it cannot check. Standard library only.

  hastack-access-gate --config /etc/hastack/access-gate.json
"""

from __future__ import annotations

import argparse
import grp
import json
import logging
import os
import pwd
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("hastack-access-gate")


@dataclass(frozen=True)
class Config:
    name: str  # this host: its certificate's name, its identity at the witness
    group: str  # its witness group
    witness_name: str
    witness_ip: str
    witness_port: int
    cert: str
    key: str
    ca: str
    admin_group: str
    retry_every: float = 2.0


def load_config(path: str) -> Config:
    with open(path) as f:
        raw = json.load(f)
    try:
        return Config(**raw)
    except TypeError as e:
        raise SystemExit(f"{path}: {e}") from None


def ask_witness(cfg: Config, timeout: float = 5.0) -> dict[str, Any]:
    """The stack's admins as the witness has them: {"admins": {name: [keys]}}."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca)
    ctx.load_cert_chain(cfg.cert, cfg.key)
    with socket.create_connection((cfg.witness_ip, cfg.witness_port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=cfg.witness_name) as conn:
            conn.sendall(json.dumps({"op": "access", "group": cfg.group, "name": cfg.name}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
    answer = json.loads(data)
    if not isinstance(answer, dict) or "error" in answer:
        raise ValueError(f"the witness answered {answer!r}")
    admins = answer.get("admins")
    if not isinstance(admins, dict) or not all(
            isinstance(k, list) and all(isinstance(x, str) for x in k) for k in admins.values()):
        raise ValueError(f"the witness's admin list is not {{name: [keys]}}: {admins!r}")
    return answer


def local_admins(group: str) -> dict[str, pwd.struct_passwd]:
    """Accounts in the admin group (as a member or by their primary group)."""
    try:
        g = grp.getgrnam(group)
    except KeyError:
        return {}
    return {u.pw_name: u for u in pwd.getpwall() if u.pw_gid == g.gr_gid or u.pw_name in g.gr_mem}


def _run(cmd: list[str], check: bool = True) -> None:
    subprocess.run(cmd, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _write_keys(user: pwd.struct_passwd, keys: list[str]) -> bool:
    """authorized_keys holds exactly ``keys`` (0600, the admin's own); True when it changed."""
    ssh_dir = os.path.join(user.pw_dir, ".ssh")
    path = os.path.join(ssh_dir, "authorized_keys")
    text = "".join(k.strip() + "\n" for k in keys)
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    os.chown(ssh_dir, user.pw_uid, user.pw_gid)
    os.chmod(ssh_dir, 0o700)
    tmp = path + ".hastack-new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chown(tmp, user.pw_uid, user.pw_gid)
    os.replace(tmp, path)
    return True


def settle(local: dict[str, pwd.struct_passwd], wanted: dict[str, list[str]],
           run: Callable[..., None] = _run,
           write_keys: Callable[[pwd.struct_passwd, list[str]], bool] = _write_keys) -> list[str]:
    """Removes the ``local`` admins not in ``wanted``, gives the others their keys; returns what was done."""
    done = []
    for name, user in sorted(local.items()):
        if name not in wanted:
            run(["pkill", "-KILL", "-u", name], check=False)  # none running is fine
            # --force: processes killed a moment ago may linger and must not stop the removal
            run(["userdel", "--force", "--remove", name])
            done.append(f"removed former admin {name}")
        elif write_keys(user, wanted[name]):
            done.append(f"set the keys of {name} to the stack's")
    return done


def main(argv: list[str] | None = None, sleep: Callable[[float], None] = time.sleep) -> int:
    p = argparse.ArgumentParser(prog="hastack-access-gate")
    p.add_argument("--config", default="/etc/hastack/access-gate.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    cfg = load_config(args.config)
    started, last_said = time.monotonic(), -1e9
    while True:
        try:
            answer = ask_witness(cfg)
            break
        except (OSError, ValueError, ssl.SSLError) as e:
            if time.monotonic() - last_said >= 30:
                log.warning("waiting for the witness %s (%s:%d) to learn the stack's admins: %s; sshd and "
                            "MariaDB wait too", cfg.witness_name, cfg.witness_ip, cfg.witness_port, e)
                last_said = time.monotonic()
            sleep(cfg.retry_every)
    done = settle(local_admins(cfg.admin_group), answer["admins"])
    log.info("access settled after %.1f s: %s", time.monotonic() - started,
             "; ".join(done) or f"the admins here are the stack's ({', '.join(sorted(answer['admins']))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
