"""Debian packages for a role: apt, refreshing the package lists only when something is to be installed.

Refreshing on every converge (or whenever the lists are over an hour old) would make a converge
that has nothing to do report a change, and `hastack converge --check` report drift, once an
hour. So the lists are refreshed only when one of the packages is missing, and then only when
they are over an hour old (an install from lists that old could ask the mirror for versions it
no longer has).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from pyinfra import host
from pyinfra.facts.deb import DebPackages
from pyinfra.operations import apt

from roles.base.config import CONVERGE_ENV

LISTS_MAX_AGE = 3600  # seconds

# a host -> the operations of this converge that change its packages (each converge has new host objects)
_CHANGING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def install(name: str, packages: list[str], **kwargs):
    """apt.packages for ``packages`` (its keyword arguments pass through); returns the operation. The
    converge renews the file integrity baseline once at its end, not after each package run."""
    installed = host.get_fact(DebPackages) or {}
    missing = [p for p in packages if p not in installed]
    return changes_packages(apt.packages(name=name, packages=packages, update=bool(missing),
                                         cache_time=LISTS_MAX_AGE if missing else None, _env=CONVERGE_ENV,
                                         **kwargs))


def changes_packages(op):
    """Records ``op`` (an operation of this host that may install, upgrade or remove packages); returns it."""
    _CHANGING.setdefault(host._get_module(), []).append(op)
    return op


def changed() -> Callable[[], bool]:
    """For ``_if``: whether an operation recorded so far on this host changed its packages."""
    ops = list(_CHANGING.get(host._get_module(), []))
    return lambda: any(op.did_change() for op in ops)
