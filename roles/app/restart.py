"""Application restarts: one app server at a time (roles.rolling_restart), each back in the load
balancers' rotation before the next goes, so the site always has a server (a new password, a new
certificate, new code: all app servers change in the same converge)."""

from __future__ import annotations

import shlex
from typing import Mapping

from roles.app import APP_PORT
from roles.base.config import stack_ca_file
from roles.rolling_restart import RollingRestart

RESTART_MARK = "/var/lib/hastack/app/restart-needed"
SERVICE = "hastack-app.service"
HEALTH_TIMEOUT = 60.0
# the load balancers take it back after `rise 3` checks `inter 500ms` apart (templates/loadbalancer):
# a server up for less may answer its health path but not be in their rotation yet
IN_ROTATION_AFTER_S = 3


def health_command(name: str, data: Mapping) -> str:
    path, ip = data.get("app_health_path", "/health"), data["private_ip"]
    if data.get("app_tls", True):
        url = f"https://{name}:{APP_PORT}{path}"
        return (f"curl -sf --max-time 2 --cacert {stack_ca_file(data['stack'])} --resolve {name}:{APP_PORT}:{ip} "
                f"{shlex.quote(url)}")
    return f"curl -sf --max-time 2 {shlex.quote(f'http://{ip}:{APP_PORT}{path}')}"


def healthy(run, name: str, data: Mapping) -> str | None:
    ok, out, err = run(name, health_command(name, data) + " >/dev/null && echo ok", 30)
    if not ok or out.strip() != "ok":
        return f"the application does not answer its health check ({(err or out).strip()[-200:] or 'no answer'})"
    ok, out, _ = run(name, f"ps -o etimes= -p $(systemctl show -p MainPID --value {SERVICE})", 30)
    up = int(out.strip()) if ok and out.strip().isdigit() else 0
    if up < IN_ROTATION_AFTER_S:
        return f"up for {up} s: not yet back in the load balancers' rotation"
    return None


after_roles = RollingRestart(what="Application", service=SERVICE, mark=RESTART_MARK, healthy=healthy,
                             timeout=HEALTH_TIMEOUT)
