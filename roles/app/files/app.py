"""hastack's reference application: a small JSON web service behind HAProxy.

GET /        who answered (host name) and when
GET /health  200 when the service and each dependency it is configured
             with answer, 503 otherwise (HAProxy takes it out of rotation)

Standard library only; configured through its environment (systemd unit).
Serves TLS (1.2 and up) when given a certificate: the load balancers verify
it against the stack's CA, so traffic stays encrypted on the private network.
"""

import json
import os
import socket
import ssl
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


def tls_context():
    """From systemd credentials (LoadCredential=tls.crt, tls.key), or None for plain HTTP."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if not creds or not os.path.exists(os.path.join(creds, "tls.crt")):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(os.path.join(creds, "tls.crt"), os.path.join(creds, "tls.key"))
    return ctx


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, context):
        super().__init__(address, handler)
        self.context = context

    def get_request(self):
        sock, addr = super().get_request()
        if self.context is None:
            return sock, addr
        sock.settimeout(5)  # a client that never finishes its handshake does not hold a thread for long
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request, client_address):
        if self.context is not None:
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


if __name__ == "__main__":
    Server((BIND, PORT), Handler, tls_context()).serve_forever()
