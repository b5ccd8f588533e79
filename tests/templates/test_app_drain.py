"""An app server that is stopped (a rolling restart) finishes the requests on their way: run with
the rendered load balancer's `defaults` and `backend app` sections in a real HAProxy, in front of
its real application processes (roles/app/files/app.py, given one slow path for the test)."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import roles.app as app_role
from tests.support.lab import wait_for
from tests.templates.hostdata import topology
from tests.templates.test_loadbalancer_templates import haproxy_cfg, need

APP = Path(app_role.__file__).parent / "files" / "app.py"
# the application with GET /slow (1.5 s), to have requests in flight when it is stopped
SLOW_APP = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("app", {str(APP)!r})
app = importlib.util.module_from_spec(spec)
spec.loader.exec_module(app)

class Handler(app.Handler):
    def do_GET(self):
        if self.path == "/slow":
            time.sleep(1.5)
            return self._send(200, {{"host": sys.argv[1]}})
        return super().do_GET()

app.serve(app.Server(("127.0.0.1", int(sys.argv[1])), Handler, None))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sections(text: str) -> dict[str, str]:
    """haproxy.cfg's sections by their first line ("defaults", "backend app", ...)."""
    out: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name = line.strip()
            out[name] = [line]
        elif name:
            out[name].append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def get(url: str, timeout: float = 10) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def answers(url: str) -> int | None:
    """Its status, or None while nothing listens yet."""
    try:
        return get(url, 1)
    except OSError:
        return None


def test_a_stopping_app_server_finishes_the_requests_on_their_way(tmp_path):
    topo = topology("prod")
    text = haproxy_cfg("prod", topo.hosts_with_role("loadbalancer")[0], {"site": "s", "ca": "c"}, app_tls=False)
    parts = sections(text)
    backend = parts["backend app"]
    assert "http-check disable-on-404" in backend and "on-marked-down shutdown-sessions" in backend
    servers = [line for line in backend.splitlines() if line.strip().startswith("server ")]
    ports = [free_port() for _ in servers]
    front = free_port()
    for i, line in enumerate(servers):
        name = line.split()[1]
        backend = backend.replace(line, f"    server {name} 127.0.0.1:{ports[i]}")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("global\n    maxconn 100\n\n" + parts["defaults"].replace("log global", "") + "\n\n"
                   + f"frontend f\n    bind 127.0.0.1:{front}\n    default_backend app\n\n" + backend + "\n")
    script = tmp_path / "slow_app.py"
    script.write_text(SLOW_APP)
    apps = [subprocess.Popen([sys.executable, str(script), str(p)], stderr=subprocess.DEVNULL) for p in ports]
    lb = subprocess.Popen([need("haproxy"), "-db", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    site = f"http://127.0.0.1:{front}"
    try:
        for p in ports:
            wait_for(lambda p=p: answers(f"http://127.0.0.1:{p}/health") == 200, 10, f"the app on {p}")
        time.sleep(2)  # rise 3 checks 500 ms apart: both in rotation
        assert get(f"{site}/") == 200
        with ThreadPoolExecutor(16) as pool:
            slow = [pool.submit(get, f"{site}/slow") for _ in range(4 * len(ports))]  # round robin: some on the stopped one
            time.sleep(0.3)
            stopped_at = time.monotonic()
            apps[0].send_signal(signal.SIGTERM)
            time.sleep(0.2)
            draining = get(f"http://127.0.0.1:{ports[0]}/health", 2)
            quick = []
            while apps[0].poll() is None and time.monotonic() - stopped_at < 15:
                quick.append(get(f"{site}/"))
                time.sleep(0.05)
            stop_took = time.monotonic() - stopped_at
            slow_codes = [f.result() for f in slow]
        assert draining == 404  # the load balancers' sign: no new requests
        assert apps[0].returncode == 0 and stop_took < 10, (apps[0].returncode, stop_took)
        assert slow_codes == [200] * len(slow), slow_codes
        assert quick and set(quick) == {200}, json.dumps(quick)
    finally:
        for p in [*apps, lb]:
            if p.poll() is None:
                p.kill()
            p.wait()
