"""Host services the machines use: an apt cache, an artifact server, the lab's
Hetzner API and the lab's S3.

The machines reach nothing but the host, so Debian packages come through
apt-cacher-ng and everything else (wheels, bundles) from a plain HTTP
server, both bound to the host's private-network address only; so is the
S3 stand-in (moto, TLS) the backups go to.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from hastack.lab import network
from hastack.lab.layout import APT_CACHE_PORT, ARTIFACT_PORT, DEBIAN_MIRROR, Addresses, Paths
from hastack.lab.system import LabError, pid_alive, read_pid

SERVICES = ("apt-cacher-ng", "artifacts", "hcloud-api", "s3", "alert-receiver", "uptime-blackbox",
            "uptime-prometheus", "uptime-alertmanager", "status-page", "status-web")
ALERT_RECEIVER_PORT = 9095
UPTIME_PROMETHEUS_PORT = 9190
STATUS_WEB_PORT = 8080


def _start(paths: Paths, name: str, cmd: list[str]) -> int:
    pidfile = paths.run / f"{name}.pid"
    pid = read_pid(pidfile)
    if pid_alive(pid):
        return pid
    paths.logs.mkdir(parents=True, exist_ok=True)
    log = open(paths.logs / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    pidfile.write_text(str(proc.pid))
    return proc.pid


def _wait_port(paths: Paths, host: str, port: int, name: str, timeout: float = 120) -> None:
    """Until ``name`` listens. A service that exits fails at once, with its log's end; one that starts slowly
    (the first start of a fresh clone compiles its Python modules, on a machine busy with the lab) is given
    time."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if not pid_alive(read_pid(paths.run / f"{name}.pid")):
                tail = (paths.logs / f"{name}.log").read_text(errors="replace")[-1500:]
                raise LabError(f"{name} exited before listening on {host}:{port}; the end of its log:\n{tail}") from None
            time.sleep(0.2)
    raise LabError(f"{name} did not start listening on {host}:{port} in {timeout:.0f} s; "
                   f"see its log in .lab/logs/{name}.log")


def start(paths: Paths, addr: Addresses) -> None:
    paths.run.mkdir(parents=True, exist_ok=True)
    paths.apt_cache.mkdir(parents=True, exist_ok=True)
    paths.artifacts.mkdir(parents=True, exist_ok=True)

    # Our own copy of the config: the shipped backend mirror list does not
    # resolve here, the host's own Debian mirror does.
    conf = paths.run / "acng"
    if not conf.exists():
        shutil.copytree("/etc/apt-cacher-ng", conf)
    (conf / "backends_debian").write_text(DEBIAN_MIRROR.rstrip("/") + "/\n")
    _start(paths, "apt-cacher-ng", [
        "/usr/sbin/apt-cacher-ng", "-c", str(conf), "ForeGround=1",
        f"Port={APT_CACHE_PORT}", f"BindAddress={addr.host_private}",
        f"CacheDir={paths.apt_cache}", f"LogDir={paths.logs}", f"PidFile={paths.run / 'acng-daemon.pid'}",
        f"SocketPath={paths.run / 'acng.socket'}",
    ])
    _start(paths, "artifacts", [
        sys.executable, "-m", "http.server", "--bind", addr.host_private, "--directory", str(paths.artifacts),
        str(ARTIFACT_PORT),
    ])
    _wait_port(paths, addr.host_private, APT_CACHE_PORT, "apt-cacher-ng")
    _wait_port(paths, addr.host_private, ARTIFACT_PORT, "artifacts")


def start_hcloud_api(paths: Paths, addr: Addresses, servers: list[dict], floating_ip: dict, cert, token_file) -> None:
    """The lab's Hetzner API on the operator's public address; an assign re-routes the floating IP."""
    import json

    from hastack.lab.layout import HCLOUD_API_PORT

    state = paths.run / "hcloud-state.json"
    if not state.exists():  # the API writes changes back; a restarted API keeps the current owner
        state.write_text(json.dumps({"servers": servers, "floating_ips": [floating_ip]}, indent=2))
    cert_file, key_file = paths.run / "hcloud-api.crt", paths.run / "hcloud-api.key"
    cert_file.write_text(cert.chain_pem)
    key_file.touch(mode=0o600)
    key_file.write_text(cert.key_pem)
    _start(paths, "hcloud-api", [
        sys.executable, "-m", "hastack.lab.hcloud_api", "--bind", addr.host_public, "--port", str(HCLOUD_API_PORT),
        "--token-file", str(token_file), "--state", str(state), "--cert", str(cert_file), "--key", str(key_file),
        # the re-route as the two `ip` commands themselves, not a Python process: importing
        # hastack took 1.3-2.8 s on a loaded lab, and a Hetzner re-route does not wait for that
        *(arg for cmd in network.floating_ip_route_commands("{ip}", "{server_public_ip}")
          for arg in ("--on-assign-cmd", shlex.join(cmd))),
        "--on-poweroff-cmd", f"{sys.executable} -m hastack.cli lab stop {{server_name}} --hard",
        "--on-poweron-cmd", f"{sys.executable} -m hastack.cli lab start {{server_name}}",
        # a server's status is its machine's: one started again by hand is running, as in Hetzner's API
        "--machines-dir", str(paths.machines),
    ])
    _wait_port(paths, addr.host_public, HCLOUD_API_PORT, "hcloud-api")


def fetch_wheels(paths: Paths, lock: Path) -> None:
    """The Python packages the machines install (they reach no index), fetched once from PyPI: exactly
    the locked wheels, checked against the lock's hashes as the machines check them again."""
    marker = paths.wheels / ".requirements"
    locked = [line for line in lock.read_text().splitlines() if line and not line.startswith("#")]
    if marker.exists() and marker.read_text() == lock.read_text() and len(list(paths.wheels.glob("*.whl"))) == len(locked):
        return
    # only the locked files: the machines' pip picks the best wheel it is offered (a find-links page
    # gives no hashes to choose by), so an older or platform wheel left here would fail their hash check
    shutil.rmtree(paths.wheels, ignore_errors=True)
    paths.wheels.mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                           "--require-hashes", "--no-deps", "--only-binary=:all:", "--dest", str(paths.wheels),
                           "-r", str(lock)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"could not fetch the wheels of {lock}: {proc.stderr.strip()}")
    marker.write_text(lock.read_text())


def start_s3(paths: Paths, addr: Addresses, topo, cert, log=print) -> dict:
    """The lab's S3 on the host's private address (the data hosts back up to it), set up
    like production's bucket, key and identities (hastack/lab/s3.py); its credentials."""
    from hastack.lab import s3
    from hastack.lab.layout import S3_PORT

    return s3.ensure(paths, topo, addr.host_private, S3_PORT, cert, log=log)


def alerts_log(paths: Paths):
    return paths.logs / "alerts.jsonl"


def status_dir(paths: Paths):
    return paths.root / "status"


def uptime_url(addr: Addresses) -> str:
    return f"http://{addr.internet}:{UPTIME_PROMETHEUS_PORT}"


def status_url(addr: Addresses) -> str:
    return f"http://{addr.host_public}:{STATUS_WEB_PORT}/"


def start_monitoring(paths: Paths, addr: Addresses, stack: str, ca_file: Path | None = None) -> None:
    """What sits outside the stack: the alert receiver (operator host), the uptime probe (the
    internet namespace, as an external host would be) and the status page (operator host)."""
    from dataclasses import replace

    from hastack.lab.layout import INTERNET_NS
    from roles.monitoring import uptime

    _start(paths, "alert-receiver", [
        sys.executable, "-m", "hastack.lab.alert_receiver", "--log", str(alerts_log(paths)),
        "--bind", f"{addr.host_private}:{ALERT_RECEIVER_PORT}", "--bind", f"{addr.host_public}:{ALERT_RECEIVER_PORT}",
    ])
    probe = uptime.for_stack(stack, addr.floating_ip, prometheus=f"{addr.internet}:{UPTIME_PROMETHEUS_PORT}",
                             alertmanager="127.0.0.1:9193", blackbox="127.0.0.1:9115", probe_from="lab-internet",
                             ca_file=ca_file)
    # from the internet namespace the operator host is its public address
    probe = replace(probe, webhooks=(f"http://{addr.host_public}:{ALERT_RECEIVER_PORT}/uptime",), email=None)
    config = uptime.write_config(probe, paths.run / "uptime")
    for name, argv in uptime.commands(probe, config, paths.run / "uptime").items():
        _start(paths, name, ["ip", "netns", "exec", INTERNET_NS, *argv])
    out = status_dir(paths)
    out.mkdir(parents=True, exist_ok=True)
    _start(paths, "status-page", [
        sys.executable, "-m", "hastack.cli", "uptime", "page", "--stack", stack, "--out", str(out),
        "--uptime-url", uptime_url(addr), "--every", "60",
    ])
    _start(paths, "status-web", [
        sys.executable, "-m", "http.server", "--bind", addr.host_public, "--directory", str(out), str(STATUS_WEB_PORT),
    ])
    _wait_port(paths, addr.host_private, ALERT_RECEIVER_PORT, "alert-receiver")
    _wait_port(paths, addr.internet, UPTIME_PROMETHEUS_PORT, "uptime-prometheus")
    _wait_port(paths, addr.host_public, STATUS_WEB_PORT, "status-web")


def stop_service(paths: Paths, name: str) -> bool:
    """Stop one service (SIGTERM, then SIGKILL after 5 s); was it running?"""
    pid = read_pid(paths.run / f"{name}.pid")
    was_running = pid_alive(pid)
    if was_running:
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
    (paths.run / f"{name}.pid").unlink(missing_ok=True)
    return was_running


def stop(paths: Paths) -> list[str]:
    stopped = []
    for name in SERVICES:
        pid = read_pid(paths.run / f"{name}.pid")
        if stop_service(paths, name):
            stopped.append(f"process {name} ({pid})")
    return stopped


def running(paths: Paths) -> dict[str, int | None]:
    return {name: (pid if pid_alive(pid := read_pid(paths.run / f"{name}.pid")) else None) for name in SERVICES}


def proxy_url(addr: Addresses) -> str:
    return f"http://{addr.host_private}:{APT_CACHE_PORT}"


def artifact_url(addr: Addresses) -> str:
    return f"http://{addr.host_private}:{ARTIFACT_PORT}"
