"""`hastack uptime`: the external uptime probe and the status page.

The probe must not share the stack's fate, so it runs outside the Hetzner
project: on the operator's CI runner or a small host elsewhere (in the lab:
the "internet" namespace and the operator host). It is Debian's blackbox
exporter probing the site through the floating IP (HTTPS: status, TLS,
certificate expiry, response time; plain HTTP: the redirect), a Prometheus
keeping the results and alerting on them through its own Alertmanager (the
stack's receivers), and the status page generated every minute from that
Prometheus and, while it answers, the stack's.

  hastack uptime config  --stack S --dir DIR     the configuration files
  hastack uptime install --stack S               configuration and systemd units on this machine
  hastack uptime page    --stack S --out DIR     the status page, every minute
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from hastack.templating import render
from roles.monitoring import config as mc
from roles.monitoring import rules

app = typer.Typer(no_args_is_help=True, help="The external uptime probe of a stack and its status page.")

CONFIG_DIR = Path("/etc/hastack-uptime")
DATA_DIR = Path("/var/lib/hastack-uptime")
PAGE_DIR = Path("/var/www/hastack-status")
FILES = ("blackbox.yml", "prometheus.yml", "uptime.rules.yml", "alertmanager.yml")


@dataclass(frozen=True)
class Uptime:
    stack: str
    site: dict[str, str]  # https, http (through the floating IP) and name (TLS and Host)
    interval: str  # a Prometheus duration: how often the site is probed
    ca_pem: str | None  # the stack CA, when the site's certificate is the stack's own
    webhooks: tuple[str, ...]
    email: dict[str, Any] | None
    prometheus: str = "127.0.0.1:9090"
    alertmanager: str = "127.0.0.1:9093"
    blackbox: str = "127.0.0.1:9115"
    probe_from: str = "external"

    @property
    def interval_seconds(self) -> float:
        return duration_seconds(self.interval)

    @property
    def url(self) -> str:
        return f"http://{self.prometheus}"


def duration_seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", value)
    if not m:
        raise ValueError(f"{value!r} is not a duration such as 15s or 1m")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def for_stack(stack: str, floating_ip: str, ca_file: Path | None = None, **listen: str) -> Uptime:
    """The probe of ``stack``'s site at ``floating_ip``, from the stack file's monitoring settings.
    A site with the stack's own certificate is verified against the stack CA (``ca_file``, or
    the one `pulumi up` keeps on the operator's machine)."""
    from hastack.inventory import pki_root
    from hastack.pki import CertificateAuthority

    topo = _topology(stack)
    settings = topo.resolved_settings("monitoring")
    internal = topo.resolved_settings("loadbalancer")["lb_certificate"] == "internal"
    ca = None
    if internal:
        path = ca_file or (_lab_stack_trust() if _is_lab(stack)
                           else CertificateAuthority(pki_root() / stack, stack).cert_path)
        if not path.is_file():
            raise ValueError(f"the site's certificate is the stack's own (loadbalancer certificate: internal), and its "
                             f"CA {path} is not on this machine: copy it here and pass --ca-file")
        ca = path.read_text()
    email = settings["monitoring_alert_email"]
    name = topo.domain or floating_ip
    return Uptime(stack=stack, site={"https": f"https://{floating_ip}/", "http": f"http://{floating_ip}/", "name": name},
                  interval=settings["monitoring_site_probe_interval"], ca_pem=ca,
                  webhooks=tuple(settings["monitoring_alert_webhooks"]),
                  email=email.model_dump() if hasattr(email, "model_dump") else email, **listen)


def _is_lab(stack: str) -> bool:
    from hastack.lab.layout import is_lab_stack

    return is_lab_stack(stack)


def _lab_topology(stack: str):
    from hastack.lab.layout import lab_topology

    return lab_topology(stack)


def _topology(stack: str):
    from hastack.stackfile import load_stack

    return _lab_topology(stack) if _is_lab(stack) else load_stack(stack)


def _lab_stack_trust() -> Path:
    from hastack.lab.layout import default_paths, lab_stack_trust

    return lab_stack_trust(default_paths())


def write_config(u: Uptime, directory: Path) -> dict[str, Path]:
    """The four configuration files (and the stack CA) in ``directory``; returns name -> path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in FILES}
    ca_file = directory / "stack-ca.crt"
    if u.ca_pem:
        ca_file.write_text(u.ca_pem)
    blackbox = render("monitoring", mc.BLACKBOX_YML, ca_file=str(ca_file), site_name=u.site["name"],
                      site_internal_ca=bool(u.ca_pem))
    timeout = f"{min(10.0, u.interval_seconds):g}s"
    prometheus = render("monitoring", "uptime/prometheus.yml", stack=u.stack, interval=u.interval, timeout=timeout,
                        probe_from=u.probe_from, alertmanager=u.alertmanager, blackbox=u.blackbox,
                        rules_file=str(paths["uptime.rules.yml"]), site=u.site)
    uptime_rules = render("monitoring", rules.UPTIME_RULES_FILE, **rules.uptime_rules_vars(u.site["https"]))
    alertmanager = render("monitoring", mc.ALERTMANAGER_YML, stack=u.stack, webhooks=list(u.webhooks), email=u.email)
    for name, text in zip(FILES, (blackbox, prometheus, uptime_rules, alertmanager), strict=True):
        tmp = paths[name].with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o640)  # webhook URLs may hold tokens
        tmp.replace(paths[name])
    return paths


def commands(u: Uptime, config: dict[str, Path], data_dir: Path) -> dict[str, list[str]]:
    """The three programs of the probe (Debian's binaries), by name."""
    return {
        "uptime-blackbox": ["prometheus-blackbox-exporter", f"--config.file={config['blackbox.yml']}",
                            f"--web.listen-address={u.blackbox}"],
        "uptime-prometheus": ["prometheus", f"--config.file={config['prometheus.yml']}",
                              f"--storage.tsdb.path={data_dir / 'prometheus'}", "--storage.tsdb.retention.time=90d",
                              f"--web.listen-address={u.prometheus}"],
        "uptime-alertmanager": ["prometheus-alertmanager", f"--config.file={config['alertmanager.yml']}",
                                f"--storage.path={data_dir / 'alertmanager'}", f"--web.listen-address={u.alertmanager}",
                                "--cluster.listen-address="],
    }


def generate_page(stack: str, uptime_url: str | None, interval: float, out: Path) -> Any:
    """Collect (the stack's Prometheus over SSH when it answers, the probe's over HTTP) and write
    ``out``/index.html; returns the status."""
    from hastack import status as st

    started = time.monotonic()
    try:
        entries = _entries(stack)
    except Exception as e:  # no outputs here (the stack is gone or unreachable): the site part still works
        result = st.collect(None, st.HttpPrometheus(uptime_url) if uptime_url else None, interval, stack=stack,
                            stack_error=f"{st.STACK_UNREACHABLE}: {e}")
    else:
        result = st.collect_for_stack(stack, entries, uptime_url, interval)
    result.generation_seconds = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    st.write_page(result, out / "index.html")
    return result


def _entries(stack: str) -> dict:
    from hastack.inventory import host_entries, stack_outputs

    if _is_lab(stack):
        from hastack.lab import Lab

        return Lab(stack, log=lambda _m: None).inventory_entries()
    return host_entries(stack_outputs(stack))


# ------------------------------------------------------------------ commands


def probe_interval(stack: str) -> float:
    """Seconds between the probes of ``stack``'s site (its siteProbeInterval)."""
    return duration_seconds(_topology(stack).resolved_settings("monitoring")["monitoring_site_probe_interval"])


def _floating_ip(stack: str, floating_ip: str | None) -> str:
    if floating_ip:
        return floating_ip
    if _is_lab(stack):
        return _lab_topology(stack).lab.floating_ip
    from hastack.inventory import stack_outputs

    return stack_outputs(stack)["floatingIp"]


def _probe(stack: str, floating_ip: str | None, ca_file: Path | None) -> Uptime:
    from hastack.console import fail
    from hastack.inventory import InventoryError
    from hastack.model import TopologyError
    from hastack.stackfile import StackFileError

    try:
        return for_stack(stack, _floating_ip(stack, floating_ip), ca_file)
    except (ValueError, TopologyError, StackFileError, InventoryError) as e:
        fail(str(e))


@app.command("config")
def config_cmd(stack: str = typer.Option(..., "--stack", "-s"),
               directory: Path = typer.Option(CONFIG_DIR, "--dir", help="where the files go"),
               floating_ip: str = typer.Option(None, help="the site's address (default: the stack's outputs)"),
               ca_file: Path = typer.Option(None, help="the stack CA (a site with the stack's own certificate)")) -> None:
    """Write the probe's configuration files (blackbox, Prometheus, rules, Alertmanager)."""
    from hastack.console import console

    u = _probe(stack, floating_ip, ca_file)
    for name, path in write_config(u, directory).items():
        console.print(f"{name}: {path}")


UNIT = """# Managed by hastack (`hastack uptime install`).
[Unit]
Description=hastack uptime probe: {name}
After=network-online.target
Wants=network-online.target

[Service]
User=prometheus
ExecStart={exec}
Restart=always
RestartSec=5
NoNewPrivileges=true
ProtectSystem=strict
ReadWritePaths={rw}

[Install]
WantedBy=multi-user.target
"""

PAGE_UNIT = """# Managed by hastack (`hastack uptime install`).
[Unit]
Description=hastack status page of {stack}, every minute
After=network-online.target

[Service]
ExecStart={hastack} uptime page --stack {stack} --out {out} --uptime-url http://{prometheus} --every 60
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
"""


@app.command()
def install(stack: str = typer.Option(..., "--stack", "-s"),
            floating_ip: str = typer.Option(None, help="the site's address (default: the stack's outputs)"),
            ca_file: Path = typer.Option(None, help="the stack CA (a site with the stack's own certificate)"),
            page_dir: Path = typer.Option(PAGE_DIR, help="where the status page is written (serve it from here)")) -> None:
    """On a Debian machine outside the stack (as root): the probe's configuration and systemd units,
    enabled and started. Needs the packages prometheus, prometheus-alertmanager and
    prometheus-blackbox-exporter; the status page also shows the stack's services when this
    machine can reach the stack (its outputs and an admin's SSH key)."""
    import shlex
    import shutil
    import sys

    from hastack.console import fail, say

    if os.geteuid() != 0:
        fail("run as root: it writes /etc/hastack-uptime and systemd units")
    missing = [b for b in ("prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter")
               if not shutil.which(b)]
    if missing:
        fail(f"not installed: {', '.join(missing)} (apt install {' '.join(missing)})")
    u = _probe(stack, floating_ip, ca_file)
    config = write_config(u, CONFIG_DIR)
    subprocess.run(["chgrp", "-R", "prometheus", str(CONFIG_DIR)], check=True)
    for sub in ("prometheus", "alertmanager"):
        (DATA_DIR / sub).mkdir(parents=True, exist_ok=True)
    subprocess.run(["chown", "-R", "prometheus:prometheus", str(DATA_DIR)], check=True)
    page_dir.mkdir(parents=True, exist_ok=True)
    units = {}
    for name, argv in commands(u, config, DATA_DIR).items():
        units[f"hastack-{name}.service"] = UNIT.format(name=name, exec=shlex.join(argv), rw=DATA_DIR)
    units["hastack-status-page.service"] = PAGE_UNIT.format(
        stack=stack, out=page_dir, prometheus=u.prometheus, hastack=Path(sys.argv[0]).resolve())
    for unit, text in units.items():
        Path("/etc/systemd/system", unit).write_text(text)
    subprocess.run(["systemctl", "daemon-reload"], check=True)
    subprocess.run(["systemctl", "enable", "--now", *units], check=True)
    say(f"uptime probe of {stack} running; the status page is {page_dir / 'index.html'} (serve that directory)")


@app.command()
def page(stack: str = typer.Option(..., "--stack", "-s"), out: Path = typer.Option(..., help="the page's directory"),
         uptime_url: str = typer.Option(None, help="the probe's Prometheus, e.g. http://127.0.0.1:9090"),
         interval: float = typer.Option(None, help="the probe interval in seconds (default: the stack file's)"),
         every: float = typer.Option(0, help="regenerate every N seconds (0: once)")) -> None:
    """Generate the status page (index.html in --out), once or every N seconds."""
    from hastack.console import say

    if interval is None:
        interval = probe_interval(stack)
    while True:
        started = time.monotonic()
        result = generate_page(stack, uptime_url, interval, out)
        say(f"status page written: {out / 'index.html'} in {result.generation_seconds:.2f} s")
        if not every:
            return
        time.sleep(max(1.0, every - (time.monotonic() - started)))
