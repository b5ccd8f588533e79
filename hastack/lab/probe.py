"""A client that requests a URL at a fixed interval and records each answer.

Runs inside the lab's internet namespace, as a file of its own (standard
library only): `start` launches it there; prints one JSON line per request:
start time, duration, ok, status or error, and which host answered.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


class Trust:
    """The TLS context for the stack's CA file, made again when the file changes: while the stack CA rotates
    the file holds both CAs, then the new one only, as a client's trust store is updated."""

    def __init__(self, ca: str):
        self.ca, self.seen, self.ctx = ca, None, None

    def context(self) -> ssl.SSLContext:
        stamp = os.stat(self.ca).st_mtime_ns
        if stamp != self.seen:
            self.ctx, self.seen = ssl.create_default_context(cafile=self.ca), stamp
        return self.ctx


# A connection attempt is given up after this long and the next request tries again, as a client with a
# connect timeout does: the outage the probe sees is the stack's, to within 0.25 s. Without it a SYN lost
# to a dead load balancer is resent after 1 s, then 3 s (TCP's backoff), so a failover done in 1.7 s
# looked like an outage of 3.1 s. (A live machine's kernel answers a SYN in a millisecond, loaded or not.)
CONNECT_TIMEOUT = 0.25


class _Connection(http.client.HTTPSConnection):
    """HTTPS whose TCP connect gives up after `connect_timeout`; the TLS handshake and the answer get `timeout`."""

    def __init__(self, *args, connect_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)

        def create(address, timeout, source_address=None):
            sock = socket.create_connection(address, connect_timeout, source_address)
            sock.settimeout(timeout)
            return sock

        self._create_connection = create


class _Handler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, connect_timeout: float):
        super().__init__(context=context)
        self.connect_timeout = connect_timeout

    def https_open(self, req):
        return self.do_open(functools.partial(_Connection, connect_timeout=self.connect_timeout), req,
                            context=self._context)


def _open(req: urllib.request.Request, trust: Trust, timeout: float):
    """urlopen, with CONNECT_TIMEOUT and the stack's CA as it is now."""
    return urllib.request.build_opener(_Handler(trust.context(), CONNECT_TIMEOUT)).open(req, timeout=timeout)


def write_probe(url: str, ca: str, interval: float, duration: float, timeout: float) -> None:
    """POST a record with a fresh request_id each time; 201 is an acknowledged write."""
    import uuid

    trust = Trust(ca)
    end = time.monotonic() + duration
    n = 0
    while time.monotonic() < end:
        n += 1
        started, t0 = time.time(), time.monotonic()
        request_id = str(uuid.uuid4())
        rec = {"t": started, "request_id": request_id}
        try:
            req = urllib.request.Request(url, method="POST", data=json.dumps({"request_id": request_id, "value": f"w{n}"}).encode(),
                                         headers={"Connection": "close", "Content-Type": "application/json"})
            with _open(req, trust, timeout) as resp:
                body = json.loads(resp.read() or b"{}")
                rec.update(ok=resp.status == 201, status=resp.status, id=body.get("id"), host=body.get("host"))
        except Exception as e:  # noqa: BLE001 - every failure is a data point
            rec.update(ok=False, error=_describe(e))
        rec["d"] = round(time.monotonic() - t0, 4)
        print(json.dumps(rec), flush=True)
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))


def _describe(e: Exception) -> str:
    """The error, with what the server said: a 503 from the app names the database's error, one from
    HAProxy has an HTML body (no app server available)."""
    text = type(e).__name__ + ": " + str(e)[:120]
    if isinstance(e, urllib.error.HTTPError):
        try:
            body = e.read(2048).decode(errors="replace")
        except Exception:  # noqa: BLE001 - the status alone is still a data point
            return text
        try:
            said = json.loads(body)
            said = f"{said.get('error')}: {said.get('detail', '')}" if isinstance(said, dict) else body
        except ValueError:
            said = " ".join(body.split())
        text += " (" + said[:160] + ")"
    return text


def probe(url: str, ca: str, interval: float, duration: float, timeout: float) -> None:
    trust = Trust(ca)
    end = time.monotonic() + duration
    while time.monotonic() < end:
        started = time.time()
        t0 = time.monotonic()
        rec = {"t": started}
        try:
            # a new connection every time: a client stuck on a dead server's keep-alive would hide the failover
            req = urllib.request.Request(url, headers={"Connection": "close"})
            with _open(req, trust, timeout) as resp:
                body = json.loads(resp.read() or b"{}")
                rec.update(ok=resp.status == 200, status=resp.status, host=body.get("host"))
        except Exception as e:  # noqa: BLE001 - every failure is a data point
            rec.update(ok=False, error=_describe(e))
        rec["d"] = round(time.monotonic() - t0, 4)
        print(json.dumps(rec), flush=True)
        time.sleep(max(0.0, interval - (time.monotonic() - t0)))


def held(url: str, ca: str, timeout: float) -> None:
    """One connection opened (TLS handshake done) before a change and used after it: prints a ready line,
    waits for a line on stdin, then sends one GET on that same connection and prints its answer."""
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout, context=Trust(ca).context())
    conn.connect()
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    rec = {"t": time.time()}
    try:
        conn.request("GET", u.path or "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        rec.update(ok=resp.status == 200, status=resp.status)
    except Exception as e:  # noqa: BLE001 - the failure is the answer
        rec.update(ok=False, error=_describe(e))
    print(json.dumps(rec), flush=True)


def outage(records: list[dict]) -> dict:
    """The client-visible outage: from the last success before the first failure to the next success."""
    failures = [i for i, r in enumerate(records) if not r["ok"]]
    if not failures:
        return {"outage_s": 0.0, "failed": 0, "requests": len(records)}
    first, last = failures[0], failures[-1]
    before = records[first - 1]["t"] + records[first - 1]["d"] if first > 0 else records[0]["t"]
    after = next((r for r in records[last + 1:] if r["ok"]), None)
    return {
        "outage_s": round((after["t"] + after["d"] - before) if after else float("inf"), 3),
        "failed": len(failures),
        "requests": len(records),
        "recovered": after is not None,
    }


def failure_windows(records: list[dict], quiet: float) -> list[dict]:
    """The stretches the client saw failing, each from the last success before it to the next success;
    failures less than ``quiet`` seconds of successes apart are one stretch (a monitor sampling every
    ``quiet`` seconds could not tell them apart). Each: start, end, seconds, failed, errors."""
    windows: list[dict] = []
    last_ok_end = records[0]["t"] if records else 0.0
    for r in records:
        if r["ok"]:
            if windows and windows[-1]["open"]:
                w = windows[-1]
                w.update(end=r["t"] + r["d"], open=False)
            last_ok_end = r["t"] + r["d"]
            continue
        w = windows[-1] if windows else None
        if w and (w["open"] or r["t"] - w["end"] < quiet):
            w["open"] = True
        else:
            w = {"start": last_ok_end, "end": float("inf"), "failed": 0, "errors": set(), "open": True}
            windows.append(w)
        w["failed"] += 1
        w["errors"].add(r.get("error", "?").split(" (")[0][:60])
    for w in windows:
        if w.pop("open"):
            w["end"] = float("inf")
        w["seconds"] = round(w["end"] - w["start"], 3)
        w["errors"] = sorted(w["errors"])
    return windows


def _in_internet(lab, path: str, *args: str) -> list[str]:
    """This file's command line, run in the internet namespace against https://<floating IP><path>."""
    from hastack.lab.layout import INTERNET_NS  # here: the probe itself runs on the standard library alone

    return ["ip", "netns", "exec", INTERNET_NS, sys.executable, os.path.abspath(__file__),
            f"https://{lab.addr.floating_ip}{path}", "--ca", str(lab.stack_trust_file), *args]


def start(lab, seconds: float, path: str = "/", interval: float = 0.1, timeout: float = 3.0,
          write: bool = False) -> subprocess.Popen:
    """The probe in the internet namespace against https://<floating IP><path>, as a user's client;
    ``write``: POST records instead of GETs. Read its answers with `records`."""
    # answers go to a file, not a pipe: nobody reads them before the end, and a full pipe
    # would stop the probe after about 64 kB (some 400 requests)
    out = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        _in_internet(lab, path, "--interval", str(interval), "--duration", str(seconds), "--timeout", str(timeout),
                     *(["--write"] if write else [])),
        stdout=out, text=True, preexec_fn=_die_with_parent)
    proc.answers = out
    return proc


def start_held(lab, path: str = "/", timeout: float = 5.0) -> subprocess.Popen:
    """`held` in the internet namespace: returns once its connection is open; `held_answer` uses it."""
    proc = subprocess.Popen(_in_internet(lab, path, "--timeout", str(timeout), "--held"),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    ready = proc.stdout.readline()
    if '"ready"' not in ready:
        proc.kill()
        raise RuntimeError(f"the held connection did not open: {ready!r}")
    return proc


def held_answer(proc: subprocess.Popen) -> dict:
    """Sends the held connection's request now; its answer."""
    out, _ = proc.communicate("go\n", timeout=30)
    return json.loads(out.strip().splitlines()[-1])


def _die_with_parent() -> None:
    """A probe whose starter is killed stops too (PR_SET_PDEATHSIG, kept across exec): a stray
    writer would go on adding records to the site for its whole duration."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def records(proc: subprocess.Popen, timeout: float = 120) -> list[dict]:
    """Every answer a started probe recorded, once it has finished."""
    proc.wait(timeout=timeout)
    proc.answers.seek(0)
    return [json.loads(line) for line in proc.answers.read().splitlines() if line.strip()]


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--ca", required=True)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--write", action="store_true", help="POST records (the app's /records) instead of GETs")
    p.add_argument("--held", action="store_true", help="one connection, opened now, its GET sent on a line of stdin")
    a = p.parse_args()
    if a.held:
        held(a.url, a.ca, a.timeout)
    else:
        (write_probe if a.write else probe)(a.url, a.ca, a.interval, a.duration, a.timeout)
    sys.exit(0)
