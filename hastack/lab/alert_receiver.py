"""The lab's alert receiver: records every notification Alertmanager delivers.

A webhook receiver on the operator host (the stack's Alertmanager reaches it on
the private network, the uptime probe's from the internet namespace). Each
notification is one JSON line, with the time it arrived, so tests assert on
delivered alerts, not only on firing ones.

  python -m hastack.lab.alert_receiver --bind ADDR:PORT [--bind ...] --log FILE
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

_lock = threading.Lock()


def make_handler(log: Path):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length))
            except ValueError:
                self.send_error(400, "not JSON")
                return
            line = json.dumps({"received_at": time.time(), "path": self.path, "notification": body})
            with _lock, open(log, "a") as f:
                f.write(line + "\n")
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    return Handler


def read(log: Path) -> Iterator[dict]:
    """Every alert delivered so far, flattened: alertname, status (firing/resolved), labels,
    annotations, startsAt/endsAt and when it arrived."""
    if not log.exists():
        return
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        for alert in entry["notification"].get("alerts", []):
            yield {"received_at": entry["received_at"], "status": alert["status"],
                   "alertname": alert["labels"].get("alertname"), "labels": alert["labels"],
                   "annotations": alert.get("annotations", {}), "startsAt": alert.get("startsAt"),
                   "endsAt": alert.get("endsAt"), "receiver_path": entry["path"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bind", action="append", required=True, help="address:port (repeatable)")
    p.add_argument("--log", required=True, type=Path)
    args = p.parse_args(argv)
    args.log.parent.mkdir(parents=True, exist_ok=True)
    args.log.touch(mode=0o600)
    os.chmod(args.log, 0o600)
    servers = []
    for bind in args.bind:
        host, _, port = bind.rpartition(":")
        servers.append(ThreadingHTTPServer((host, int(port)), make_handler(args.log)))
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    servers[0].serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
