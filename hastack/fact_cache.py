"""Facts in one round trip per host: what a converge asked of a host last time, asked again in one command.

pyinfra asks every fact an operation needs over SSH, one command each (while
the roles add their operations, and again inside each operation as it runs);
on a host with a hundred operations that is a few hundred round trips, most
of a converge that changes nothing. The facts a role asks depend on the
host's data and on other facts, so they are not known before the roles run,
but they hardly change between two converges. So:

* every fact asked of a host is recorded (its class, its arguments, how it
  is run: sudo or not), in a file per host kept between converges;
* the next converge first runs all the facts recorded for the host in one
  command and keeps the answers; a fact with an answer is served from it,
  any other is asked as before (and recorded for the next time);
* a file the last converge created was only asked whether it exists; the
  next converge compares it by its hash, so that hash is asked with the
  rest too (``expected_hashes``): after a converge that wrote files, the
  next one does not ask hundreds of hashes one by one;
* answers are served only while nothing they depend on has changed: once
  an operation has run a command on a host that is not a fact's, that
  host's facts are asked live again, as pyinfra always does, so an
  operation sees what it and the ones before it did. What is known is the
  paths an upload or a plain file command (mv, chmod, chown, mkdir, touch,
  rm, ln, cp, with absolute paths) touched, and systemd's state after
  systemctl's unit verbs; after those, a fact about anything else is still
  served. After any other command (a package, a script, a validator) every
  fact of that host is asked live. Another host's commands change nothing
  here: each host's operations change that host.

A converge that changes nothing therefore asks its facts in one command per
host, and sees what it would have seen asking one by one a few seconds
earlier: drift is found the same way. A fact that fails, or whose program is
missing, is not served: it is asked live, and pyinfra handles it as always.
The record holds fact names, paths and commands, never their answers.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import os
import pickle  # nosec B403  # only this process's own pickles are read (see _get_fact)
import posixpath
import shlex
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
import gevent.local
from pyinfra.api import facts as pyinfra_facts
from pyinfra.api.arguments import CONNECTOR_ARGUMENT_KEYS, all_global_arguments, pop_global_arguments
from pyinfra.api.command import StringCommand
from pyinfra.api.host import Host

from hastack.fact_batches import Batch, batches, expected_hashes

log = logging.getLogger(__name__)

_BEGIN = "@@hastack-fact {}@@"
_END = "@@hastack-fact-rc "
# one command's size: `sudo sh -c COMMAND` passes it as one argument, which Linux limits to 128 KiB
_COMMAND_BYTES = 64 * 1024


EVERYTHING = object()  # FactCache.touched: a command whose effect is not known

_SYSTEMD = ("/etc/systemd", "/run/systemd", "/lib/systemd", "/usr/lib/systemd")
# pyinfra's facts that read no path of their arguments, and the paths they read: a file written under one of
# these makes them asked live; so does a command whose effect is not known (a package installed, a script)
_IMPLICIT_PATHS = {
    "pyinfra.facts.systemd.SystemdStatus": _SYSTEMD,
    "pyinfra.facts.systemd.SystemdEnabled": _SYSTEMD,
    "pyinfra.facts.server.Users": ("/etc/passwd", "/etc/shadow", "/etc/group", "/home"),
    "pyinfra.facts.server.Groups": ("/etc/group",),
    "pyinfra.facts.server.Hostname": ("/etc/hostname",),
    "pyinfra.facts.server.Os": ("/etc/os-release", "/usr/lib/os-release"),
    "pyinfra.facts.deb.DebPackages": ("/var/lib/dpkg",),
}
# facts that read the paths given in their arguments, and nothing else
_PATH_FACT_MODULES = ("pyinfra.facts.files",)
_PATH_FACTS = ("pyinfra.facts.server.AuthorizedKeys",)
# the plain file commands pyinfra's file operations run: what they change is the paths they are given (after
# a mode or an owner: how many words come first)
_FILE_COMMANDS = {"mv": 0, "cp": 0, "rm": 0, "mkdir": 0, "touch": 0, "ln": 0, "chmod": 1, "chown": 1, "chgrp": 1}
# systemctl's verbs that change or read units: what they change is systemd's state. A service (re)started
# may write its own files, as it may at any moment; an operation reads those as they were when the converge
# began, which is what pyinfra's facts always were until it asked them as operations run
_SYSTEMCTL = {"start", "stop", "restart", "reload", "try-restart", "reload-or-restart", "enable", "disable",
              "daemon-reload", "is-active", "is-enabled", "mask", "unmask"}


def fact_paths(cls, fact_kwargs: dict) -> tuple[str, ...] | None:
    """The paths a fact reads, or None when they are not known (a command of its own, a fact of a role)."""
    name = f"{cls.__module__}.{cls.__qualname__}"
    if name in _IMPLICIT_PATHS:
        return _IMPLICIT_PATHS[name]
    if cls.__module__ in _PATH_FACT_MODULES or name in _PATH_FACTS:
        paths = tuple(posixpath.normpath(v) for v in fact_kwargs.values() if isinstance(v, str) and v.startswith("/"))
        return paths or None
    return None


def _related(touched: str, read: str) -> bool:
    """A path written changes what is read at it, above it (a directory's listing) or below it."""
    return touched == read or touched.startswith(read.rstrip("/") + "/") or read.startswith(touched.rstrip("/") + "/")


def uploaded_paths(_src=None, remote_filename=None, remote_temp_filename=None, *_args, **kwargs) -> tuple[str, ...] | None:
    """The paths an upload writes: its destination and its temporary file."""
    remote = remote_filename or kwargs.get("remote_filename")
    temp = remote_temp_filename or kwargs.get("remote_temp_filename")
    paths = tuple(str(p) for p in (remote, temp) if p)
    return paths if paths and all(p.startswith("/") for p in paths) else None


def command_paths(command) -> tuple[str, ...] | None:
    """The paths a command changes when it is made of plain file commands (mv, cp, rm, mkdir, touch, ln with
    their flags; chmod, chown, chgrp after their mode or owner; every path absolute), systemctl's unit verbs
    and ``true``, joined by ``&&``, ``||`` or ``;``; None for any other command (its effect is not known)."""
    try:
        raw = command.get_raw_value() if hasattr(command, "get_raw_value") else command
        lexer = shlex.shlex(str(raw), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError:
        return None
    if not words:
        return None
    paths: list[str] = []
    part: list[str] = []
    for word in [*words, ";"]:
        if word not in ("&&", "||", ";"):
            part.append(word)
            continue
        changed = _part_paths(part)
        if changed is None:
            return None
        paths += changed
        part = []
    return tuple(paths)


def _part_paths(part: list[str]) -> list[str] | None:
    """What one simple command of ``command_paths`` changes; None when not known."""
    if not part:
        return None
    if part == ["true"]:
        return []
    flags = [w for w in part[1:] if w.startswith("-")]
    operands = [w for w in part[1:] if not w.startswith("-")]
    if any(set(w) <= set("();<>|&") for w in part):  # a pipe, a redirection, a subshell
        return None
    if any(c in w for w in part for c in "$`*?[{~"):  # a path the shell expands: which one is not known here
        return None
    if part[0] == "systemctl":
        if set(flags) - {"--quiet", "-q", "--no-block"} or not operands or operands[0] not in _SYSTEMCTL:
            return None
        return list(_SYSTEMD)
    if part[0] not in _FILE_COMMANDS:
        return None
    operands = operands[_FILE_COMMANDS[part[0]]:]
    if not operands or not all(o.startswith("/") for o in operands):
        return None
    return operands


def fact_cache_dir() -> Path | None:
    """Where the record is kept: $HASTACK_FACT_CACHE ("off": nowhere), else the user's cache directory.
    It holds fact names, paths and commands, never their answers."""
    value = os.environ.get("HASTACK_FACT_CACHE")
    if value == "off":
        return None
    if value:
        return Path(value)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hastack" / "facts"


class FactCache:
    """Per host: the facts recorded (``recorded``), and the answers taken at the start (``answers``)."""

    def __init__(self, directory: Path | None):
        self.directory = directory
        self.lock = threading.Lock()
        self.recorded: dict[str, dict[str, dict]] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.served: dict[str, int] = {}
        self.asked: dict[str, int] = {}
        # per host, what an operation's commands changed since the answers were taken: the paths touched,
        # or EVERYTHING (a command whose effect is not known: every fact of the host is asked live)
        self.touched: dict[str, set[str] | object] = {}
        # per host: the deploy its last fact outside an operation was asked in, and how facts run there
        self.executors: dict[str, tuple] = {}

    # -- the record, on disk between converges
    def _file(self, host_name: str) -> Path | None:
        return self.directory / f"{host_name}.json" if self.directory else None

    def load(self, host_name: str) -> list[dict]:
        path = self._file(host_name)
        if path is None or not path.exists():
            return []
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            return []
        return entries if isinstance(entries, list) else []

    def save(self, host_name: str) -> None:
        path = self._file(host_name)
        if path is None or not self.recorded.get(host_name):
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(list(self.recorded[host_name].values()), sort_keys=True))
        tmp.replace(path)

    @property
    def changed(self) -> bool:
        """Whether an operation ran a command on any host."""
        return bool(self.touched)

    def touch(self, host_name: str, paths: tuple[str, ...] | None) -> None:
        """An operation's command on the host: it changed ``paths`` only, or (None) anything."""
        with self.lock:
            seen = self.touched.get(host_name, set())
            if paths is None or seen is EVERYTHING:
                self.touched[host_name] = EVERYTHING
            else:
                self.touched[host_name] = seen | {posixpath.normpath(p) for p in paths}

    def current(self, host_name: str, cls, fact_kwargs: dict) -> bool:
        """Whether the answer taken at the start still holds: nothing the fact reads was touched since."""
        touched = self.touched.get(host_name)
        if not touched:
            return True
        if touched is EVERYTHING:
            return False
        reads = fact_paths(cls, fact_kwargs)
        return reads is not None and not any(_related(t, r) for t in touched for r in reads)

    # -- keys
    @staticmethod
    def key(cls, fact_kwargs: dict, executor: dict) -> str:
        return json.dumps([cls.__module__, cls.__qualname__, fact_kwargs, executor], sort_keys=True)

    def record(self, host_name: str, cls, fact_kwargs: dict, executor: dict) -> str | None:
        """The fact's key; None when it cannot be recorded (arguments that are not plain data)."""
        if "." in cls.__qualname__:
            return None
        try:
            key = self.key(cls, fact_kwargs, executor)
        except (TypeError, ValueError):  # not plain data
            return None
        with self.lock:
            self.recorded.setdefault(host_name, {})[key] = {
                "module": cls.__module__, "name": cls.__qualname__, "kwargs": fact_kwargs, "executor": executor}
        return key

    # -- the answers, one command per host (and per way of running)
    def prefetch(self, host) -> int:
        """Asks every recorded fact of ``host`` in one command (per sudo setting); returns how many answered."""
        groups: dict[str, list[tuple[str, Any, dict]]] = {}  # executor -> [(key, fact, its arguments)]
        scripts: dict[str, str] = {}  # key -> the fact's own command
        for entry in self.load(host.name):
            try:
                cls = getattr(importlib.import_module(entry["module"]), entry["name"])
                fact = cls()
                if fact.shell_executable:
                    continue
                fact_kwargs = dict(entry["kwargs"])
            except Exception as e:  # a fact class gone or changed since: asked live when needed
                log.debug("%s: not asking %s again: %s", host.name, entry.get("name"), e)
                continue
            script = _own_script(host, fact, fact_kwargs)
            if script is None:
                continue
            key = self.key(cls, fact_kwargs, entry["executor"])
            scripts[key] = script
            # the instance that made the command processes its output (some facts keep their arguments)
            groups.setdefault(json.dumps(entry["executor"], sort_keys=True), []).append((key, fact, fact_kwargs))

        commands: list[tuple[dict, list[Batch]]] = []
        for executor_json, facts in groups.items():
            executor = json.loads(executor_json)
            together, alone = batches(facts)
            together += expected_hashes(facts, lambda cls, kwargs, e=executor: self.key(cls, kwargs, e))
            items = together + [Batch([(key, fact)], scripts[key], _one) for key, fact in alone]
            chunk: list[Batch] = []
            for item in items:
                if chunk and sum(len(i.script) for i in chunk) + len(item.script) > _COMMAND_BYTES:
                    commands.append((executor, chunk))
                    chunk = []
                chunk.append(item)
            if chunk:
                commands.append((executor, chunk))
        # each command on its own channel of the host's connection, all at once; the longest is sent
        # from here at once (a spawned one would wait for every other host's preparation)
        commands.sort(key=lambda c: -sum(len(item.script) for item in c[1]))
        asks = [gevent.spawn(self._ask, host, executor, chunk) for executor, chunk in commands[1:]]
        answered = self._ask(host, *commands[0]) if commands else 0
        gevent.joinall(asks)
        return answered + sum(a.value or 0 for a in asks)

    def _ask(self, host, executor: dict, items: list[Batch]) -> int:
        # the reads at the lowest CPU and disk priority: on a busy host they wait for the services they
        # look at, not the other way round (at once on every host, they starved HAProxy's health checks)
        parts = ["renice -n 19 -p $$ >/dev/null 2>&1; ionice -c 2 -n 7 -p $$ >/dev/null 2>&1"]
        for i, item in enumerate(items):
            # each program in a subshell of its own, its error output dropped; its status after its output
            parts.append(f"echo '{_BEGIN.format(i)}'; ( {item.script} ) 2>/dev/null; echo; echo \"{_END}$?\"")
        _asking.fact = True  # a fact's command, not a change (it may run while another host is prepared)
        try:
            status, output = host.run_shell_command(StringCommand("\n".join(parts)), **executor)
        except Exception as e:  # the facts are asked live instead
            log.debug("%s: facts at once failed: %s", host.name, e)
            return 0
        finally:
            _asking.fact = False
        if not status:
            return 0
        answers = self.answers.setdefault(host.name, {})
        index, lines, n = None, [], 0
        for line in output.stdout_lines:
            if index is None:
                if line.startswith("@@hastack-fact ") and line.endswith("@@"):
                    index, lines = int(line[len("@@hastack-fact "):-2]), []
                continue
            if line.startswith(_END):
                rc = line[len(_END):].strip()
                # the `echo` before the status ends an output without a newline; one that had one ends
                # in an empty line here that pyinfra would not have seen
                if lines and lines[-1] == "":
                    lines.pop()
                item = items[index]
                for (key, fact), out in zip(item.members, item.split(lines, rc), strict=True):
                    if out is None:
                        continue
                    try:
                        # kept pickled: each ask gets its own copy (an operation may change what it is given),
                        # made faster than a deep copy of a host's package list
                        answers[key] = pickle.dumps(fact.process(out) if out else fact.default())
                        n += 1
                    except Exception as e:  # not served: pyinfra asks it live, and reports what fails then
                        log.debug("%s: fact %s not read from the batch: %s", host.name, key, e)
                index = None
                continue
            lines.append(line)
        return n


def _own_script(host, fact, fact_kwargs: dict) -> str | None:
    """The command pyinfra would run for ``fact``, as a shell script; None when it cannot be made (a fact
    class changed since it was recorded: asked live when needed)."""
    try:
        command = pyinfra_facts._make_command(fact.command, dict(fact_kwargs))
        requires = pyinfra_facts._make_command(fact.requires_command, dict(fact_kwargs))
    except Exception as e:
        log.debug("%s: not asking %s again: %s", host.name, type(fact).__name__, e)
        return None
    script = str(StringCommand(command).get_raw_value()) if not isinstance(command, str) else command
    if requires:
        script = f"if command -v {requires} >/dev/null 2>&1; then {script}; else exit 127; fi"
    return script


def _one(lines: list[str], rc: str) -> list[list[str] | None]:
    """A fact asked on its own: its output, when its command succeeded."""
    return [lines if rc == "0" else None]


_active: FactCache | None = None
_asking = gevent.local.local()  # per greenlet: asking a fact live now
_original_get_fact = pyinfra_facts._get_fact


def _fact_arguments(cache: FactCache, state, host, cls, args, kwargs) -> tuple[dict, dict]:
    """A fact's own arguments, and how it is run (sudo or not, ...): pyinfra's _handle_fact_kwargs, with the
    global arguments worked out once per operation (or deploy) instead of once per fact: reading each of
    them from the host's data for each of some 5,000 facts was a fifth of a no-op converge's CPU.
    ``tests/unit/test_fact_cache.py`` holds it to pyinfra's answer."""
    kwargs = kwargs or {}
    if not _global_keys().isdisjoint(kwargs):  # the fact is asked with its own sudo (or other) settings
        fact_kwargs, global_kwargs = pyinfra_facts._handle_fact_kwargs(state, host, cls, args, kwargs)
        fact_kwargs.pop("self", None)
        return fact_kwargs, {k: v for k, v in global_kwargs.items() if k in CONNECTOR_ARGUMENT_KEYS}
    op_arguments = host.current_op_global_arguments
    if op_arguments is not None:
        # inside an operation: pyinfra has made its global arguments already (the one with a handler,
        # _env, gives the same value when handled again)
        executor = {k: op_arguments[k] for k in CONNECTOR_ARGUMENT_KEYS}
    else:
        # outside one: the same objects as for the host's last fact (the same deploy), the same answer
        context = (host, host.current_deploy_kwargs, host.current_deploy_data)
        last = cache.executors.get(host.name)
        if last is None or any(a is not b for a, b in zip(last[:3], context, strict=True)):
            global_kwargs, _ = pop_global_arguments(state, host, {})
            last = cache.executors[host.name] = (*context, {k: v for k, v in global_kwargs.items()
                                                             if k in CONNECTOR_ARGUMENT_KEYS})
        executor = dict(last[3])
    return (_command_arguments(cls, tuple(args or ()), kwargs) if args or kwargs else {}), executor


@functools.cache
def _command_signature(cls) -> inspect.Signature:
    return inspect.signature(cls().command)  # a bound method's: without self


def _command_arguments(cls, args: tuple, kwargs: dict) -> dict:
    """What inspect.getcallargs gives for the fact's command (every parameter, its default when not given),
    from its signature read once per class rather than once per fact."""
    bound = _command_signature(cls).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


@functools.cache
def _global_keys() -> frozenset[str]:
    return frozenset(key for key, _ in all_global_arguments())


def _get_fact(state, host, cls, args=None, kwargs=None, ensure_hosts=None, apply_failed_hosts=True):
    cache = _active
    if cache is None:
        return _original_get_fact(state, host, cls, args, kwargs, ensure_hosts, apply_failed_hosts)
    fact_kwargs, executor = _fact_arguments(cache, state, host, cls, args, kwargs)
    key = cache.record(host.name, cls, fact_kwargs, executor)
    answers = cache.answers.get(host.name, {})
    if key is not None and key in answers and cache.current(host.name, cls, fact_kwargs):
        with cache.lock:
            cache.served[host.name] = cache.served.get(host.name, 0) + 1
        # pickled above (_ask) by this process from pyinfra's parsed fact, kept in memory only (never
        # written to disk: the record there is JSON of fact names and arguments): a fresh copy per ask
        return pickle.loads(answers[key])  # nosec B301  # our own in-memory pickle, see above
    with cache.lock:
        cache.asked[host.name] = cache.asked.get(host.name, 0) + 1
    _asking.fact = True  # its command is a fact's, not a change
    try:
        return _original_get_fact(state, host, cls, args, kwargs, ensure_hosts, apply_failed_hosts)
    finally:
        _asking.fact = False


@contextmanager
def serving(cache: FactCache):
    """Facts from ``cache`` (and recorded into it), each until an operation's command or upload on its host
    may have changed what it reads."""
    global _active
    _active = cache
    pyinfra_facts._get_fact = _get_fact
    originals = {name: getattr(Host, name) for name in ("run_shell_command", "put_file")}

    def watched(name):
        def call(self, *args, **kwargs):
            if not getattr(_asking, "fact", False):
                cache.touch(self.name, uploaded_paths(*args, **kwargs) if name == "put_file"
                            else command_paths(args[0] if args else kwargs.get("command")))
            return originals[name](self, *args, **kwargs)
        return call

    for name in originals:
        setattr(Host, name, watched(name))
    try:
        yield cache
    finally:
        for name, original in originals.items():
            setattr(Host, name, original)
        pyinfra_facts._get_fact = _original_get_fact
        _active = None
