"""Converge: run the pyinfra roles over every host of a stack, in parallel.

The same entry point serves the lab (addresses from the lab) and a real
stack (addresses from `pulumi stack output`). Each host runs the roles its
data lists (``base``, its own, those beside it), in that order, at its own
pace (hastack.host_runs); a role without a deploy module has nothing to
configure yet. Then each role's after-roles step runs (hastack.role.Role.after_roles).

``check=True`` is the dry run (`hastack converge --check`): the operations are
prepared as for a converge (facts gathered) and each is asked whether it would
change something; nothing is run on any host and no after-roles step runs.
"""

from __future__ import annotations

import functools
from copy import copy
import importlib
import logging
import shlex
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import gevent
from gevent.pool import Pool
from pyinfra import host
from pyinfra.context import ctx_host, ctx_state
from pyinfra.api import Config, State
from pyinfra.api import arguments as pyinfra_arguments
from pyinfra.api import command as pyinfra_command
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy, deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.host import HostData
from pyinfra.api.command import StringCommand

from hastack.converge_progress import Progress, operation_names
from hastack.fact_cache import FactCache, fact_cache_dir, serving
from hastack.host_runs import run_each_host
from hastack.inventory import make_inventory
from hastack.role import AfterRoles, AfterRolesError
from roles import all_roles
from roles.base.config import ACCESS

log = logging.getLogger(__name__)

# pyinfra works out the type hints of its global arguments (_sudo, _if, ...) again for every
# operation and fact: a third of preparing a converge. They never change within a process.
pyinfra_arguments.all_global_arguments = functools.cache(pyinfra_arguments.all_global_arguments)


@functools.lru_cache(maxsize=1024)
def _split_once(template: str) -> tuple[str, ...]:
    return tuple(shlex.split(template))


# pyinfra splits a command's template with shlex each time a fact or an operation makes its command
# (46,000 tokens in a no-op converge of the lab): the templates are a few dozen constant strings.
# Its command module alone gets the remembering split.
_shlex = types.ModuleType("shlex")
_shlex.__dict__.update(vars(shlex))
_shlex.split = _split_once
pyinfra_command.shlex = _shlex


def _host_data(self, key: str):
    """pyinfra's HostData lookup (each layer of a host's data in turn, a copy of the first value found)
    without its generator and a KeyError per layer that lacks the key: most lookups are global arguments
    that no layer has, some 176,000 in a converge of the 12-host lab."""
    for data in self.datas:
        if callable(data):
            data = data()
        if key in data:
            return copy(data[key])
    raise AttributeError(f"Host `{self.host}` has no data `{key}`")


HostData.__getattr__ = _host_data


@dataclass
class HostReport:
    name: str
    operations: int = 0
    changed: int = 0
    changed_operations: list[str] = field(default_factory=list)
    failed: str | None = None  # "operation name: error"
    # a dry run: operations that run only when another one changes (a restart after its file)
    conditional: int = 0
    # every operation that settles who may log in (roles/base ACCESS) ran without error
    access_settled: bool = False
    # facts while the operations were prepared: asked one by one, and served from one command
    facts_asked: int = 0
    facts_served: int = 0


@dataclass
class ConvergeReport:
    hosts: dict[str, HostReport]
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)  # connect, facts, prepare, run, after roles: seconds
    slowest: list[tuple[str, float]] = field(default_factory=list)  # the longest operations: (name, seconds)
    cpu: dict[str, float] = field(default_factory=dict)  # the same phases: this process's CPU seconds
    # role name -> seconds its after-roles step ran while other hosts still ran operations (StepsAhead)
    ran_ahead: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(h.failed is None for h in self.hosts.values())

    @property
    def changes(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    def failure(self) -> str:
        """What failed, host by host, and where the stack's admin list may not hold yet."""
        failed = [h for h in self.hosts.values() if h.failed]
        lines = [f"converge failed on {len(failed)} of {len(self.hosts)} hosts:"]
        lines += [f"  - {h.name}: {h.failed}" for h in failed]
        unsettled = [h.name for h in self.hosts.values() if not h.access_settled]
        if unsettled:
            lines.append("access not settled on " + ", ".join(unsettled) + ": an admin removed from the stack may "
                         "still log in there until a converge succeeds on them (a powered-off host: when it is back)")
        return "\n".join(lines)


def _fresh_host_keys() -> None:
    """pyinfra reads a known_hosts file once per process; a run after machines were added
    (or rebuilt with new host keys) must read it again."""
    from pyinfra.connectors.sshuserclient.client import get_host_keys

    get_host_keys.cache.clear()


def role_deploy(role: str) -> Callable | None:
    try:
        module = importlib.import_module(f"roles.{role}.deploy")
    except ModuleNotFoundError as e:
        if e.name == f"roles.{role}.deploy":
            return None
        raise
    return getattr(module, role)


@deploy("hastack")
def converge_host() -> None:
    for role in host.data.roles:
        fn = role_deploy(role)
        if fn is not None:
            fn()
    if "base" in host.data.roles:
        from roles.base.deploy import load_audit_rules, renew_integrity_baseline, reread_pending_security

        reread_pending_security()  # after every role's packages
        load_audit_rules()  # after the roles: the directories its rules watch exist
        renew_integrity_baseline()  # last: it looks at every operation before it


def converge(entries: dict[str, dict[str, Any]], parallel: int | None = None,
             progress: Callable[[str], None] | None = None, after_roles: bool = True,
             check: bool = False, deploy_fn: Callable = converge_host) -> ConvergeReport:
    """Converge every host in ``entries`` (name -> pyinfra host data); ``after_roles=False``
    leaves out the roles' steps after the roles (a Cassandra node is configured, the ring not changed).
    ``check``: the dry run; the report's changes are the operations that would change something."""
    started = time.monotonic()
    logging.getLogger("pyinfra").setLevel(logging.WARNING)
    inventory = make_inventory(entries)
    config = Config(PARALLEL=parallel or len(entries), CONNECT_TIMEOUT=20, FAIL_PERCENT=100)
    state = State(inventory, config)
    reports = {name: HostReport(name) for name in entries}
    say = progress or (lambda _m: None)
    phases: dict[str, float] = {}
    cpu: dict[str, float] = {}
    slowest: list[tuple[str, float]] = []
    lap = [started, time.process_time()]

    def phase(name: str) -> None:
        now, used = time.monotonic(), time.process_time()
        phases[name], cpu[name] = now - lap[0], used - lap[1]
        lap[:] = [now, used]

    say(f"connecting to {len(entries)} hosts")
    _fresh_host_keys()
    connect_all(state)
    for h in inventory:
        if h not in state.activated_hosts:
            reports[h.name].failed = "connect: could not connect over SSH"
    phase("connect")
    looks = _look_ahead(state, inventory, say) if after_roles and not check else {}
    ahead: StepsAhead | None = None
    context_before = ctx_state.get()
    try:
        try:
            say("preparing operations (gathering facts)")
            # pyinfra prepares hosts one after another. Its host context is
            # greenlet-local, so each host is prepared in its own greenlet and facts
            # are gathered in parallel; the state context is process-wide, so it is
            # set once around all of them.
            hosts = list(state.inventory.get_active_hosts())
            # the facts the last converge asked, asked again in one command per host (hastack.fact_cache);
            # a host's operations are prepared as soon as its own answers are in, while other hosts answer
            facts = FactCache(fact_cache_dir())
            waiting = [len(hosts)]

            def prepare(h) -> None:
                facts.prefetch(h)
                waiting[0] -= 1
                if not waiting[0]:
                    phase("facts")  # the last host's answers: the rest of "prepare" is the operator's alone
                add_deploy(state, deploy_fn, host=h)

            with serving(facts):
                with ctx_state.use(state), own_operation_names(state):
                    Pool(len(hosts) or 1).map(prepare, hosts)
                phase("prepare")
                if check:
                    say(f"asking {len(state.get_op_order())} operations whether they would change anything "
                        "(nothing is run)")
                    with ctx_state.use(state):
                        Pool(len(hosts) or 1).map(lambda h: _would_change(state, h, reports[h.name]), hosts)
                else:
                    say(f"running {len(state.get_op_order())} operations")
                    if after_roles:
                        ahead = StepsAhead(state, inventory, say, looks)
                    with Progress(state, say) as progress_lines:
                        state.add_callback_handler(progress_lines)
                        # each host at its own pace (hastack.host_runs)
                        run_each_host(state, when_done=ahead.host_done if ahead else None)
                    if ahead:
                        ahead.hosts_finished()
                    slowest[:] = progress_lines.slowest()
                    phase("run")
            for h in hosts:
                reports[h.name].facts_asked = facts.asked.get(h.name, 0)
                reports[h.name].facts_served = facts.served.get(h.name, 0)
                facts.save(h.name)
            if check:
                return ConvergeReport(reports, time.monotonic() - started, phases, slowest, cpu)
        except PyinfraError as e:
            for h in inventory:
                if reports[h.name].failed is None and h in state.failed_hosts:
                    reports[h.name].failed = str(e)
            if not any(r.failed for r in reports.values()):
                raise
        if check:
            return ConvergeReport(reports, time.monotonic() - started, phases, slowest, cpu)
        _collect(state, inventory, reports)
        if after_roles:
            _after_roles(state, inventory, reports, say, looks, ahead)
            phase("after roles")
    finally:
        gevent.killall(list(looks.values()))  # a converge that stopped early: no look-ahead left reading
        if ahead:
            gevent.joinall(list(ahead.started.values()))  # a ring step is not cut off half-way
            ctx_state.set(context_before)  # their commands set pyinfra's process-wide state beside the run's
        disconnect_all(state)
    return ConvergeReport(reports, time.monotonic() - started, phases, slowest, cpu,
                          ahead.ran_ahead if ahead else {})


@contextmanager
def connected(entries: dict[str, dict[str, Any]]):
    """A runner over SSH to every host in ``entries``, for commands outside a converge."""
    state = State(make_inventory(entries), Config(PARALLEL=len(entries), CONNECT_TIMEOUT=20, FAIL_PERCENT=100))
    _fresh_host_keys()
    connect_all(state)
    try:
        missing = [h.name for h in state.inventory if h not in state.activated_hosts]
        if missing:
            raise ConnectionError(f"could not connect over SSH to {', '.join(missing)}")
        yield runner(state)
    finally:
        disconnect_all(state)


def runner(state: State) -> "Remote":
    """Run a shell command as root on a connected host: (ok, stdout, stderr)."""
    return Remote(state)


class Remote:
    """Shell commands as root on connected hosts: ``run(name, command, timeout)`` -> (ok, stdout, stderr);
    ``run.stream(name, command, chunks)`` feeds the command's standard input (a restore's data)."""

    def __init__(self, state: State):
        self.state = state
        self.hosts = {h.name: h for h in state.inventory}

    def __call__(self, name: str, command: str, timeout: float = 120) -> tuple[bool, str, str]:
        with ctx_state.use(self.state):
            ok, out = self.hosts[name].run_shell_command(StringCommand(command), _sudo=True, _timeout=timeout)
        return ok, out.stdout, "\n".join(out.stderr_lines)

    def stream(self, name: str, command: str, chunks, timeout: float = 3600) -> tuple[bool, str, str]:
        """Run ``command`` as root with ``chunks`` (an iterable of bytes) as its standard input, over the
        host's SSH connection; returns when the command exits: (ok, stdout, stderr)."""
        import shlex

        transport = self.hosts[name].connector.client.get_transport()
        chan = transport.open_session(timeout=30)
        chan.settimeout(timeout)
        # bash with pipefail: a pipeline fails when any of its programs does (zstd -dc | mbstream ...)
        chan.exec_command(f"sudo -H -n bash -o pipefail -c {shlex.quote(command)}")
        out, err = bytearray(), bytearray()

        def drain() -> None:
            while chan.recv_ready():
                out.extend(chan.recv(65536))
            while chan.recv_stderr_ready():
                err.extend(chan.recv_stderr(65536))

        try:
            for chunk in chunks:
                drain()
                if chan.exit_status_ready():
                    break  # the command ended early: what it said tells why
                try:
                    chan.sendall(chunk)
                except OSError:
                    break  # closed by the command's end: its exit status and output say why
            chan.shutdown_write()
            while not chan.exit_status_ready() or chan.recv_ready() or chan.recv_stderr_ready():
                drain()
                time.sleep(0.05)
            status = chan.recv_exit_status()
        finally:
            chan.close()
            if hasattr(chunks, "close"):
                chunks.close()  # a generator that was not read to its end stops (and cleans up) now
        return status == 0, out.decode(errors="replace"), err.decode(errors="replace")


def _look_ahead(state: State, inventory, say: Callable[[str], None]) -> dict[str, Any]:
    """Each role's look-ahead (a slow read its after-roles step needs), started now in a greenlet of its
    own: it runs while the roles are prepared and run. Its commands go over their own SSH channels, outside
    pyinfra (they are not an operation's, and change nothing)."""
    remote = Remote(state)
    looks = {}
    for r in all_roles():
        look = r.after_roles_look_step()
        members = [h for h in _role_hosts(inventory, r.name) if h in state.activated_hosts]
        if look is not None and members:
            step = AfterRoles(hosts={h.name: h.data.dict() for h in members},
                              run=lambda name, command, timeout=120: remote.stream(name, command, (), timeout),
                              log=say)
            looks[r.name] = gevent.spawn(_quietly, look, step)
    return looks


def _role_hosts(inventory, role_name: str) -> list:
    return [h for h in inventory if role_name in (h.data.get("roles") or [])]


def _quietly(look: Callable[[AfterRoles], Any], step: AfterRoles) -> Any:
    """A look-ahead that fails found nothing: its step reads for itself."""
    try:
        return look(step)
    except Exception as e:  # noqa: BLE001 - any failure means the same: nothing looked at
        log.debug("look-ahead failed: %s", e)
        return None


def _after_roles(state: State, inventory, reports: dict[str, HostReport], say: Callable[[str], None],
                 looks: dict[str, Any] | None = None, ahead: "StepsAhead | None" = None) -> None:
    """Each role's step after every host has its roles (the Cassandra ring: one node at a time).

    A step runs only when every host of the role converged; it changes nothing otherwise. It is given
    what its look-ahead read when no operation changed anything on the role's hosts. A step that
    already ran while other hosts ran their operations (``ahead``) has its results taken here, in the
    roles' order."""
    for r in all_roles():
        step = r.after_roles_step()
        members = _role_hosts(inventory, r.name)
        if step is None or not members:
            continue
        first = reports[members[0].name]
        failed = [h.name for h in members if reports[h.name].failed]
        if failed:
            first.failed = first.failed or f"{r.name}: not changed, because {', '.join(failed)} did not converge"
            continue
        started = ahead.started.get(r.name) if ahead else None
        if started is not None:
            changes, error = started.get()
        else:
            changed = any(reports[h.name].changed for h in members)
            changes, error = _run_step(state, step, members, say, None if changed else (looks or {}).get(r.name))
        for name, change in changes:
            reports[name].changed += 1
            reports[name].changed_operations.append(change)
        if error:
            first.failed = error


def _run_step(state: State, step: Callable[[AfterRoles], Any], members: list, say: Callable[[str], None],
              look: Any = None) -> tuple[list[tuple[str, str]], str | None]:
    """Run one role's after-roles step: the (host, change) it made, and why it stopped if it failed.
    ``look``: its look-ahead's greenlet, when no operation changed anything on the role's hosts."""
    changes: list[tuple[str, str]] = []
    hosts = {h.name: h.data.dict() for h in members}
    try:
        for name, change in step(AfterRoles(hosts=hosts, run=runner(state), log=say,
                                            looked=look.get() if look is not None else None)):
            changes.append((name, change))
    except AfterRolesError as e:
        return changes, str(e)
    return changes, None


class StepsAhead:
    """The after-roles steps of roles that need nothing of other roles' hosts (``Role.after_roles_alone``):
    each starts as soon as every host of its role has run all its operations, while the other hosts still
    run theirs (the Cassandra ring forms while the monitoring host installs its tools)."""

    def __init__(self, state: State, inventory, say: Callable[[str], None], looks: dict[str, Any]):
        self.state, self.say, self.looks = state, say, looks
        self.hosts = len(list(inventory))
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.waiting: dict[str, tuple[Any, list]] = {}  # role name -> (role, its hosts)
        self.started: dict[str, gevent.Greenlet] = {}  # role name -> its step: (changes, error)
        self.ran_ahead: dict[str, float] = {}  # role name -> seconds its step ran while other hosts ran
        self._span: dict[str, list[float]] = {}  # role name -> [start, end] of its step (monotonic)
        for r in all_roles():
            members = _role_hosts(inventory, r.name)
            if r.after_roles_alone and r.after_roles_step() is not None and members:
                self.waiting[r.name] = (r, members)

    def host_done(self, host, ok: bool) -> None:
        """hastack.host_runs calls this as each host's run ends."""
        self.done.add(host.name)
        if not ok or _host_ran(self.state, host)[1]:
            self.failed.add(host.name)
        for name, (r, members) in list(self.waiting.items()):
            names = {h.name for h in members}
            if names & self.failed:
                del self.waiting[name]  # the step does not run: _after_roles says why
            elif names <= self.done:
                del self.waiting[name]
                still = self.hosts - len(self.done)
                if still:
                    self.say(f"{r.name}: its hosts have run their operations; its step after the roles starts "
                             f"while {still} other hosts run theirs")
                self._span[name] = [time.monotonic(), float("inf")]
                self.started[name] = gevent.spawn(self._run, r, members)

    def _run(self, r, members: list) -> tuple[list[tuple[str, str]], str | None]:
        changed = any(_host_ran(self.state, h)[0] for h in members)
        try:
            return _run_step(self.state, r.after_roles_step(), members, self.say,
                             None if changed else self.looks.get(r.name))
        finally:
            self._span[r.name][1] = time.monotonic()

    def hosts_finished(self) -> None:
        """Every host's run has ended: how long each step started ahead has run meanwhile."""
        now = time.monotonic()
        self.ran_ahead = {name: min(end, now) - start for name, (start, end) in self._span.items()}


def _host_ran(state: State, h) -> tuple[bool, bool]:
    """Whether an operation changed something on host ``h``, and whether one failed, as _collect will
    count them (read as soon as the host's run ends)."""
    metas = [state.get_op_data_for_host(h, op_hash).operation_meta for op_hash in h.op_hash_order]
    done = [m for m in metas if m.is_complete()]
    return any(m.did_change() and not m.did_error() for m in done), any(m.did_error() for m in done)


@contextmanager
def own_operation_names(state: State):
    """pyinfra tells operations apart by the line numbers of their calls alone, so operations of different
    roles on different hosts can share one identity, and pyinfra's set of names for it holds all of theirs:
    each host's own name is kept here, for the reports to say what changed on that host."""
    # the module, not the `operation` decorator that pyinfra.api also exports under its name
    pyinfra_operation = importlib.import_module("pyinfra.api.operation")
    original = pyinfra_operation.solve_operation_consistency
    names = state.hastack_own_names = {}

    def solve(op_names, solving_state, h):
        op_order, op_hash = original(op_names, solving_state, h)
        # pyinfra passes its context's proxy of the state: the object behind it is this converge's
        if getattr(solving_state, "_get_module", lambda: solving_state)() is state:
            names[(h.name, op_hash)] = ", ".join(sorted(op_names))
        return op_order, op_hash

    pyinfra_operation.solve_operation_consistency = solve
    try:
        yield
    finally:
        pyinfra_operation.solve_operation_consistency = original


def _operation_name(state: State, h, op_hash: str) -> str:
    """The name of the operation as this host has it (own_operation_names), else pyinfra's names for it."""
    return ", ".join(operation_names(state, h.name, op_hash))


def _would_change(state: State, h, report: HostReport) -> None:
    """Which of a host's prepared operations would change something, as pyinfra knows before running
    one: its facts against what the operation wants (the operation's commands are generated, not run).
    An operation that runs only when another one changed (``_if``: a restart after its file) is
    counted apart: it follows the drift that the others report."""
    with ctx_host.use(h):
        for op_hash in h.op_hash_order:
            data = state.get_op_data_for_host(h, op_hash)
            name = _operation_name(state, h, op_hash)
            report.operations += 1
            if data.global_arguments.get("_if"):
                report.conditional += 1
                continue
            try:
                change = data.operation_meta.will_change
            except Exception as e:  # noqa: BLE001 - a fact that cannot be read: the host is not checked further
                report.failed = f"{name}: {type(e).__name__}: {e}"
                return
            if change:
                report.changed += 1
                report.changed_operations.append(name)


def _collect(state: State, inventory, reports: dict[str, HostReport]) -> None:
    """What each host's operations did, from pyinfra's operation metadata."""
    for h in inventory:
        report = reports[h.name]
        report.access_settled = h in state.activated_hosts
        for op_hash in h.op_hash_order:
            meta = state.get_op_data_for_host(h, op_hash).operation_meta
            name = _operation_name(state, h, op_hash)
            report.operations += 1
            # a name is "deploy | role | operation"
            if name.rsplit(" | ", 1)[-1].startswith(ACCESS) and (not meta.is_complete() or meta.did_error()):
                report.access_settled = False
            if not meta.is_complete():
                continue
            if meta.did_error() and report.failed is None:
                report.failed = f"{name}: {'; '.join(meta.stderr_lines[-3:])}".strip()
            elif meta.did_change():
                report.changed += 1
                report.changed_operations.append(name)
