"""hastack's reference application: a small JSON web service behind HAProxy.

GET /        who answered (host name) and when
GET /health  200 when the service and each dependency it is configured
             with answer, 503 otherwise (HAProxy takes it out of rotation)

Standard library only; configured through its environment (systemd unit).
"""

import json
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = socket.gethostname()
BIND = os.environ.get("HASTACK_BIND", "127.0.0.1")
PORT = int(os.environ.get("HASTACK_PORT", "8080"))
# host:port pairs that must accept a TCP connection for the service to be healthy
DEPENDENCIES = [d for d in os.environ.get("HASTACK_DEPENDENCIES", "").split(",") if d]


def check_dependency(target: str) -> bool:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    server_version = "hastack-app"
    sys_version = ""

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path == "/health":
            checks = {d: check_dependency(d) for d in DEPENDENCIES}
            ok = all(checks.values())
            self._send(200 if ok else 503, {"status": "ok" if ok else "failing", "host": HOST, "checks": checks})
        elif self.path == "/":
            self._send(200, {"service": "hastack-app", "host": HOST, "time": time.time()})
        else:
            self._send(404, {"error": "not found"})

    def log_message(self, fmt: str, *args) -> None:  # health checks every second would flood the journal
        pass


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((BIND, PORT), Handler).serve_forever()
