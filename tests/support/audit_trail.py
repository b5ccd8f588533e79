"""The base role's audit trail alone, for a virtual machine that is no host of the topology
(hastack.lab.vm): the same operations, in the order the base role runs them."""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files

from roles import packages
from roles.base import config as c
from roles.base.deploy import audit, audit_before_packages, load_audit_rules

ROLES = ("base",)


@deploy("audit trail")
def audit_trail() -> None:
    tvars = c.audit_template_vars(ROLES)
    audit_before_packages(tvars)
    packages.install("Audit daemon", ["auditd"], no_recommends=True)
    # as the agents and the journal shipping make it on every host, before the rules watch it
    files.directory(name="Agent config directory", path="/etc/hastack", user="root", group="root", mode="0700")
    audit(tvars)
    load_audit_rules()
