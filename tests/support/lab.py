"""Polling, the application as a user reaches it, and TCP reachability on the lab."""

from __future__ import annotations

import json
import subprocess
import time

from hastack.lab.layout import INTERNET_NS

# from the internet namespace: a client outside the stack, on the public network
INTERNET = ["ip", "netns", "exec", INTERNET_NS]


def wait_for(predicate, timeout, what):
    """Poll until ``predicate`` returns something true and return it; an AssertionError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def records_api(lab, method, path, **kw):
    """The application through the floating IP, as a user's client reaches it."""
    cmd = INTERNET + ["curl", "-s", "--max-time", "10", "--cacert", str(lab.stack_trust_file),
                      "-X", method, f"https://{lab.addr.floating_ip}{path}", "-w", "\n%{http_code}"]
    if "json" in kw:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(kw["json"])]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code or 0), (json.loads(body) if body.strip().startswith("{") else body)


def tcp(lab, source: str | None, ip: str, port: int, timeout: float = 2) -> str:
    """A TCP connect from machine ``source`` (None: the internet namespace) to ip:port:
    "open" (connected), "closed" (refused: the packet got through, nothing listens, or a
    firewall rejects) or "filtered" (no answer within ``timeout`` s: dropped, as the host
    firewall's drop policy does)."""
    cmd = ["timeout", str(timeout), "bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}"]
    if source is None:
        proc = subprocess.run(INTERNET + cmd, capture_output=True, text=True)
    else:
        proc = lab.exec(source, cmd)
    if proc.returncode == 0:
        return "open"
    if proc.returncode == 124:
        return "filtered"
    if "Connection refused" in proc.stderr:
        return "closed"
    raise AssertionError(f"TCP connect to {ip}:{port} from {source or INTERNET_NS}: "
                         f"exit {proc.returncode}, {proc.stderr.strip()}")
