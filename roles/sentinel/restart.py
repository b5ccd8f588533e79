"""Sentinel restarts: one Sentinel at a time, each back to health (it answers, and knows the
group's primary) before the next, so the quorum never loses two votes at once
(roles.rolling_restart; the converge runs it after the roles)."""

from __future__ import annotations

from typing import Mapping

from roles.redis.restart import cli
from roles.rolling_restart import RollingRestart
from roles.sentinel import SENTINEL_PORT
from roles.sentinel.config import GROUP  # the monitored group

RESTART_MARK = "/var/lib/hastack/sentinel/restart-needed"
HEALTH_TIMEOUT = 60.0


def healthy(run, name: str, data: Mapping) -> str | None:
    ip = data["private_ip"]
    ok, out, err = run(name, cli(ip, SENTINEL_PORT, "PING"), 30)
    if not ok or out.strip() != "PONG":
        return f"Sentinel does not answer PING ({(out or err).strip()[-200:] or 'no answer'})"
    ok, out, err = run(name, cli(ip, SENTINEL_PORT, "SENTINEL", "get-master-addr-by-name", GROUP), 30)
    words = out.split() if ok else []
    if len(words) == 2 and words[1].isdigit():
        return None
    return f"Sentinel does not know the primary of {GROUP} ({(out or err).strip()[-200:] or 'no answer'})"


after_roles = RollingRestart(what="Sentinel", service="redis-sentinel.service", mark=RESTART_MARK,
                             healthy=healthy, timeout=HEALTH_TIMEOUT)
