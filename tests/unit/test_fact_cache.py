"""Facts in one round trip per host: served from one command, equal to what pyinfra asks one by one."""

from __future__ import annotations

import hashlib
import os

from gevent.pool import Pool
from pyinfra import host
from pyinfra.api import Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy, deploy
from pyinfra.api.operations import run_ops
from pyinfra.context import ctx_state
from pyinfra.facts.files import Directory, File, FindInFile, Sha1File
from pyinfra.facts.server import Command

from hastack.fact_cache import FactCache, serving


def ask_all(path):
    return {
        "file": host.get_fact(File, path=str(path)),
        "sha1": host.get_fact(Sha1File, path=str(path)),
        "missing": host.get_fact(File, path=str(path) + ".missing"),
        "dir": host.get_fact(Directory, path=str(path.parent)),
        "grep": host.get_fact(FindInFile, path=str(path), pattern="^b"),
        "lines": host.get_fact(Command, "printf 'one\\ntwo\\n'"),
        "no_newline": host.get_fact(Command, "printf x"),
        "empty": host.get_fact(Command, "true"),
    }


def managed(tmp_path):
    """A file in a directory of its own: the record written beside it must not change the directory's times."""
    (tmp_path / "etc").mkdir()
    return tmp_path / "etc" / "managed.conf"


def stable(answers: dict) -> dict:
    """The answers without access times: reading a file to hash it may move its atime between two asks."""
    return {k: ({f: x for f, x in v.items() if f != "atime"} if isinstance(v, dict) else v) for k, v in answers.items()}


def prepare(cache_dir, path):
    """One converge's preparation on this machine (pyinfra's @local), facts through a FactCache."""
    seen = {}

    @deploy("ask")
    def asking():
        seen.update(ask_all(path))

    return seen, converge_locally(cache_dir, asking, run=False)


def converge_locally(cache_dir, deploy_fn, run: bool) -> FactCache:
    """``deploy_fn`` on this machine (pyinfra's @local) as hastack.converge does it: the record's facts
    asked first, then the roles prepared and, with ``run``, their operations run, facts through the cache."""
    state = State(Inventory((["@local"], {})), Config(FAIL_PERCENT=100))
    connect_all(state)
    try:
        hosts = list(state.inventory.get_active_hosts())
        cache = FactCache(cache_dir)
        with serving(cache):
            with ctx_state.use(state):
                Pool(1).map(lambda h: (cache.prefetch(h), add_deploy(state, deploy_fn, host=h)), hosts)
            if run:
                run_ops(state)
        cache.save("@local")
    finally:
        disconnect_all(state)
    return cache


def test_a_second_converge_gets_every_fact_from_one_command_and_the_same_answers(tmp_path):
    path = managed(tmp_path)
    path.write_text("a\nb\n")
    first, cache = prepare(tmp_path / "facts", path)
    assert cache.asked["@local"] == 8 and "@local" not in cache.served
    assert oct((tmp_path / "facts" / "@local.json").stat().st_mode & 0o777) == "0o600"
    second, cache = prepare(tmp_path / "facts", path)
    assert cache.served["@local"] == 8 and "@local" not in cache.asked
    assert stable(second) == stable(first)
    assert first["lines"] == "one\ntwo" and first["no_newline"] == "x" and first["empty"] is None
    assert first["missing"] is None and first["grep"] == ["b"]


def test_drift_between_converges_is_seen_as_when_asked_one_by_one(tmp_path):
    path = managed(tmp_path)
    path.write_text("a\nb\n")
    first, _ = prepare(tmp_path / "facts", path)
    path.write_text("edited by hand\n")
    path.chmod(0o600)
    second, cache = prepare(tmp_path / "facts", path)
    assert cache.served["@local"] == 8
    assert second["sha1"] != first["sha1"] and second["grep"] == []
    assert second["file"]["mode"] == 600
    live, _ = prepare(None, path)
    assert stable(second) == stable(live)


def test_without_a_record_every_fact_is_asked_live(tmp_path):
    path = managed(tmp_path)
    path.write_text("a\n")
    (tmp_path / "facts").mkdir()
    (tmp_path / "facts" / "@local.json").write_text("not json")
    seen, cache = prepare(tmp_path / "facts", path)
    assert cache.asked["@local"] == 8 and seen["file"] is not None


def test_a_hash_the_record_lacks_is_asked_with_the_rest_for_a_small_file(tmp_path):
    """A converge that creates files asks only whether each exists; the next one compares them by their
    hashes. Those are asked in the one command too: served for a small file, not for a larger one (it is
    asked when wanted, as before: nothing large is hashed ahead) nor for a path still missing."""
    facts, small, big, gone = tmp_path / "facts", managed(tmp_path), tmp_path / "etc" / "big.bin", tmp_path / "gone"
    paths = (small, big, gone)

    @deploy("creating")
    def creating():
        for p in paths:
            host.get_fact(File, path=str(p))

    converge_locally(facts, creating, run=False)
    small.write_text("a\n")
    big.write_bytes(b"x" * (2 << 20))
    seen = {}

    @deploy("comparing")
    def comparing():
        for p in paths:
            seen[p] = (host.get_fact(File, path=str(p)), host.get_fact(Sha1File, path=str(p)))

    cache = converge_locally(facts, comparing, run=False)
    assert cache.served["@local"] == 4 and cache.asked["@local"] == 2  # the three files, the small one's hash
    assert seen[small][1] == hashlib.sha1(b"a\n").hexdigest()
    assert seen[big][1] == hashlib.sha1(b"x" * (2 << 20)).hexdigest() and seen[gone] == (None, None)
    # now recorded: every fact from the one command
    cache = converge_locally(facts, comparing, run=False)
    assert cache.served["@local"] == 6 and "@local" not in cache.asked


def converge_here(cache_dir, path, marker):
    """A converge on this machine: a file written, then a command that runs only if a fact, asked as the
    operations run, sees the new content."""
    from io import StringIO

    from pyinfra.operations import files, server

    wanted = "new\n"

    @deploy("write")
    def writing():
        files.put(name="the file", src=StringIO(wanted), dest=str(path))
        server.shell(name="after the file", commands=[f"touch {marker}"],
                     _if=lambda: host.get_fact(Sha1File, path=str(path)) == hashlib.sha1(wanted.encode()).hexdigest()
                     and not host.get_fact(File, path=str(marker)))

    return converge_locally(cache_dir, writing, run=True)


def test_once_an_operation_changed_something_every_fact_is_asked_live(tmp_path):
    path, marker = tmp_path / "managed.conf", tmp_path / "ran"
    path.write_text("old\n")
    converge_here(tmp_path / "facts", path, marker)
    assert marker.exists()
    # the record now holds the file's facts as they were before the write: served, they would say "old"
    marker.unlink()
    path.write_text("old\n")
    cache = converge_here(tmp_path / "facts", path, marker)
    assert cache.changed and cache.served.get("@local", 0) > 0 and cache.asked.get("@local", 0) > 0
    assert marker.exists()
    # nothing to change: every fact from the one command
    cache = converge_here(tmp_path / "facts", path, marker)
    assert not cache.changed and "@local" not in cache.asked and cache.served["@local"] >= 2


def converge_watching(cache_dir, written, other, then_command: str | None):
    """A converge on this machine: ``written`` uploaded; then, as the next operation runs, facts about
    ``written``, about ``other`` and a command of its own asked (each noted as served from the first command
    or asked live, with its answer); ``then_command`` run after that, and ``other`` asked once more."""
    from io import StringIO

    from pyinfra.operations import files, server

    from hastack import fact_cache

    seen = []

    def ask(what, cls, *args, **kwargs):
        before = fact_cache._active.asked.get("@local", 0)
        answer = host.get_fact(cls, *args, **kwargs)
        seen.append((what, "live" if fact_cache._active.asked.get("@local", 0) > before else "served", answer))
        return True

    @deploy("write")
    def writing():
        files.put(name="the file", src=StringIO("new\n"), dest=str(written))
        server.shell(name="after the file", commands=[f"touch {written}"],  # a plain file command: its path
                     _if=lambda: ask("written", Sha1File, path=str(written)) and ask("other", File, path=str(other))
                     and ask("command", Command, "echo same"))
        if then_command:
            server.shell(name="a command", commands=[then_command])
        server.shell(name="last", commands=["true"], _if=lambda: ask("other again", File, path=str(other)))

    converge_locally(cache_dir, writing, run=True)
    return seen


def test_a_file_written_makes_only_the_facts_about_its_path_asked_live(tmp_path):
    """After an upload, a fact about the uploaded path is asked live (and sees the new content); a fact
    about another path is still served; a fact with a command of its own is asked live. Any other command
    (a service restarted, a package installed: what it changes is not known) makes every fact asked live."""
    written, other = managed(tmp_path), tmp_path / "other.conf"
    other.write_text("other\n")
    written.write_text("old\n")
    converge_watching(tmp_path / "facts", written, other, None)  # recorded
    written.write_text("old\n")
    seen = converge_watching(tmp_path / "facts", written, other, None)
    new_sha1 = hashlib.sha1(b"new\n").hexdigest()
    assert [(what, how) for what, how, _ in seen] == [
        ("written", "live"), ("other", "served"), ("command", "live"), ("other again", "served")]
    assert seen[0][2] == new_sha1 and seen[1][2]["size"] == len("other\n")

    written.write_text("old\n")
    converge_watching(tmp_path / "facts", written, other, "date")  # the command's facts recorded
    written.write_text("old\n")
    seen = converge_watching(tmp_path / "facts", written, other, "date")
    assert [(what, how) for what, how, _ in seen] == [
        ("written", "live"), ("other", "served"), ("command", "live"), ("other again", "live")]


def test_what_a_command_changes_is_known_only_for_plain_file_commands():
    """The commands pyinfra's file operations run, with their paths; anything else: not known (None)."""
    from pyinfra.api.command import QuoteString, StringCommand
    from pyinfra.operations.util import files as file_utils

    from pyinfra.facts.systemd import SystemdStatus

    from hastack.fact_cache import command_paths, fact_paths

    assert command_paths(StringCommand("mv", QuoteString("/tmp/x y"), QuoteString("/etc/a b.conf"))) == \
        ("/tmp/x y", "/etc/a b.conf")
    assert command_paths(file_utils.chmod("/etc/a", "0600")) == ("/etc/a",)
    assert command_paths(file_utils.chown("/etc/a", "root", "adm")) == ("/etc/a",)
    assert command_paths("mkdir -p /etc/d && chmod 700 /etc/d") == ("/etc/d", "/etc/d")
    assert command_paths(StringCommand("rm", "-rf", QuoteString("/opt/x"))) == ("/opt/x",)
    # systemctl's unit verbs change systemd's state (what SystemdStatus and SystemdEnabled read)
    assert command_paths("systemctl is-active --quiet x.service && touch /var/lib/x/mark || true") == \
        (*fact_paths(SystemdStatus, {}), "/var/lib/x/mark")
    for unknown in ("apt-get install -y x", "echo x > /etc/a", "mv a /etc/b", "touch -d @1 /etc/a", "chmod 600",
                    "mv /a /b; apt-get install x", "sh -c 'mv /a /b'", "mv /a /b | tee", "(mv /a /b)",
                    "systemctl --user restart x",
                    "rm -rf /var/lib/$x", "rm /etc/*.conf", "systemctl set-property x CPUQuota=1%", "mv '/a", ""):
        assert command_paths(unknown) is None, unknown
    # the paths facts read: their own for file facts, the known ones for a few others, else not known
    assert fact_paths(File, {"path": "/etc/a/"}) == ("/etc/a",)
    assert fact_paths(Command, {"command": "cat /etc/a"}) is None
    assert "/etc/systemd" in fact_paths(SystemdStatus, {"services": ["x"]})


def test_the_batched_reads_run_at_the_lowest_cpu_and_disk_priority(tmp_path):
    """Asked live, a fact runs at the converge's own priority; from the batch, at nice 19 and the lowest
    best-effort disk priority: the reads yield to the host's services."""
    seen = {}

    @deploy("priority")
    def asking():
        seen["nice"] = host.get_fact(Command, "nice")
        seen["io"] = host.get_fact(Command, "ionice -p $$")

    converge_locally(tmp_path / "facts", asking, run=False)
    assert seen["nice"] == str(os.nice(0))
    converge_locally(tmp_path / "facts", asking, run=False)
    assert seen == {"nice": "19", "io": "best-effort: prio 7"}


def test_each_fact_is_run_as_pyinfra_would_run_it(tmp_path, monkeypatch):
    """How a fact runs (sudo, environment, ...) is worked out once per operation, not once per fact: the
    same as pyinfra's own answer for facts asked in a deploy, a nested deploy with its own arguments, an
    operation with its own, a condition checked as operations run, and facts with arguments of their own (one
    left at its default)."""
    from pyinfra.api import facts as pyinfra_facts
    from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS
    from pyinfra.operations import files, server

    from hastack import fact_cache

    fast, compared, differ = fact_cache._fact_arguments, [], []

    def both(cache, state, host_, cls, args, kwargs):
        mine = fast(cache, state, host_, cls, args, kwargs)
        fact_kwargs, global_kwargs = pyinfra_facts._handle_fact_kwargs(state, host_, cls, args, kwargs)
        fact_kwargs.pop("self", None)
        theirs = (fact_kwargs, {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS})
        compared.append(mine[1].get("_env"))
        if mine != theirs:
            differ.append((cls.__name__, mine, theirs))
        return mine

    monkeypatch.setattr(fact_cache, "_fact_arguments", both)
    path = managed(tmp_path)
    path.write_text("a\n")

    @deploy("inner")
    def inner():
        host.get_fact(File, path=str(path))

    @deploy("outer")
    def outer():
        host.get_fact(File, path=str(path))
        inner(_env={"FROM": "deploy"})
        files.directory(name="a directory", path=str(path.parent), _env={"FROM": "operation"})
        host.get_fact(Command, "true", _env={"FROM": "fact"})
        host.get_fact(FindInFile, str(path), "a", extended_regex=True)  # interpolate_variables left at its default
        server.shell(name="a condition", commands=["true"],
                     _if=lambda: host.get_fact(Sha1File, path=str(path)) is not None)
        host.get_fact(Sha1File, path=str(path))

    converge_locally(tmp_path / "facts", outer, run=True)
    assert not differ
    assert {"FROM": "deploy"} in compared and {"FROM": "operation"} in compared and {"FROM": "fact"} in compared
    assert compared.count({}) >= 3
