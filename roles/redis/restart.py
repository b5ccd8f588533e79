"""Redis restarts for a new configuration: one host at a time, the primary last, each back to
health (it answers PING; a replica's link to its primary is up) before the next
(roles.rolling_restart; the converge runs it after the roles).

The checks use the Sentinel account (PING, INFO, ROLE), its password from the
root-only file the redis and sentinel deploys put, through the environment."""

from __future__ import annotations

from typing import Mapping

from hastack.role import AfterRoles
from roles.redis import REDIS_PORT
from roles.redis.config import SENTINEL_AUTH
from roles.rolling_restart import RollingRestart

RESTART_MARK = "/var/lib/hastack/redis/restart-needed"
HEALTH_TIMEOUT = 300.0  # a large append-only file takes a while to load


def cli(ip: str, port: int, *args: str, user: str | None = None) -> str:
    who = f"--user {user} " if user else ""
    return (f"REDISCLI_AUTH=$(cat {SENTINEL_AUTH}) timeout 5 redis-cli --tls --cacert /etc/redis/tls/ca.crt "
            f"-h {ip} -p {port} {who}--no-auth-warning " + " ".join(args))


def info(text: str) -> dict[str, str]:
    """`INFO` -> field -> value."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and not key.startswith("#"):
            out[key] = value
    return out


def healthy(run, name: str, data: Mapping) -> str | None:
    ip = data["private_ip"]
    ok, out, err = run(name, cli(ip, REDIS_PORT, "PING", user="sentinel"), 30)
    # redis-cli exits 0 on a server's error (LOADING, NOPERM): the answer says
    if not ok or out.strip() != "PONG":
        return f"Redis does not answer PING ({(out or err).strip()[-200:] or 'no answer'})"
    ok, out, err = run(name, cli(ip, REDIS_PORT, "INFO", "replication", user="sentinel"), 30)
    repl = info(out) if ok else {}
    role = repl.get("role")
    if role == "master":
        return None
    if role == "slave":
        link = repl.get("master_link_status")
        return None if link == "up" else f"replica of {repl.get('master_host')}: replication link {link}"
    return f"INFO replication did not say its role ({(out or err).strip()[-200:] or 'no answer'})"


def primary_last(step: AfterRoles, names: list[str]) -> list[str]:
    """Replicas first: the primary restarts last, when every replica is in sync again."""
    def primary(name: str) -> bool:
        ok, out, _ = step.run(name, cli(step.hosts[name]["private_ip"], REDIS_PORT, "ROLE", user="sentinel"), 30)
        return ok and out.split()[:1] == ["master"]

    return sorted(names, key=primary)


after_roles = RollingRestart(what="Redis", service="redis-server.service", mark=RESTART_MARK, healthy=healthy,
                             timeout=HEALTH_TIMEOUT, order=primary_last)
