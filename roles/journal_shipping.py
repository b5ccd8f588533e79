"""The audit trail off the hosts: every host's journal (logins, sudo and the commands it ran, service
logs) is shipped as it is written to the monitoring host, over TLS.

Each host runs systemd-journal-upload, which sends only to a sink whose certificate the stack CA signed
(and shows a client certificate of the stack CA of its own);
the monitoring host runs systemd-journal-remote, which keeps one journal file per sending address in a
directory only root reads, for a configured number of days. An admin who leaves cannot erase what they
did: it was on the monitoring host a moment after they did it. The monitoring host's own journal stays
on it (it is the sink).

Who may send: Debian builds journal-remote without GnuTLS, so it cannot check client certificates (it
says "Certificate checking disabled"); the host firewall lets only the stack's private addresses reach
the port, and each file is named after the address that sent it.
"""

from __future__ import annotations

from typing import Any, Mapping

from pyinfra import host
from pyinfra.operations import systemd

from roles.base.config import stack_ca_file
from roles.template_file import template_file
from roles.tls_files import issue, put_tls_files

PORT = 19532
UPLOAD_TLS_DIR = "/etc/hastack/journal-upload"
SINK_TLS_DIR = "/etc/hastack/journal-remote"
UPLOAD_CONF = "/etc/systemd/journal-upload.conf.d/hastack.conf"
UPLOAD_UNIT = "/etc/systemd/system/systemd-journal-upload.service.d/hastack.conf"
SINK_CONF = "/etc/systemd/journal-remote.conf.d/hastack.conf"
SINK_UNIT = "/etc/systemd/system/systemd-journal-remote.service.d/hastack.conf"
SINK_SOCKET = "/etc/systemd/system/systemd-journal-remote.socket.d/hastack.conf"
RETENTION_SERVICE = "/etc/systemd/system/hastack-journal-retention.service"
RETENTION_TIMER = "/etc/systemd/system/hastack-journal-retention.timer"
# where the sink keeps the hosts' journals: remote-<host>.journal, root only
REMOTE_DIR = "/var/log/journal/remote"
PACKAGE = "systemd-journal-remote"  # both the uploader and the sink


def sink_data(topo, h) -> dict[str, Any]:
    """Host data: where this host ships its journal (None on the sink itself)."""
    sinks = topo.hosts_with_role("monitoring")
    if not sinks or sinks[0].name == h.name:
        return {"journal_sink": None}
    return {"journal_sink": {"name": sinks[0].name, "ip": sinks[0].private_ip, "port": PORT}}


def upload_vars(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    sink = data["journal_sink"]
    return {UPLOAD_CONF: {"url": f"https://{sink['ip']}:{sink['port']}", "ca_file": stack_ca_file(data["stack"])},
            UPLOAD_UNIT: {"tls_dir": UPLOAD_TLS_DIR}}


def sink_vars(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        SINK_CONF: {},
        SINK_UNIT: {"tls_dir": SINK_TLS_DIR},
        SINK_SOCKET: {"listen": f"{data['private_ip']}:{PORT}"},
        RETENTION_SERVICE: {"directory": REMOTE_DIR, "days": data["monitoring_journal_retention_days"]},
        RETENTION_TIMER: {},
    }


def upload() -> None:
    """On every host but the sink: ship the journal to it, from where this host's uploader stopped."""
    data = host.data.dict()
    if not data.get("journal_sink") or not data.get("pki_dir"):
        return
    tvars = upload_vars(data)
    # journal-upload sends a client certificate to every https sink (it does not start without one)
    issued = issue(f"journal-upload-{host.name}", [f"{UPLOAD_TLS_DIR}/{f}" for f in ("client.crt", "client.key")],
                   dns=[host.name], ips=[data["private_ip"]], client=True)
    tls = put_tls_files("Journal upload", UPLOAD_TLS_DIR, "root", issued, dir_mode="0700",
                        names=("client.crt", "client.key", "ca.crt"))
    conf = template_file("base", UPLOAD_CONF, tvars)
    unit = template_file("base", UPLOAD_UNIT, tvars)
    systemd.service(name="Journal upload running", service="systemd-journal-upload.service", running=True,
                    enabled=True, daemon_reload=unit.will_change,
                    restarted=any(op.will_change for op in (conf, unit, *tls)))


def sink() -> None:
    """On the monitoring host: receive every host's journal, keep it for the configured days."""
    data = host.data.dict()
    tvars = sink_vars(data)
    issued = issue(f"journal-remote-{host.name}", [f"{SINK_TLS_DIR}/{f}" for f in ("server.crt", "server.key")],
                   dns=[host.name], ips=[data["private_ip"]])
    tls = put_tls_files("Journal sink", SINK_TLS_DIR, "root", issued, dir_mode="0700")
    conf = template_file("monitoring", SINK_CONF, tvars)
    unit = template_file("monitoring", SINK_UNIT, tvars)
    socket = template_file("monitoring", SINK_SOCKET, tvars)
    retention = template_file("monitoring", RETENTION_SERVICE, tvars)
    timer = template_file("monitoring", RETENTION_TIMER, tvars)
    reload = any(op.will_change for op in (unit, socket, retention, timer))
    systemd.service(name="Journal sink socket", service="systemd-journal-remote.socket", running=True,
                    enabled=True, daemon_reload=reload, restarted=socket.will_change)
    # socket-activated: a restart only when it runs (a stopped service starts at the next connection)
    systemd.service(name="Journal sink takes its new configuration", service="systemd-journal-remote.service",
                    restarted=True, _if=lambda: any(op.did_change() for op in (conf, unit, *tls)))
    systemd.service(name="Journal retention timer", service="hastack-journal-retention.timer", running=True,
                    enabled=True, restarted=timer.will_change)
