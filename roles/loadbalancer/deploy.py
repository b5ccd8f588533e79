"""The loadbalancer role: HAProxy terminating TLS, keepalived deciding who is
active, and the failover agent moving the floating IP through the Hetzner API."""

import json
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd

from roles.template_file import template_file
from roles.tls_files import issue, stack_ca
from roles import hcloud_agent, witness
from roles.loadbalancer import DEFAULTS
from roles.loadbalancer import config as c
from roles import packages

AGENT_SOURCE = Path(__file__).resolve().parent / "failover_agent.py"
WRAPPER = """#!/bin/sh
# Managed by hastack: the failover agent (keepalived notify, the reconcile service, operators).
exec {venv}/bin/python /opt/hastack/failover_agent.py --config {config} "$@"
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
    names = [host.data.domain] if host.data.get("domain") else []
    issued = issue("site", [c.CERT], dns=names or [f"{host.data.stack}.invalid"], ips=[host.data.floating_ip])
    return issued.chain_pem + issued.key_pem


@deploy("loadbalancer", data_defaults=DEFAULTS)
def loadbalancer() -> None:
    d = host.data
    if not d.get("vrrp_peer_ip"):
        # keepalived without a unicast peer would fall back to multicast, which clouds drop
        raise ValueError(f"{host.name}: no VRRP peer in the topology; a load balancer pair needs both hosts")
    interface, public_interface = _interface_of(d.private_ip), _interface_of(d.public_ip)
    tvars = c.template_vars(host.name, host.data.dict(), interface=interface, public_interface=public_interface)

    def template(name, target, mode="0644"):
        return template_file("loadbalancer", target, tvars, name=name, mode=mode)

    packages.install("HAProxy and keepalived", packages=["haproxy", "keepalived", "curl"],
                 no_recommends=True)

    # -- HAProxy, and the check keepalived (and this converge) uses to see it serving
    files.directory(name="Check script directory", path=c.CHECK_DIR, user="root", group="root", mode="0755")
    check = template("HAProxy health check", c.CHECK_SCRIPT, mode="0755")
    files.directory(name="Certificate directory", path=c.CERT_DIR, user="root", group="haproxy", mode="0750")
    cert = files.put(name="Site certificate and key", src=StringIO(_site_certificate()), dest=c.CERT,
                     user="root", group="haproxy", mode="0640")
    trust = files.put(name="Stack CA (verifies the app servers)", src=StringIO(stack_ca().ca_pem_ensured()),
                      dest=c.STACK_CA, user="root", group="root", mode="0644")
    cfg = template("HAProxy configuration", c.HAPROXY_CFG)
    server.shell(name="Check HAProxy configuration", commands=[f"haproxy -c -q -f {c.HAPROXY_CFG}"],
                 _if=lambda: cfg.did_change() or cert.did_change() or trust.did_change())
    systemd.service(name="HAProxy running", service="haproxy.service", running=True, enabled=True,
                    reloaded=cfg.will_change or cert.will_change or trust.will_change)
    # a reload that fails keeps the old configuration running: check it really serves
    server.shell(name="HAProxy answers", commands=[
        f"for i in 1 2 3 4 5 6 7 8 9 10; do {c.CHECK_SCRIPT} && exit 0; sleep 0.5; done; "
        "journalctl -u haproxy -n 5 --no-pager; exit 1"],
        _if=lambda: cfg.did_change() or cert.did_change() or trust.did_change())

    # -- the failover agent
    library = hcloud_agent.install()
    agent = files.put(name="Failover agent", src=str(AGENT_SOURCE), dest="/opt/hastack/failover_agent.py",
                      user="root", group="root", mode="0644")
    command = files.put(name="Failover agent command",
                        src=StringIO(WRAPPER.format(venv=hcloud_agent.VENV, config=c.FAILOVER_CONFIG)),
                        dest=c.FAILOVER_COMMAND, user="root", group="root", mode="0755")
    witness.put_client_tls()  # the agent asks the witness before taking the IP from a live-looking peer
    config = c.failover_config(host.name, d.dict(), public_interface, api=hcloud_agent.api_config(),
                               witness=witness.client_config())
    files.put(name="Failover agent configuration", src=StringIO(json.dumps(config, indent=2, sort_keys=True) + "\n"),
              dest=c.FAILOVER_CONFIG, user="root", group="root", mode="0600")
    template("Floating IP metrics removed at boot", c.FAILOVER_METRICS_TMPFILES, mode="0644")

    # -- keepalived
    ka = template("keepalived configuration", c.KEEPALIVED_CONF, mode="0600")
    server.shell(name="Check keepalived configuration", commands=[f"keepalived --config-test -f {c.KEEPALIVED_CONF}"],
                 _if=ka.did_change)
    systemd.service(name="keepalived running", service="keepalived.service", running=True, enabled=True,
                    restarted=ka.will_change or check.will_change)

    # -- reconcile: keepalived does not always re-run notify after a split brain
    # (it ran from a timer, a process each round, before it ran in one process: the timer goes)
    timer = systemd.service(name="Reconcile timer of earlier versions stopped", service="hastack-failover-reconcile.timer",
                            running=False, enabled=False)
    files.file(name="Reconcile timer of earlier versions removed", path=c.RECONCILE_TIMER, present=False)
    svc = template("Reconcile service", c.RECONCILE_SERVICE)
    started = systemd.service(name="Reconcile running", service="hastack-failover-reconcile.service", running=True,
                              enabled=True, daemon_reload=svc.will_change or timer.will_change)
    # a running loop keeps the code it started with: new code or a new unit, a restart (the token and
    # the config it reads again every round)
    systemd.service(name="Reconcile restarted for its new code", service="hastack-failover-reconcile.service",
                    restarted=True, _if=lambda: not started.did_change() and any(
                        op.did_change() for op in (svc, agent, command, *library)))
