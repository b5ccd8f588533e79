"""Facts of one kind in one program: the same answers as each fact's own command, on this machine."""

from __future__ import annotations

import os

from pyinfra import host
from pyinfra.api.deploy import deploy
from pyinfra.facts.files import Directory, File, Link, Sha1File
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

from hastack.fact_batches import batches
from tests.unit.test_fact_cache import converge_locally


def tree(tmp_path):
    """Every kind of path a role asks about: file, directory, link, dangling link, missing, and one with a
    space in its name (asked on its own)."""
    root = tmp_path / "etc"
    root.mkdir()
    (root / "app.conf").write_text("a\n")
    (root / "secret.key").write_text("k\n")
    (root / "secret.key").chmod(0o600)
    (root / "conf.d").mkdir()
    (root / "current").symlink_to(root / "app.conf")
    (root / "dangling").symlink_to(root / "gone")
    (root / "with space").write_text("s\n")
    return [str(root / n) for n in ("app.conf", "secret.key", "conf.d", "current", "dangling", "missing",
                                    "with space")] + [str(root / "app.conf")]  # one path asked twice


def asking(paths, seen):
    @deploy("ask")
    def ask():
        for p in paths:
            for cls in (File, Directory, Link, Sha1File):
                seen[(cls.__name__, p)] = host.get_fact(cls, path=p)
    return ask


def without_atime(answers):
    return {k: ({f: x for f, x in v.items() if f != "atime"} if isinstance(v, dict) else v)
            for k, v in answers.items()}


def test_files_and_hashes_asked_together_answer_as_asked_one_by_one(tmp_path):
    paths = tree(tmp_path)
    live, batched = {}, {}
    converge_locally(tmp_path / "facts", asking(paths, live), run=False)  # records, asks one by one
    cache = converge_locally(tmp_path / "facts", asking(paths, batched), run=False)
    assert cache.served["@local"] == 4 * len(paths) and "@local" not in cache.asked
    assert without_atime(batched) == without_atime(live)
    app, key, confd, current, dangling, missing, spaced = paths[:7]
    assert batched[("File", app)]["mode"] == 644 and batched[("File", key)]["mode"] == 600
    assert batched[("Directory", confd)] and batched[("File", confd)] is False
    assert batched[("Link", current)]["link_target"] == app and batched[("File", current)] is False
    assert batched[("Link", dangling)]["link_target"] == os.path.join(os.path.dirname(app), "gone")
    assert batched[("File", missing)] is None and batched[("Sha1File", missing)] is None
    assert batched[("Sha1File", app)] == "3f786850e387550fdab836ed7e6dc881de23001b"  # sha1 of "a\n"
    assert batched[("Sha1File", spaced)] == live[("Sha1File", spaced)] is not None


def test_plain_arguments_are_batched_and_the_others_asked_alone():
    facts = [("f1", File(), {"path": "/etc/a"}), ("f2", Directory(), {"path": "/etc"}),
             ("f3", File(), {"path": "/etc/with space"}), ("h1", Sha1File(), {"path": "/etc/a"}),
             ("u1", SystemdStatus(), {"services": ["ssh.service"], "user_mode": False, "machine": None,
                                      "user_name": None}),
             ("u2", SystemdEnabled(), {"services": ["ssh.service"], "user_mode": False, "machine": None,
                                       "user_name": None}),
             ("u3", SystemdStatus(), {"services": None, "user_mode": False, "machine": None, "user_name": None}),
             ("u4", SystemdStatus(), {"services": ["x.service"], "user_mode": True, "machine": None,
                                      "user_name": None})]
    together, alone = batches(facts)
    assert [[k for k, _ in b.members] for b in together] == [["f1", "f2"], ["h1"], ["u1", "u2"]]
    assert [k for k, _ in alone] == ["f3", "u3", "u4"]
    assert "ssh.service" in together[2].script and together[2].script.count("ssh.service") == 1


def test_unit_blocks_go_to_their_units_and_a_short_output_answers_none():
    facts = [("a", SystemdStatus(), {"services": ["ssh.service"]}),
             ("b", SystemdEnabled(), {"services": ["gone.service"]}),
             ("c", SystemdEnabled(), {"services": ["ssh.service"]})]
    (batch,), _ = batches(facts)
    # as systemctl prints it: one block per unit asked, in order, an unknown unit too
    out = ["Id=ssh.service", "SubState=running", "UnitFileState=enabled", "",
           "Id=gone.service", "SubState=dead", "UnitFileState=", ""]
    split = batch.split(out, "0")
    answers = [fact.process(lines) for (_, fact), lines in zip(batch.members, split, strict=True)]
    assert answers == [{"ssh.service": True}, {"gone.service": False}, {"ssh.service": True}]
    assert batch.split(out[:4], "0") == [None, None, None]
    assert batch.split(out, "1") == [None, None, None]


def test_the_users_in_one_pass_read_as_pyinfras_own_command(tmp_path):
    """On this machine's accounts (groups, shadow, lastlog): the same lines, so the same Users fact."""
    import subprocess

    from pyinfra.facts.server import Users

    (batch,), _ = batches([("u", Users(), {})])
    own = subprocess.run(["sh", "-c", Users().command()], capture_output=True, text=True, check=True).stdout
    one_pass = subprocess.run(["sh", "-c", batch.script], capture_output=True, text=True, check=True).stdout
    assert one_pass == own and len(own.splitlines()) > 5
    (answer,) = batch.split(one_pass.splitlines(), "0")
    assert Users().process(answer) == Users().process(own.splitlines())
    assert batch.split([], "1") == [None]
