"""The masters' access gate: at boot, the admins the stack no longer has are removed before the host serves."""

from __future__ import annotations

import os
import pwd

from roles.base import access_gate


def user(name, home) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", os.getuid(), os.getgid(), "", str(home), "/bin/bash"))


def test_a_former_admin_is_killed_and_removed_and_the_others_get_exactly_the_stacks_keys(tmp_path):
    ran, keyed = [], []
    local = {"alice": user("alice", tmp_path / "alice"), "mallory": user("mallory", tmp_path / "mallory")}

    def write_keys(u, keys):
        keyed.append((u.pw_name, keys))
        return True

    done = access_gate.settle(local, {"alice": ["ssh-ed25519 AAAA alice"], "bob": ["ssh-ed25519 BBBB bob"]},
                              run=lambda cmd, check=True: ran.append((cmd, check)), write_keys=write_keys)
    assert ran == [(["pkill", "-KILL", "-u", "mallory"], False), (["userdel", "--force", "--remove", "mallory"], True)]
    # bob is not here: the gate never adds an admin (the converge does)
    assert keyed == [("alice", ["ssh-ed25519 AAAA alice"])]
    assert done == ["set the keys of alice to the stack's", "removed former admin mallory"]


def test_keys_are_replaced_only_when_they_differ_and_stay_the_admins_own(tmp_path):
    alice = user("alice", tmp_path)
    (tmp_path / ".ssh").mkdir(mode=0o755)
    (tmp_path / ".ssh" / "authorized_keys").write_text("ssh-ed25519 OLD alice\nssh-ed25519 AAAA alice\n")
    assert access_gate._write_keys(alice, ["ssh-ed25519 AAAA alice"]) is True
    path = tmp_path / ".ssh" / "authorized_keys"
    assert path.read_text() == "ssh-ed25519 AAAA alice\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct((tmp_path / ".ssh").stat().st_mode & 0o777) == "0o700"
    assert access_gate._write_keys(alice, ["ssh-ed25519 AAAA alice"]) is False


def test_the_gate_waits_for_the_witness_and_settles_once_it_answers(tmp_path, monkeypatch):
    cfg = tmp_path / "gate.json"
    cfg.write_text('{"name": "db1", "group": "mariadb", "witness_name": "mon", "witness_ip": "127.0.0.1", '
                   '"witness_port": 1, "cert": "c", "key": "k", "ca": "a", "admin_group": "hastack-admins"}')
    answers = iter([OSError("connection refused"), ValueError("no admin list here"), {"admins": {"alice": ["k"]}}])

    def ask(_cfg):
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    settled, slept = [], []
    monkeypatch.setattr(access_gate, "ask_witness", ask)
    monkeypatch.setattr(access_gate, "local_admins", lambda group: {"group": group})
    monkeypatch.setattr(access_gate, "settle", lambda local, wanted: settled.append((local, wanted)) or [])
    assert access_gate.main(["--config", str(cfg)], sleep=slept.append) == 0
    assert slept == [2.0, 2.0] and settled == [({"group": "hastack-admins"}, {"alice": ["k"]})]
