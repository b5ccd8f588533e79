"""Installs the access gate (roles/base/access_gate.py) on the MariaDB masters: the hosts the stack powers
off itself (fencing), so the hosts most likely to be off when an admin is removed. At their next boot the
gate asks the witness for the stack's admins before sshd and MariaDB start. Installed and enabled only: it
runs at boot, never during a converge (which settles access itself, and may run before the witness has
the new admin list)."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.operations import files, systemd

from roles import witness
from roles.base import DEFAULTS as BASE_DEFAULTS
from roles.template_file import template_file

PROGRAM = Path(__file__).resolve().parent / "base" / "access_gate.py"
UNIT = "/etc/systemd/system/hastack-access-gate.service"
CONFIG = "/etc/hastack/access-gate.json"


def install(group: str) -> None:
    """For a witness client of ``group`` whose client TLS files are in place (roles.witness.put_client_tls)."""
    d = host.data
    wcfg = witness.client_config()
    # the base role's setting, outside the base deploy (whose data defaults hold it)
    admin_group = d.get("base_admin_group") or BASE_DEFAULTS["base_admin_group"]
    config = {"name": host.name, "group": group, "admin_group": admin_group,
              "witness_name": wcfg["witness_name"], "witness_ip": wcfg["witness_ip"],
              "witness_port": wcfg["witness_port"], "cert": wcfg["witness_cert"], "key": wcfg["witness_key"],
              "ca": wcfg["witness_ca"]}
    files.put(name="Access gate", src=str(PROGRAM), dest="/opt/hastack/access_gate.py", user="root", group="root",
              mode="0644")
    files.put(name="Access gate configuration", src=StringIO(json.dumps(config, indent=2, sort_keys=True) + "\n"),
              dest=CONFIG, user="root", group="root", mode="0600")
    unit = template_file("base", UNIT, name="Access gate unit")
    systemd.service(name="Access gate at boot", service="hastack-access-gate.service", enabled=True,
                    daemon_reload=unit.will_change)
