"""The monitoring role: Prometheus, Alertmanager and the blackbox exporter from Debian.

Every configuration file is checked by its own program (promtool, amtool,
the blackbox exporter) before it replaces the live one, so a converge never
leaves Prometheus with a file it cannot load at its next restart.
"""

from __future__ import annotations

import json
import posixpath
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd

from hastack.templating import template_path
from roles import journal_shipping, witness
from roles.template_file import template_file
from roles.tls_files import issue, put_tls_files
from roles.monitoring import DEFAULTS
from roles.monitoring import config as c
from roles.monitoring import rules
from roles import packages

STAGING = "/var/lib/hastack/staging/monitoring"
WITNESS_SOURCE = Path(__file__).resolve().parent / "witness_server.py"
WITNESS_UNIT = "/etc/systemd/system/hastack-witness.service"
# each checked file: its check ({staged} is the candidate), its owner group and mode
CHECKS = {
    rules.RULES_FILE: ("promtool check rules {staged}", "root", "0644"),
    c.PROMETHEUS_YML: ("promtool check config --syntax-only {staged}", "root", "0644"),
    # webhook URLs may hold tokens: readable by the service's user only
    c.ALERTMANAGER_YML: ("amtool check-config {staged}", "prometheus", "0640"),
    c.BLACKBOX_YML: ("prometheus-blackbox-exporter --config.check --config.file={staged}", "prometheus", "0640"),
}


def _checked_install(tvars, target):
    """Render to a staging copy, check it, only then install it; a copy that fails its
    check is removed, so the next converge tries (and reports) it again."""
    check, group, mode = CHECKS[target]
    staged = STAGING + target
    files.directory(name=f"Staging for {target}", path=posixpath.dirname(staged), user="root", group="root",
                    mode="0700")
    candidate = files.template(name=f"Candidate {target}", src=template_path("monitoring", target), dest=staged,
                               user="root", group="root", mode="0600", **tvars[target])
    live_missing = not host.get_fact(File, path=target)
    return server.shell(
        name=f"Check and install {target}",
        commands=[f"if {check.format(staged=staged)}; then install -o root -g {group} -m {mode} {staged} {target}; "
                  f"else rm -f {staged}; exit 1; fi"],
        _if=lambda: candidate.did_change() or live_missing,
    )


def _args(tvars, target, service):
    return template_file("monitoring", target, tvars, name=f"{service} arguments")


@deploy("monitoring", data_defaults=DEFAULTS)
def monitoring() -> None:
    files.directory(name="hastack configuration", path="/etc/hastack", user="root", group="root", mode="0700")
    install_witness()
    journal_shipping.sink()
    prometheus = packages.install("Prometheus", packages=["prometheus"], no_recommends=True)
    # The package starts Prometheus at once with its example configuration (localhost targets, which
    # the stack's rules would see down): on a fresh install what it scraped is dropped.
    server.shell(name="Forget what the package's example configuration scraped",
                 commands=["systemctl stop prometheus", f"rm -rf {c.DATA_DIR}"], _if=prometheus.did_change)
    packages.install("Alertmanager, blackbox exporter",
                 # curl: `hastack status` queries Prometheus on this host over SSH
                 packages=["prometheus-alertmanager", "prometheus-blackbox-exporter", "curl"], no_recommends=True)
    size = host.get_fact(Command, command="df --output=size -B1 /var/lib | tail -n 1") or "0"
    tvars = c.template_vars(host.data.dict(), filesystem_bytes=int(size.strip() or 0))
    files.directory(name="Prometheus rules directory", path=posixpath.dirname(rules.RULES_FILE),
                    user="root", group="root", mode="0755")

    rules_op = _checked_install(tvars, rules.RULES_FILE)
    prom_cfg = _checked_install(tvars, c.PROMETHEUS_YML)
    am_cfg = _checked_install(tvars, c.ALERTMANAGER_YML)
    bb_cfg = _checked_install(tvars, c.BLACKBOX_YML)
    prom_args = _args(tvars, c.PROMETHEUS_ARGS, "Prometheus")
    am_args = _args(tvars, c.ALERTMANAGER_ARGS, "Alertmanager")
    bb_args = _args(tvars, c.BLACKBOX_ARGS, "Blackbox exporter")

    # configuration and rules take a reload (SIGHUP: the data stays in memory), arguments a restart
    for unit, args, configs in (("prometheus-blackbox-exporter", bb_args, (bb_cfg,)),
                                ("prometheus-alertmanager", am_args, (am_cfg,)),
                                ("prometheus", prom_args, (prom_cfg, rules_op))):
        # reload-or-restart: a stopped service is started instead (a plain reload would fail)
        server.shell(name=f"Reload {unit}", commands=[f"systemctl reload-or-restart {unit}"],
                     _if=lambda cs=configs: any(op.did_change() for op in cs))
        systemd.service(name=f"Restart {unit}", service=unit, restarted=True, _if=args.did_change)
        systemd.service(name=f"{unit} running", service=unit, running=True, enabled=True)


def install_witness() -> None:
    """The pairs' third vote (witness_server.py): standard library only, an unprivileged user of its own."""
    d = host.data
    packages.install("Python for the witness", packages=["python3"], no_recommends=True)
    files.directory(name="hastack programs", path="/opt/hastack", user="root", group="root", mode="0755")
    program = files.put(name="Witness", src=str(WITNESS_SOURCE), dest="/opt/hastack/witness_server.py",
                        user="root", group="root", mode="0644")
    issued = issue(f"witness-{host.name}", [f"{witness.TLS_DIR}/{f}" for f in witness.SERVER_FILES[:2]],
                   dns=[host.name], ips=[d.private_ip])
    tls = put_tls_files("Witness", witness.TLS_DIR, "root", issued, dir_mode="0700", names=witness.SERVER_FILES)
    # public keys only, read at each request by the unprivileged witness: not root-only, not a credential
    files.directory(name="Witness admin list directory", path=witness.ACCESS_DIR, user="root", group="root",
                    mode="0755")
    files.put(name="The stack's admins, for the masters' access gates", src=StringIO(witness.access_list_json(d.admins)),
              dest=witness.ACCESS_FILE, user="root", group="root", mode="0644")
    config = {
        "bind": d.private_ip, "port": witness.WITNESS_PORT, "access_file": witness.ACCESS_FILE,
        # the TLS files and this one reach the service as systemd credentials (root-only on disk)
        "cert": witness.SERVER_FILES[0], "key": witness.SERVER_FILES[1], "ca": witness.SERVER_FILES[2],
        "groups": d.monitoring_witness_groups, "dead_after": d.monitoring_witness_dead_after,
        "state_file": "/var/lib/hastack/witness/state.json",
    }
    cfg = files.put(name="Witness configuration", src=StringIO(json.dumps(config, indent=2, sort_keys=True) + "\n"),
                    dest="/etc/hastack/witness.json", user="root", group="root", mode="0600")
    unit = template_file("monitoring", WITNESS_UNIT, name="Witness unit")
    systemd.service(name="Witness running", service="hastack-witness.service", running=True, enabled=True,
                    daemon_reload=unit.will_change,
                    restarted=any(op.will_change for op in (program, cfg, unit, *tls)))
