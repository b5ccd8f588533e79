"""Shared by the lab tests."""

import json
import subprocess
import time

import pytest


def wait_for(predicate, timeout, what):
    """Poll until ``predicate`` returns something true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def records_api(lab, method, path, **kw):
    """The application through the floating IP, as a user's client reaches it."""
    cmd = ["ip", "netns", "exec", "hsl-internet", "curl", "-s", "--max-time", "10", "--cacert", str(lab.ca.cert_path),
           "-X", method, f"https://{lab.addr.floating_ip}{path}", "-w", "\n%{http_code}"]
    if "json" in kw:
        cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(kw["json"])]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    body, _, code = out.rpartition("\n")
    return int(code or 0), (json.loads(body) if body.strip().startswith("{") else body)
