"""The lab refuses to start, saying why, where it cannot work."""

import pytest

from hastack.lab import system
from hastack.lab.system import LabError, preflight


def test_without_root_the_lab_says_so(monkeypatch):
    monkeypatch.setattr(system.os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="the lab needs root"):
        preflight()


def test_missing_capability_is_named(monkeypatch):
    monkeypatch.setattr(system.os, "geteuid", lambda: 0)
    monkeypatch.setattr(system, "_effective_caps", lambda: 1 << system.CAP_NET_ADMIN)
    with pytest.raises(LabError, match="missing capability CAP_SYS_ADMIN"):
        preflight()


def test_missing_programs_name_their_packages(monkeypatch):
    monkeypatch.setattr(system.os, "geteuid", lambda: 0)
    monkeypatch.setattr(system, "_effective_caps", lambda: -1)
    monkeypatch.setattr(system.shutil, "which", lambda cmd, path=None: None if cmd == "debootstrap" else "/usr/bin/" + cmd)
    with pytest.raises(LabError, match="missing packages: debootstrap"):
        preflight()
