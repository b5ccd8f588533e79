"""The lab's Hetzner Cloud API: the endpoints the failover agent uses.

Responses have the real API's JSON shapes (every field hcloud's domain
classes read when parsing), its error shape
`{"error": {"code", "message", "details"}}`, Bearer-token auth and its
RateLimit-Limit/-Remaining/-Reset headers with the same budget: `rate_limit`
requests per `rate_window` seconds, refilled evenly, so RateLimit-Reset is
when the budget is full again.

Actions (assign, unassign, poweroff, poweron) are returned `running`, as the real API
does. The floating IP's callbacks run inside the request and, once they
return, the action is `success` for the next GET /actions/{id} (`error` if it
raised, and then nothing changes); they run under the API's lock, so they must
not call the API. Powering a server off or on takes its time, as on Hetzner:
the request answers at once and the machine's callback runs beside it, the
action `running` until it returns.

Besides /v1 there is GET /lab/log (token required): every POST with its body,
status and result, so tests see what an agent did; and GET /lab/health (no
token) for readiness.

  python -m hastack.lab.hcloud_api --bind 198.18.0.1 --port 8443 \\
      --token-file api-token --state hcloud-state.json --cert api.crt --key api.key \\
      --on-assign-cmd 'ip route replace {ip}/32 via {server_public_ip}'

The state file is {"servers": [{"id", "name", "public_ip", "private_ip"?,
"status"?, "location"?, "labels"?}], "floating_ips": [{"id", "ip", "server"?,
"name"?, "home_location"?, "labels"?}]}; changes are written back to it, so a
restarted API keeps the assignment. Command templates are split like a shell
line, then each word is formatted with {ip}, {floating_ip_id}, {server_id},
{server_name}, {server_public_ip}, {server_private_ip} and run without a
shell. With --machines-dir a server's status is its machine's real power
state, whoever started or stopped it, as Hetzner reports a server's. At start the on-assign command is run for every assigned floating IP,
so the routes match what the API reports.
"""

from __future__ import annotations

import argparse
import copy
import hmac
import json
import logging
import math
import os
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("hastack.lab.hcloud_api")

LOCATIONS = {
    "nbg1": {"id": 2, "name": "nbg1", "description": "Nuremberg DC Park 1", "country": "DE", "city": "Nuremberg",
             "latitude": 49.452102, "longitude": 11.076665, "network_zone": "eu-central"},
    "fsn1": {"id": 1, "name": "fsn1", "description": "Falkenstein DC Park 1", "country": "DE", "city": "Falkenstein",
             "latitude": 50.47612, "longitude": 12.370071, "network_zone": "eu-central"},
    "hel1": {"id": 3, "name": "hel1", "description": "Helsinki DC Park 1", "country": "FI", "city": "Helsinki",
             "latitude": 60.169855, "longitude": 24.938379, "network_zone": "eu-central"},
}
CREATED = "2024-01-01T00:00:00+00:00"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def server_json(id: int, name: str, public_ip: str, private_ip: str | None = None, *, status: str = "running",
                location: str = "nbg1", labels: dict[str, str] | None = None, network_id: int = 1) -> dict[str, Any]:
    """A server as GET /servers/{id} returns it (public_net.floating_ips is filled in when served)."""
    return {
        "id": id, "name": name, "status": status, "created": CREATED,
        "public_net": {
            "ipv4": {"id": 100000 + id, "ip": public_ip, "blocked": False, "dns_ptr": f"static.{public_ip}.clients.your-server.de"},
            "ipv6": None, "floating_ips": [], "firewalls": [],
        },
        "private_net": [] if private_ip is None else [
            {"network": network_id, "ip": private_ip, "alias_ips": [], "mac_address": f"86:00:00:00:{id // 256 % 256:02x}:{id % 256:02x}"}],
        "server_type": {"id": 104, "name": "cx22", "description": "CX22", "category": "cost_optimized", "cores": 2,
                        "memory": 4.0, "disk": 40, "deprecated": False, "deprecation": None, "prices": [],
                        "storage_type": "local", "cpu_type": "shared", "architecture": "x86"},
        "location": copy.deepcopy(LOCATIONS[location]),
        "image": {"id": 114690387, "type": "system", "status": "available", "name": "debian-12", "description": "Debian 12",
                  "image_size": None, "disk_size": 5, "created": "2023-06-13T06:00:02+00:00", "created_from": None,
                  "bound_to": None, "os_flavor": "debian", "os_version": "12", "rapid_deploy": True,
                  "protection": {"delete": False}, "deprecated": None, "deleted": None, "labels": {}, "architecture": "x86"},
        "iso": None, "rescue_enabled": False, "locked": False, "backup_window": None,
        "outgoing_traffic": 0, "ingoing_traffic": 0, "included_traffic": 21990232555520,
        "protection": {"delete": False, "rebuild": False}, "labels": dict(labels or {}),
        "volumes": [], "load_balancers": [], "primary_disk_size": 40, "placement_group": None,
    }


def floating_ip_json(id: int, ip: str, server: int | None = None, *, name: str | None = None,
                     home_location: str = "nbg1", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "id": id, "name": name or f"floating-ip-{id}", "description": None, "ip": ip, "type": "ipv4",
        "server": server, "dns_ptr": [{"ip": ip, "dns_ptr": f"static.{ip}.clients.your-server.de"}],
        "home_location": copy.deepcopy(LOCATIONS[home_location]), "blocked": False,
        "protection": {"delete": True}, "labels": dict(labels or {}), "created": CREATED,
    }


class Reply(Exception):
    """An API error answer."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or {}


def _invalid(field: str, message: str) -> Reply:
    return Reply(422, "invalid_input", f"invalid input in field '{field}'",
                 {"fields": [{"name": field, "messages": [message]}]})


class FakeHetznerAPI:
    """Servers, floating IPs and actions in memory, answering like api.hetzner.cloud/v1."""

    def __init__(self, token: str | Callable[[], Iterable[str]], servers: list[dict[str, Any]],
                 floating_ips: list[dict[str, Any]], *,
                 on_assign: Callable[[dict[str, Any], dict[str, Any]], None] | None = None,
                 on_poweroff: Callable[[dict[str, Any]], None] | None = None,
                 on_poweron: Callable[[dict[str, Any]], None] | None = None,
                 power_state: Callable[[dict[str, Any]], str | None] | None = None,
                 on_change: Callable[[], None] | None = None,
                 rate_limit: int = 3600, rate_window: float = 3600.0, clock: Callable[[], float] = time.time):
        # the project's tokens: one, or a function reading them now (a token deleted in the console stops working)
        self.api_tokens = token if callable(token) else (lambda: [token])
        self.servers = {s["id"]: copy.deepcopy(s) for s in servers}
        self.floating_ips = {f["id"]: copy.deepcopy(f) for f in floating_ips}
        self.actions: dict[int, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.on_assign, self.on_poweroff, self.on_change = on_assign, on_poweroff, on_change
        # the machine's real power state ("running"/"off"; None: unknown, the recorded one stands):
        # a server started again outside the API is running, as Hetzner would report it
        self.on_poweron, self.power_state = on_poweron, power_state
        self.rate_limit, self.rate_window, self.clock = rate_limit, rate_window, clock
        self.tokens, self.refilled = float(rate_limit), clock()
        self.next_action = 1
        self.lock = threading.Lock()
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, dict[str, Any]]]]] = [
            ("GET", re.compile(r"/v1/floating_ips"), self._list_floating_ips),
            ("GET", re.compile(r"/v1/floating_ips/([^/]+)"), self._get_floating_ip),
            ("POST", re.compile(r"/v1/floating_ips/([^/]+)/actions/assign"), self._assign),
            ("POST", re.compile(r"/v1/floating_ips/([^/]+)/actions/unassign"), self._unassign),
            ("GET", re.compile(r"/v1/servers"), self._list_servers),
            ("GET", re.compile(r"/v1/servers/([^/]+)"), self._get_server),
            ("POST", re.compile(r"/v1/servers/([^/]+)/actions/poweroff"), self._poweroff),
            ("POST", re.compile(r"/v1/servers/([^/]+)/actions/poweron"), self._poweron),
            ("GET", re.compile(r"/v1/actions/([^/]+)"), self._get_action),
        ]

    # ---------------------------------------------------------- request entry

    def handle(self, method: str, path: str, query: dict[str, list[str]], authorization: str | None,
               body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        """One request -> (status, JSON payload, extra headers)."""
        path = path.rstrip("/") or "/"
        if path == "/lab/health":
            return 200, {"status": "ok"}, {}
        with self.lock:
            try:
                if not self._authorized(authorization):
                    raise Reply(401, "unauthorized", "unable to authenticate")
                if path == "/lab/log" and method == "GET":
                    return 200, {"log": copy.deepcopy(self.log)}, self._rate_headers()
                if not self._take_token():
                    raise Reply(429, "rate_limit_exceeded",
                                f"limit of {self.rate_limit} requests per {self.rate_window:g} seconds reached")
                status, payload = self._route(method, path, query, body)
            except Reply as r:
                status, payload = r.status, {"error": {"code": r.code, "message": r.message, "details": r.details}}
            if method != "GET" and status != 401:
                self._record(method, path, body, status, payload)
            return status, payload, self._rate_headers()

    def _authorized(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode()
        # every token compared, so the time taken does not tell which one nearly matched
        matches = [hmac.compare_digest(given, t.encode()) for t in self.api_tokens()]
        return scheme == "Bearer" and any(matches)

    def _route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        for route_method, pattern, fn in self.routes:
            m = pattern.fullmatch(path)
            if m and route_method == method:
                return fn(*m.groups(), query=query, body=body)
        raise Reply(404, "not_found", f"{method} {path} not found")

    def _record(self, method: str, path: str, body: bytes, status: int, payload: dict[str, Any]) -> None:
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        entry = {"time": self.clock(), "method": method, "path": path, "body": parsed, "status": status,
                 "result": copy.deepcopy(payload.get("action") or payload.get("error") or payload)}
        if "action" in payload:  # the outcome, not the `running` snapshot the client got
            entry["result"] = copy.deepcopy(self.actions[payload["action"]["id"]])
        self.log.append(entry)

    # ---------------------------------------------------------- rate limit

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(float(self.rate_limit), self.tokens + (now - self.refilled) * self.rate_limit / self.rate_window)
        self.refilled = now

    def _take_token(self) -> bool:
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def _rate_headers(self) -> dict[str, str]:
        self._refill()
        full_in = (self.rate_limit - self.tokens) * self.rate_window / self.rate_limit
        return {"RateLimit-Limit": str(self.rate_limit), "RateLimit-Remaining": str(int(self.tokens)),
                "RateLimit-Reset": str(math.ceil(self.clock() + full_in))}

    # ---------------------------------------------------------- resources

    @staticmethod
    def _id(raw: str, field: str = "id") -> int:
        if not raw.isdigit() or int(raw) < 1:
            raise _invalid(field, "must be a positive integer")
        return int(raw)

    def _floating_ip(self, raw: str) -> dict[str, Any]:
        fip = self.floating_ips.get(self._id(raw))
        if fip is None:
            raise Reply(404, "not_found", f"Floating IP with ID '{raw}' not found")
        return fip

    def _server(self, raw: str) -> dict[str, Any]:
        server = self.servers.get(self._id(raw))
        if server is None:
            raise Reply(404, "not_found", f"Server with ID '{raw}' not found")
        return server

    def _render_server(self, server: dict[str, Any]) -> dict[str, Any]:
        if self.power_state is not None:
            server["status"] = self.power_state(server) or server["status"]
        out = copy.deepcopy(server)
        out["public_net"]["floating_ips"] = sorted(f["id"] for f in self.floating_ips.values() if f["server"] == server["id"])
        return out

    @staticmethod
    def _page(key: str, items: list[dict[str, Any]], query: dict[str, list[str]]) -> dict[str, Any]:
        try:
            page = int(query.get("page", ["1"])[0])
            per_page = int(query.get("per_page", ["25"])[0])
        except ValueError:
            raise _invalid("page", "page and per_page must be integers") from None
        if page < 1 or not 1 <= per_page <= 50:
            raise _invalid("per_page" if page >= 1 else "page", "out of range")
        last = max(1, math.ceil(len(items) / per_page))
        return {key: items[(page - 1) * per_page: page * per_page],
                "meta": {"pagination": {"page": page, "per_page": per_page,
                                        "previous_page": page - 1 if page > 1 else None,
                                        "next_page": page + 1 if page < last else None,
                                        "last_page": last, "total_entries": len(items)}}}

    def _list_floating_ips(self, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        items = [copy.deepcopy(f) for _, f in sorted(self.floating_ips.items())
                 if "name" not in query or f["name"] == query["name"][0]]
        return 200, self._page("floating_ips", items, query)

    def _get_floating_ip(self, raw: str, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        return 200, {"floating_ip": copy.deepcopy(self._floating_ip(raw))}

    def _list_servers(self, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        items = [self._render_server(s) for _, s in sorted(self.servers.items())
                 if "name" not in query or s["name"] == query["name"][0]]
        return 200, self._page("servers", items, query)

    def _get_server(self, raw: str, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        return 200, {"server": self._render_server(self._server(raw))}

    def _get_action(self, raw: str, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        action = self.actions.get(self._id(raw))
        if action is None:
            raise Reply(404, "not_found", f"Action with ID '{raw}' not found")
        return 200, {"action": copy.deepcopy(action)}

    # ---------------------------------------------------------- actions

    def _run_action(self, command: str, resources: list[dict[str, Any]], work: Callable[[], None],
                    slow: Callable[[], None] | None = None) -> tuple[int, dict[str, Any]]:
        """Start an action, do its work, and answer with the `running` snapshot the real API would send.
        `slow` (a machine powering off or on) runs beside the request, outside the lock; `work` after it."""
        action = {"id": self.next_action, "command": command, "status": "running", "progress": 0,
                  "started": _iso(self.clock()), "finished": None, "resources": resources, "error": None}
        self.next_action += 1
        self.actions[action["id"]] = action
        snapshot = copy.deepcopy(action)

        def finish(error: Exception | None) -> None:
            if error is None:
                try:
                    work()
                except Exception as e:  # a failed lab callback is a failed action, as a failed re-route would be
                    error = e
            if error is not None:
                log.warning("action %d (%s) failed: %s", action["id"], command, error)
                action.update(status="error", progress=100, finished=_iso(self.clock()),
                              error={"code": "action_failed", "message": str(error)})
                return
            action.update(status="success", progress=100, finished=_iso(self.clock()))
            if self.on_change:
                self.on_change()

        if slow is None:
            finish(None)
        else:
            def beside() -> None:
                error = None
                try:
                    slow()
                except Exception as e:
                    error = e
                with self.lock:
                    finish(error)

            threading.Thread(target=beside, name=f"action-{action['id']}", daemon=True).start()
        return 201, {"action": snapshot}

    def _assign(self, raw: str, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        fip = self._floating_ip(raw)
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            raise Reply(400, "json_error", "invalid JSON in request body") from None
        server_id = data.get("server") if isinstance(data, dict) else None
        if not isinstance(server_id, int) or isinstance(server_id, bool):
            raise _invalid("server", "is required and must be a server ID")
        server = self.servers.get(server_id)
        if server is None:
            raise _invalid("server", f"server with ID '{server_id}' not found")

        def work() -> None:
            if self.on_assign:  # re-routes the IP in the lab; before the action reports success
                self.on_assign(copy.deepcopy(fip), self._render_server(server))
            fip["server"] = server_id

        return self._run_action("assign_floating_ip", [{"id": server_id, "type": "server"},
                                                       {"id": fip["id"], "type": "floating_ip"}], work)

    def _unassign(self, raw: str, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        fip = self._floating_ip(raw)
        return self._run_action("unassign_floating_ip", [{"id": fip["id"], "type": "floating_ip"}],
                                lambda: fip.update(server=None))

    def _poweroff(self, raw: str, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        server = self._server(raw)

        rendered = self._render_server(server)

        def slow() -> None:
            if self.on_poweroff:
                self.on_poweroff(rendered)

        return self._run_action("stop_server", [{"id": server["id"], "type": "server"}],
                                lambda: server.update(status="off"), slow=slow)

    def _poweron(self, raw: str, query: dict[str, list[str]], body: bytes) -> tuple[int, dict[str, Any]]:
        server = self._server(raw)

        rendered = self._render_server(server)

        def slow() -> None:
            if self.on_poweron:
                self.on_poweron(rendered)

        return self._run_action("start_server", [{"id": server["id"], "type": "server"}],
                                lambda: server.update(status="running"), slow=slow)

    # ---------------------------------------------------------- state file

    def state(self) -> dict[str, Any]:
        """The state-file shape of what the API holds now."""
        servers = []
        for s in sorted(self.servers.values(), key=lambda s: s["id"]):
            entry = {"id": s["id"], "name": s["name"], "public_ip": s["public_net"]["ipv4"]["ip"],
                     "status": s["status"], "location": s["location"]["name"], "labels": s["labels"]}
            if s["private_net"]:
                entry["private_ip"] = s["private_net"][0]["ip"]
            servers.append(entry)
        fips = [{"id": f["id"], "ip": f["ip"], "server": f["server"], "name": f["name"],
                 "home_location": f["home_location"]["name"], "labels": f["labels"]}
                for f in sorted(self.floating_ips.values(), key=lambda f: f["id"])]
        return {"servers": servers, "floating_ips": fips}


def parse_state(data: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """State-file JSON -> (servers, floating IPs) in API shape; ValueError says what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("servers"), list) or not isinstance(data.get("floating_ips"), list):
        raise ValueError('state must be {"servers": [...], "floating_ips": [...]}')
    servers, fips = [], []
    try:
        for s in data["servers"]:
            servers.append(server_json(int(s["id"]), str(s["name"]), str(s["public_ip"]), s.get("private_ip"),
                                       status=s.get("status", "running"), location=s.get("location", "nbg1"),
                                       labels=s.get("labels")))
        ids = {s["id"] for s in servers}
        for f in data["floating_ips"]:
            if f.get("server") is not None and f["server"] not in ids:
                raise ValueError(f"floating IP {f['id']}: server {f['server']} is not in servers")
            fips.append(floating_ip_json(int(f["id"]), str(f["ip"]), f.get("server"), name=f.get("name"),
                                         home_location=f.get("home_location", "nbg1"), labels=f.get("labels")))
    except KeyError as e:
        raise ValueError(f"state entry without required key {e}") from None
    return servers, fips


# ------------------------------------------------------------------ HTTP


class _Handler(BaseHTTPRequestHandler):
    server_version = "hastack-lab-hcloud"
    timeout = 30  # a stuck client does not hold a thread forever

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()  # here, in the request's thread, not in the accept loop

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        api: FakeHetznerAPI = self.server.api  # type: ignore[attr-defined]
        status, payload, headers = api.handle(self.command, url.path, parse_qs(url.query),
                                              self.headers.get("Authorization"), body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("request from %s failed: %s", client_address[0], sys.exc_info()[1])


def create_server(api: FakeHetznerAPI, host: str = "127.0.0.1", port: int = 0,
                  certfile: str | None = None, keyfile: str | None = None) -> ThreadingHTTPServer:
    """An HTTP(S) server for `api`, bound but not yet serving (port 0: any free port)."""
    httpd = _Server((host, port), _Handler)
    httpd.api = api  # type: ignore[attr-defined]
    if certfile:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(certfile, keyfile)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    return httpd


def start_in_thread(api: FakeHetznerAPI, host: str = "127.0.0.1", port: int = 0,
                    certfile: str | None = None, keyfile: str | None = None) -> ThreadingHTTPServer:
    """Serve in a daemon thread (for tests and in-process use); stop with .shutdown()."""
    httpd = create_server(api, host, port, certfile, keyfile)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), name="hcloud-api", daemon=True).start()
    return httpd


def serve(api: FakeHetznerAPI, host: str, port: int, certfile: str | None = None, keyfile: str | None = None) -> None:
    """Serve until interrupted."""
    httpd = create_server(api, host, port, certfile, keyfile)
    scheme = "https" if certfile else "http"
    log.info("Hetzner API stand-in on %s://%s:%d/v1", scheme, host, httpd.server_address[1])
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


def command_hook(*templates: str) -> Callable[..., None]:
    """A callback running each of `templates` in turn for (floating IP,) server, without a shell."""
    commands = [shlex.split(t) for t in templates]

    def run(*resources: dict[str, Any]) -> None:
        server = resources[-1]
        fip = resources[0] if len(resources) == 2 else {}
        fields = {"ip": fip.get("ip", ""), "floating_ip_id": fip.get("id", ""), "server_id": server["id"],
                  "server_name": server["name"], "server_public_ip": server["public_net"]["ipv4"]["ip"],
                  "server_private_ip": server["private_net"][0]["ip"] if server["private_net"] else ""}
        for words in commands:
            argv = [w.format(**fields) for w in words]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=15, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
            log.info("ran %s", shlex.join(argv))

    return run


def _write_json(path: str, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=".hcloud-state.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def machine_power(machines_dir: str) -> Callable[[dict[str, Any]], str | None]:
    """A lab machine's power state from its nspawn pid file: running while that process lives."""
    def state(server: dict[str, Any]) -> str | None:
        try:
            pid = int(open(os.path.join(machines_dir, server["name"], "nspawn.pid")).read().strip())
        except (OSError, ValueError):
            return "off"  # never started, or removed
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "off"
        except PermissionError:
            return "running"
        return "running"
    return state


def token_file(path: str) -> Callable[[], list[str]]:
    """The project's API tokens, one a line, read again whenever the file changes: as in Hetzner's console,
    a token added works at once and a deleted one is refused from the next request."""
    cache: dict[str, Any] = {"mtime": None, "tokens": []}

    def tokens() -> list[str]:
        mtime = os.stat(path).st_mtime_ns
        if mtime != cache["mtime"]:
            with open(path, encoding="utf-8") as f:
                cache.update(mtime=mtime, tokens=[line.strip() for line in f if line.strip()])
        return cache["tokens"]

    tokens()  # a missing or unreadable file stops the server at its start
    return tokens


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hastack.lab.hcloud_api", description=__doc__.splitlines()[0])
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--token-file", required=True, help="the project's Bearer tokens, one a line (read again on change)")
    p.add_argument("--state", required=True, help="JSON servers and floating IPs; changes are written back")
    p.add_argument("--cert", help="PEM certificate (chain): serve HTTPS")
    p.add_argument("--key", help="PEM private key of --cert")
    p.add_argument("--on-assign-cmd", action="append", default=[],
                   help="run on assign, e.g. 'ip route replace {ip}/32 via {server_public_ip}'; repeat for more, run in turn")
    p.add_argument("--on-poweroff-cmd", help="run on poweroff, e.g. 'machinectl poweroff {server_name}'")
    p.add_argument("--on-poweron-cmd", help="run on poweron, e.g. 'machinectl start {server_name}'")
    p.add_argument("--machines-dir", help="the lab's machines: a server runs while DIR/<name>/nspawn.pid is alive")
    p.add_argument("--rate-limit", type=int, default=3600, help="requests per window (default 3600)")
    p.add_argument("--rate-window", type=float, default=3600.0, help="seconds (default 3600)")
    args = p.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        p.error("--cert and --key go together")
    logging.basicConfig(level=logging.INFO, format="hcloud-api: %(message)s")

    token = token_file(args.token_file)
    with open(args.state, encoding="utf-8") as f:
        try:
            servers, fips = parse_state(json.load(f))
        except ValueError as e:
            p.error(f"{args.state}: {e}")
    on_assign = command_hook(*args.on_assign_cmd) if args.on_assign_cmd else None
    api = FakeHetznerAPI(token, servers, fips, on_assign=on_assign,
                         on_poweroff=command_hook(args.on_poweroff_cmd) if args.on_poweroff_cmd else None,
                         on_poweron=command_hook(args.on_poweron_cmd) if args.on_poweron_cmd else None,
                         power_state=machine_power(args.machines_dir) if args.machines_dir else None,
                         rate_limit=args.rate_limit, rate_window=args.rate_window)
    api.on_change = lambda: _write_json(args.state, api.state())
    if on_assign:
        for fip in api.floating_ips.values():
            if fip["server"] is not None:
                on_assign(copy.deepcopy(fip), api._render_server(api.servers[fip["server"]]))
    serve(api, args.bind, args.port, args.cert, args.key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
