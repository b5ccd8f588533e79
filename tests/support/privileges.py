"""Whether the tests run as the host's root, or as root of a user namespace (`make check`
without root maps the calling user alone to root there: other users' files show as owned
by the overflow user, and no file can be given to another user)."""

from __future__ import annotations

import os

import pytest


def real_root() -> bool:
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True


needs_real_root = pytest.mark.skipif(not real_root(), reason="needs the host's root (make check without root "
                                                             "runs in a user namespace mapping one user)")
