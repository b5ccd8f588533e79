"""Debian packages for a role: apt, refreshing the package lists only when something is to be installed.

Refreshing on every converge (or whenever the lists are over an hour old) would make a converge
that has nothing to do report a change, and `hastack converge --check` report drift, once an
hour. So the lists are refreshed only when one of the packages is missing, and then only when
they are over an hour old (an install from lists that old could ask the mirror for versions it
no longer has).
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt

from roles.base.config import CONVERGE_ENV

LISTS_MAX_AGE = 3600  # seconds


def install(name: str, packages: list[str], **kwargs):
    """apt.packages for ``packages`` (its keyword arguments pass through); returns the operation. The
    converge renews the file integrity baseline once at its end, not after each package run."""
    installed = host.get_fact(DebPackages) or {}
    missing = [p for p in packages if p not in installed]
    return apt.packages(name=name, packages=packages, update=bool(missing),
                        cache_time=LISTS_MAX_AGE if missing else None, _env=CONVERGE_ENV, **kwargs)
