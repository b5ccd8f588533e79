"""Restarts of a replicated service, one host at a time: the Cassandra ring's way.

A deploy never restarts a running member of a group whose members serve for
each other (the MariaDB pair, the Redis hosts, the Sentinels): it marks the
host (a file), and the role's step after the roles (hastack.role.Role.after_roles,
run by the converge once every host has its roles) restarts the marked hosts one
after another, each only when every member is healthy, and waits until the
restarted one is healthy again before the next. The mark outlives a failed or
skipped step, so the next converge finishes the restarts. A service that was not
running when the converge began (a new host: nothing is served yet) is restarted
in place, as any other.

roles/cassandra marks its nodes with the same operation (``mark``); its ring
step restarts them with Cassandra's own checks (roles/cassandra/ring.py).
"""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from hastack.role import AfterRoles, AfterRolesError, holds_on_each

# host -> what is not healthy yet, or None when healthy
Health = Callable[[Callable[[str, str, float], tuple[bool, str, str]], str, Mapping], str | None]


def restart_here(was_active: bool, changed: bool) -> bool:
    """Whether the deploy restarts the service itself: only when it was not running as the converge
    began (a new host); a running member is marked for the step's restart instead."""
    return changed and not was_active


def mark(name: str, path: str, service: str, changed: Sequence) -> None:
    """The pyinfra operation that marks a running ``service`` for a restart when one of ``changed``
    (operations) changed something."""
    from pyinfra.operations import server

    server.shell(name=name, commands=[f"systemctl is-active --quiet {service} && touch {path} || true"],
                 _if=lambda: any(op.did_change() for op in changed))


def reload_in_place(what: str, service: str, command: str, changed: Sequence) -> None:
    """The pyinfra operation that has a running ``service`` take new files by ``command`` (no restart) when one
    of ``changed`` (operations) changed something; one not running reads them when it starts."""
    from pyinfra import host
    from pyinfra.facts.server import Command
    from pyinfra.operations import server

    if host.get_fact(Command, f"systemctl is-active {service} || true") == "active":
        server.shell(name=what, commands=[command], _if=lambda: any(op.did_change() for op in changed))


def running(what: str, service: str, mark_path: str, changed: Sequence, new_member: bool = False,
            **service_args) -> None:
    """pyinfra operations: ``service`` enabled and running; when one of ``changed`` (operations) changes,
    restarted here if it was not running as the converge began (or the host serves nothing yet:
    ``new_member``), else marked for the rolling restart."""
    from pyinfra import host
    from pyinfra.facts.server import Command
    from pyinfra.operations import files, systemd

    was_active = host.get_fact(Command, f"systemctl is-active {service} || true") == "active" and not new_member
    will_change = any(op.will_change for op in changed)
    # always there (not only once the service runs), so a second converge has nothing to create
    files.directory(name=f"{what} restart mark directory", path=posixpath.dirname(mark_path),
                    user="root", group="root", mode="0700")
    if was_active:
        mark(f"{what} marked for a rolling restart", mark_path, service, changed)
    systemd.service(name=f"{what} running", service=service, running=True, enabled=True,
                    restarted=restart_here(was_active, will_change), **service_args)


@dataclass
class RollingRestart:
    """Restarts the marked members of a group one at a time."""

    what: str  # "MariaDB", in messages
    service: str  # the systemd unit
    mark: str  # the mark's path on each host
    healthy: Health
    timeout: float  # seconds a member may take to be healthy
    # the members in the order they restart (e.g. the writer last); None: the hosts' order
    order: Callable[[AfterRoles, list[str]], list[str]] | None = None
    poll: float = 2.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic

    def marked(self, step: AfterRoles) -> list[str]:
        found = holds_on_each(step.run, step.hosts, f"test -e {self.mark}")
        return [name for name in step.hosts if found[name]]

    def wait_healthy(self, step: AfterRoles, names: Iterable[str]) -> dict[str, str]:
        """Until each of ``names`` is healthy, or the timeout: what is still wrong, by host ({} when all are)."""
        deadline = self.clock() + self.timeout
        while True:
            problems = {}
            for name in names:
                problem = self.healthy(step.run, name, step.hosts[name])
                if problem:
                    problems[name] = problem
            if not problems or self.clock() >= deadline:
                return problems
            self.sleep(self.poll)

    def __call__(self, step: AfterRoles) -> list[tuple[str, str]]:
        marked = self.marked(step)
        if not marked:
            return []
        if self.order:
            marked = self.order(step, marked)
        done: list[tuple[str, str]] = []
        step.log(f"{self.what}: restarting {', '.join(marked)}, one at a time")
        for i, name in enumerate(marked):
            # every member but those still waiting for their restart (which may not be healthy before it:
            # a new password, a new CA) must be healthy: restarting one more could take the service down
            serving = [m for m in step.hosts if m not in marked[i:]]
            problems = self.wait_healthy(step, serving)
            if problems:
                raise AfterRolesError(
                    f"{self.what}: refusing to restart {', '.join(marked[i:])} for a new configuration: "
                    f"{_describe(problems)} (waited {self.timeout:.0f} s). Bring it back to health, then converge "
                    f"again (the restart is still due)")
            step.log(f"{name}: restarting {self.service}")
            ok, out, err = step.run(name, f"systemctl restart {self.service}", 300)
            if not ok:
                raise AfterRolesError(f"{self.what}: {name}: `systemctl restart {self.service}` failed: "
                                      f"{(err or out).strip()[-400:]}")
            step.run(name, f"rm -f {self.mark}", 30)  # restarted: it runs the new configuration
            done.append((name, f"{self.what}: restarted for a new configuration (one at a time)"))
            problems = self.wait_healthy(step, [name])
            if problems:
                rest = marked[i + 1:]
                raise AfterRolesError(
                    f"{self.what}: {name} is not healthy {self.timeout:.0f} s after its restart: {problems[name]}. "
                    f"See `journalctl -u {self.service}` on {name}"
                    + (f"; {', '.join(rest)} not restarted (still due: the next converge restarts them once every "
                       f"other member is healthy)" if rest else ""))
        problems = self.wait_healthy(step, list(step.hosts))
        if problems:
            raise AfterRolesError(f"{self.what}: restarted {', '.join(marked)}, but not every member is healthy "
                                  f"{self.timeout:.0f} s later: {_describe(problems)}")
        return done


def _describe(problems: Mapping[str, str]) -> str:
    return "; ".join(f"{name}: {problem}" for name, problem in problems.items())
