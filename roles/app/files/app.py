"""hastack's reference application: a small JSON web service behind HAProxy.

GET  /              who answered (host name) and when
GET  /health        200 when the service and each dependency it is configured
                    with answer, 503 otherwise (HAProxy takes it out of rotation)
POST /records       {"request_id": "<uuid>", "value": "..."}: stored in MariaDB;
                    201 {"id", "request_id"} once committed, 503 if it was not
GET  /records/<id>  from the Redis cache, else from MariaDB (then cached)

MariaDB is reached through the local proxy to the writer (`mariadb-writer`),
over TLS verified against the stack CA. Redis is a cache: when it cannot be
reached the application answers from MariaDB. A POST that fails may still
have committed (the connection died after COMMIT); clients retry with the
same request_id, and readers treat rows with one request_id as one write.

Standard library, PyMySQL and redis-py; configured through its environment
and systemd credentials (the unit).
Serves TLS (1.2 and up) when given a certificate: the load balancers verify
it against the stack's CA, so traffic stays encrypted on the private network.

Stopped (SIGTERM: a restart, a new password), it first drains: for DRAIN_S its
health path answers 404, which the load balancers (`http-check disable-on-404`)
take as "send no new requests" while it still answers those on their way.
Then it stops accepting and lets the requests in flight finish. Closing at
once would leave requests in flight when the load balancers mark it down, and
they cut a down server's sessions (a power cut must not hold them for 30 s).
"""

import json
import os
import re
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOST = socket.gethostname()
BIND = os.environ.get("HASTACK_BIND", "127.0.0.1")
PORT = int(os.environ.get("HASTACK_PORT", "8080"))
# host:port pairs that must accept a TCP connection for the service to be healthy
DEPENDENCIES = [d for d in os.environ.get("HASTACK_DEPENDENCIES", "").split(",") if d]


CREDENTIALS = os.environ.get("CREDENTIALS_DIRECTORY", "")
MYSQL_HOST = os.environ.get("HASTACK_MYSQL_HOST", "")
MYSQL_DATABASE = os.environ.get("HASTACK_MYSQL_DATABASE", "hastack")
MYSQL_USER = os.environ.get("HASTACK_MYSQL_USER", "app")
CA_FILE = os.environ.get("HASTACK_CA_FILE", "")
REDIS_HOSTS = [h for h in os.environ.get("HASTACK_REDIS_HOSTS", "").split(",") if h]
REDIS_USER = os.environ.get("HASTACK_REDIS_USER", "app")
CACHE_TTL = 300
# the load balancers check every 500 ms: four checks to see the 404 (templates/loadbalancer)
DRAIN_S = 2.0
DRAINING = threading.Event()

SCHEMA = """CREATE TABLE IF NOT EXISTS records (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    request_id CHAR(36) NOT NULL,
    value VARCHAR(1024) NOT NULL,
    written_by VARCHAR(64) NOT NULL,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    KEY (request_id)
) ENGINE=InnoDB"""
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def credential(name: str) -> str:
    with open(os.path.join(CREDENTIALS, name)) as f:
        return f.read().strip()


class Unavailable(Exception):
    """The database did not answer: the client gets a 503 and may retry."""


class Database:
    """A connection per request (each request has its own thread), to whichever master the local proxy reaches."""

    def __init__(self) -> None:
        self.schema_ready = False

    def run(self, sql: str, args: tuple = ()):
        import pymysql

        try:
            conn = pymysql.connect(
                host=MYSQL_HOST, user=MYSQL_USER, password=credential("mariadb.password"), database=MYSQL_DATABASE,
                ssl={"ca": CA_FILE, "check_hostname": True}, connect_timeout=2, read_timeout=5, write_timeout=5,
                autocommit=True, charset="utf8mb4")
        except pymysql.err.MySQLError as e:
            raise Unavailable(str(e)) from None
        try:
            with conn.cursor() as cur:
                if not self.schema_ready:
                    cur.execute(SCHEMA)
                    self.schema_ready = True
                cur.execute(sql, args)
                return cur.lastrowid, cur.fetchall()
        except pymysql.err.MySQLError as e:
            raise Unavailable(str(e)) from None
        finally:
            conn.close()


class Cache:
    """Redis, found by asking each host for its role; failures only cost a cache miss."""

    def __init__(self) -> None:
        self.client = None
        self.lock = threading.Lock()

    def _primary(self):
        import redis

        for target in REDIS_HOSTS:
            host, _, port = target.rpartition(":")
            client = redis.Redis(host=host, port=int(port), username=REDIS_USER, password=credential("redis.password"),
                                 ssl=True, ssl_ca_certs=CA_FILE, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                # HELLO needs no admin rights and tells the role (the app user may not run ROLE or INFO)
                hello = client.execute_command("HELLO", "2")
                fields = dict(zip(hello[::2], hello[1::2], strict=True))
                if fields.get(b"role") == b"master":
                    return client
            except Exception:  # nosec B110  # Redis is only a cache: a server that fails in any way is passed over
                pass
            client.close()
        return None

    def call(self, fn):
        if not REDIS_HOSTS:
            return None
        for _ in (1, 2):
            with self.lock:
                client = self.client = self.client or self._primary()
            if client is None:
                return None
            try:
                return fn(client)
            except Exception:
                with self.lock:
                    self.client = None  # the primary moved or failed: look again
        return None


DB = Database()
CACHE = Cache()


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

    def do_POST(self) -> None:  # noqa: N802
        if self.path != "/records":
            return self._send(404, {"error": "not found"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(min(length, 8192)) or b"{}")
            request_id, value = str(body["request_id"]).lower(), str(body["value"])
        except (ValueError, KeyError, TypeError):
            return self._send(400, {"error": 'expected JSON {"request_id": "<uuid>", "value": "<text>"}'})
        if not UUID.match(request_id) or len(value) > 1024:
            return self._send(400, {"error": "request_id must be a UUID and value at most 1024 characters"})
        try:
            rid, _ = DB.run("INSERT INTO records (request_id, value, written_by) VALUES (%s, %s, %s)",
                            (request_id, value, HOST))
        except Unavailable as e:
            return self._send(503, {"error": "database unavailable", "detail": e.args[0][:200]})
        record = {"id": rid, "request_id": request_id, "value": value}
        CACHE.call(lambda r: r.set(f"record:{rid}", json.dumps(record), ex=CACHE_TTL))
        self._send(201, {"id": rid, "request_id": request_id, "host": HOST})

    def _get_record(self, rid: int) -> None:
        cached = CACHE.call(lambda r: r.get(f"record:{rid}"))
        if cached:
            return self._send(200, dict(json.loads(cached), source="cache"))
        try:
            _, rows = DB.run("SELECT id, request_id, value FROM records WHERE id = %s", (rid,))
        except Unavailable as e:
            return self._send(503, {"error": "database unavailable", "detail": e.args[0][:200]})
        if not rows:
            return self._send(404, {"error": "no such record"})
        record = {"id": rows[0][0], "request_id": rows[0][1], "value": rows[0][2]}
        CACHE.call(lambda r: r.set(f"record:{rid}", json.dumps(record), ex=CACHE_TTL))
        self._send(200, dict(record, source="database"))

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        m = re.fullmatch(r"/records/(\d{1,19})", self.path)
        if m:
            self._get_record(int(m.group(1)))
        elif self.path == "/health" and DRAINING.is_set():
            self._send(404, {"status": "draining", "host": HOST})
        elif self.path == "/health":
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
    daemon_threads = False  # a stop waits for the requests in flight
    block_on_close = True

    def __init__(self, address, handler, context):
        super().__init__(address, handler)
        self.context = context

    def get_request(self):
        sock, addr = super().get_request()
        if self.context is None:
            return sock, addr
        sock.settimeout(5)  # a client that never finishes its handshake does not hold a thread for long
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        # a client gone before its answer was written (the load balancers' health checks read the status
        # and close, every 500 ms each): nothing to report. socketserver printed a traceback each time.
        if isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLEOFError)):
            return
        super().handle_error(request, client_address)

    def finish_request(self, request, client_address):
        if self.context is not None:
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)


def serve(server: Server) -> None:
    import signal

    def drain_then_stop() -> None:
        time.sleep(DRAIN_S)
        server.shutdown()  # waits for serve_forever to return: from another thread than the one serving

    def stop(signum, frame) -> None:
        if not DRAINING.is_set():
            DRAINING.set()
            threading.Thread(target=drain_then_stop, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever(poll_interval=0.05)
    server.server_close()  # the listening socket first, then it waits for the requests in flight


if __name__ == "__main__":
    serve(Server((BIND, PORT), Handler, tls_context()))
