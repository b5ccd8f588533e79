"""The loadbalancer role: HAProxy terminating TLS, keepalived deciding who is
active, and the failover agent moving the floating IP through the Hetzner API."""

import json
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd

import roles.app as app_role
from hastack.pki import CertificateAuthority
from hastack.templating import template_path
from roles import hcloud_agent
from roles.loadbalancer import DEFAULTS, STATS_PORT

AGENT_SOURCE = Path(__file__).resolve().parent / "failover_agent.py"
CERT = "/etc/haproxy/certs/site.pem"
WRAPPER = """#!/bin/sh
# Managed by hastack: the failover agent (keepalived notify, reconcile timer, operators).
exec {venv}/bin/python /opt/hastack/failover_agent.py --config /etc/hastack/failover.json "$@"
"""


def _interface_of(address: str) -> str:
    out = host.get_fact(Command, f"ip -o addr show to {address}/32 | awk '{{print $2}}'") or ""
    name = out.strip().split("@")[0]
    if not name:
        raise ValueError(f"{host.name}: no interface holds {address}")
    return name


def _site_certificate() -> str:
    if host.data.lb_certificate == "provided":
        path = host.data.lb_certificate_file
        if not path or not Path(path).exists():
            raise ValueError(f"{host.name}: lb_certificate is 'provided' but lb_certificate_file {path!r} does not exist")
        return Path(path).read_text()
    ca = CertificateAuthority(host.data.pki_dir, host.data.stack)
    names = [host.data.domain] if host.data.get("domain") else []
    issued = ca.issue("site", dns=names or [f"{host.data.stack}.invalid"], ips=[host.data.floating_ip])
    return issued.chain_pem + issued.key_pem


@deploy("loadbalancer", data_defaults=DEFAULTS)
def loadbalancer() -> None:
    d = host.data
    if not d.get("vrrp_peer_ip"):
        # keepalived without a unicast peer would fall back to multicast, which clouds drop
        raise ValueError(f"{host.name}: no VRRP peer in the topology; a load balancer pair needs both hosts")
    apt.packages(name="HAProxy and keepalived", packages=["haproxy", "keepalived", "curl"],
                 no_recommends=True)

    # -- HAProxy, and the check keepalived (and this converge) uses to see it serving
    files.directory(name="Check script directory", path="/usr/local/lib/hastack", user="root", group="root", mode="0755")
    check = files.template(name="HAProxy health check", src=template_path("loadbalancer", "/usr/local/lib/hastack/check-haproxy"),
                           dest="/usr/local/lib/hastack/check-haproxy", user="root", group="root", mode="0755",
                           stats_port=STATS_PORT)
    files.directory(name="Certificate directory", path="/etc/haproxy/certs", user="root", group="haproxy", mode="0750")
    cert = files.put(name="Site certificate and key", src=StringIO(_site_certificate()), dest=CERT,
                     user="root", group="haproxy", mode="0640")
    backend_tls = app_role.DEFAULTS["app_tls"] if d.get("app_tls") is None else d.app_tls
    stack_ca = files.put(name="Stack CA (verifies the app servers)",
                         src=StringIO(CertificateAuthority(d.pki_dir, d.stack).ca_pem_ensured()),
                         dest="/etc/haproxy/certs/stack-ca.pem", user="root", group="root", mode="0644")
    cfg = files.template(
        name="HAProxy configuration", src=template_path("loadbalancer", "/etc/haproxy/haproxy.cfg"),
        dest="/etc/haproxy/haproxy.cfg", user="root", group="root", mode="0644",
        hostname=host.name, certificate=CERT, private_ip=d.private_ip, stats_port=STATS_PORT,
        app_servers=d.app_servers, app_port=app_role.APP_PORT,
        health_path=d.get("app_health_path") or app_role.DEFAULTS["app_health_path"],
        max_conn_per_ip=d.lb_max_conn_per_ip, max_req_rate_per_ip=d.lb_max_req_rate_per_ip,
        hsts_max_age=d.lb_hsts_max_age, maxconn=d.lb_maxconn,
        backend_ca="/etc/haproxy/certs/stack-ca.pem" if backend_tls else None,
    )
    server.shell(name="Check HAProxy configuration", commands=["haproxy -c -q -f /etc/haproxy/haproxy.cfg"],
                 _if=lambda: cfg.did_change() or cert.did_change() or stack_ca.did_change())
    systemd.service(name="HAProxy running", service="haproxy.service", running=True, enabled=True,
                    reloaded=cfg.will_change or cert.will_change or stack_ca.will_change)
    # a reload that fails keeps the old configuration running: check it really serves
    server.shell(name="HAProxy answers", commands=[
        "for i in 1 2 3 4 5 6 7 8 9 10; do /usr/local/lib/hastack/check-haproxy && exit 0; sleep 0.5; done; "
        "journalctl -u haproxy -n 5 --no-pager; exit 1"],
        _if=lambda: cfg.did_change() or cert.did_change() or stack_ca.did_change())

    # -- the failover agent
    hcloud_agent.install()
    files.put(name="Failover agent", src=str(AGENT_SOURCE), dest="/opt/hastack/failover_agent.py",
              user="root", group="root", mode="0644")
    files.put(name="Failover agent command", src=StringIO(WRAPPER.format(venv=hcloud_agent.VENV)),
              dest="/usr/local/sbin/hastack-failover", user="root", group="root", mode="0755")
    config = {
        **{k: v for k, v in hcloud_agent.api_config().items() if v is not None},
        "floating_ip_id": int(d.floating_ip_id),
        "floating_ip": d.floating_ip,
        "server_id": int(d.server_id),
        "server_name": host.name,
        "peer_server_id": int(d.vrrp_peer_server_id),
        "interface": _interface_of(d.public_ip),
        "state_file": "/run/hastack/failover-state.json",
        "poweroff_peer_on_takeover": bool(d.lb_poweroff_peer_on_takeover),
    }
    files.put(name="Failover agent configuration", src=StringIO(json.dumps(config, indent=2, sort_keys=True) + "\n"),
              dest="/etc/hastack/failover.json", user="root", group="root", mode="0600")

    # -- keepalived
    ka = files.template(
        name="keepalived configuration", src=template_path("loadbalancer", "/etc/keepalived/keepalived.conf"),
        dest="/etc/keepalived/keepalived.conf", user="root", group="root", mode="0600",
        hostname=host.name, interface=_interface_of(d.private_ip), private_ip=d.private_ip, peer_ip=d.vrrp_peer_ip,
        router_id=d.lb_vrrp_router_id, advert_int=d.lb_vrrp_advert_int,
        priority=100 - d.lb_vrrp_priority_gap * (d.lb_index - 1), check_weight=d.lb_vrrp_check_weight,
        floating_ip=d.floating_ip, public_interface=_interface_of(d.public_ip),
        check_script="/usr/local/lib/hastack/check-haproxy", notify_command="/usr/local/sbin/hastack-failover notify",
    )
    server.shell(name="Check keepalived configuration", commands=["keepalived --config-test -f /etc/keepalived/keepalived.conf"],
                 _if=ka.did_change)
    systemd.service(name="keepalived running", service="keepalived.service", running=True, enabled=True,
                    restarted=ka.will_change or check.will_change)

    # -- reconcile: keepalived does not always re-run notify after a split brain
    svc = files.template(name="Reconcile service", src=template_path("loadbalancer", "/etc/systemd/system/hastack-failover-reconcile.service"),
                         dest="/etc/systemd/system/hastack-failover-reconcile.service", user="root", group="root", mode="0644")
    timer = files.template(name="Reconcile timer", src=template_path("loadbalancer", "/etc/systemd/system/hastack-failover-reconcile.timer"),
                           dest="/etc/systemd/system/hastack-failover-reconcile.timer", user="root", group="root", mode="0644",
                           interval=d.lb_reconcile_interval)
    systemd.service(name="Reconcile timer running", service="hastack-failover-reconcile.timer", running=True, enabled=True,
                    daemon_reload=svc.will_change or timer.will_change, restarted=timer.will_change)
