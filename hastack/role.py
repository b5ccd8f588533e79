"""What a role is, as the rest of hastack sees it.

Each `roles/<role>/__init__.py` defines one ``ROLE = Role(...)``: the ports it
serves and to whom, where its hosts go (count rule, address block, short
name), the settings a stack file may give it, the facts and secrets its hosts
need, and what the converge runs after every host has its roles. The model,
the inventory, the converge and the CLI read these; none of them names a role.

Pure data and pure functions: no pyinfra, no Pulumi.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from hastack.ports import Port

if TYPE_CHECKING:
    from hastack.model import Host, StackConfig, Topology


class Section(BaseModel):
    """A block of the stack file (``hastack:settings.<role>``, ``hastack:cassandra``):
    camelCase keys, unknown keys refused, values checked by the fields themselves."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True,
                              validate_default=True)


class Settings(Section):
    """A role's settings. Each field ``x`` is the host data key ``<prefix>x``, which the
    role's templates and deploy read; the field's default is the role's default."""

    @classmethod
    def data_defaults(cls, prefix: str) -> dict[str, Any]:
        return {prefix + name: value for name, value in cls().model_dump().items()}

    def data(self, prefix: str) -> dict[str, Any]:
        """Only what the stack file set: the rest comes from the role's defaults on the host."""
        dumped = self.model_dump()
        return {prefix + name: dumped[name] for name in type(self).model_fields if name in self.model_fields_set}


class NoSettings(Settings):
    pass


@dataclass(frozen=True)
class Placement:
    """A role the stack file gives hosts (``hastack:roles.<role>``)."""

    short_name: str  # host names: <stack>-<short_name><n>
    first_address: int  # the role's block in the subnet starts here; it holds max_count hosts
    min_count: int
    max_count: int
    count_rule: str  # the rule in words, for error messages
    data_volume: bool = False  # a Hetzner volume for its data (protected, backed up)
    floating_ip: bool = False  # its hosts share the stack's floating IP; the first holds it at creation


@dataclass(frozen=True)
class AfterRoles:
    """What a role's after-roles step gets: its hosts' data and a root shell on each."""

    hosts: Mapping[str, Mapping[str, Any]]  # name -> pyinfra host data, of the hosts running the role
    run: Callable[[str, str, float], tuple[bool, str, str]]  # (host, command, timeout) -> (ok, stdout, stderr)
    log: Callable[[str], None]
    # what the role's look-ahead found while the roles ran; given only when no operation changed
    # anything on the role's hosts (what it read still holds), None otherwise
    looked: Any = None


def holds_on_each(run: Callable[[str, str, float], tuple[bool, str, str]], names: Iterable[str],
                  condition: str) -> dict[str, bool]:
    """Whether the shell ``condition`` holds on each of ``names``, asked of all at once, each over its host's
    own connection. A converge's steps read their hosts' marks this way: one round trip for all, not one per
    host."""
    from gevent.pool import Pool  # the converge's connections are gevent's (hastack.launch)

    names = list(names)
    answers = Pool(len(names) or 1).map(lambda name: run(name, f"{condition} && echo yes || true", 30), names)
    return {name: out.strip() == "yes" for name, (_, out, _) in zip(names, answers, strict=True)}


class AfterRolesError(RuntimeError):
    """The step refused or failed; the message says why (the converge reports it)."""


@dataclass(frozen=True)
class Role:
    name: str
    ports: tuple[Port, ...] = ()
    settings: type[Settings] = NoSettings
    settings_prefix: str = ""
    # host data defaults that are not stack settings (what a provider may supply, e.g. an API endpoint)
    provided_defaults: Mapping[str, Any] = field(default_factory=dict)
    placement: Placement | None = None  # None: runs beside a host role (``runs_on`` says where)
    # a top-level block of the stack file owned by the role: (key, model), e.g. ("cassandra", RingConfig)
    section: tuple[str, type[Section]] | None = None
    check: Callable[[StackConfig], Iterable[str]] | None = None  # problems spanning several keys
    cluster: Callable[[tuple[Host, ...], StackConfig], Any] | None = None  # the role's cluster facts
    runs_on: Callable[[Topology, Host], bool] | None = None
    host_data: Callable[[Topology, Host], Mapping[str, Any]] | None = None
    # host data from a deployed stack's outputs (hastack.outputs): (outputs, secrets, host data) -> data;
    # the secrets a role's hosts need (derived from ``seed``, ``failover_token``, ...), peers' server ids
    from_outputs: Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], Mapping[str, Any]] | None = None
    # the backups its hosts produce (the backup role runs where a role names some)
    backups: tuple[str, ...] = ()
    # kernel settings a host needs that a container cannot set (the lab's host provides them):
    # sysctl name -> the host data key giving the minimum
    host_kernel: Mapping[str, str] = field(default_factory=dict)
    after_roles: str | None = None  # "module:function" taking AfterRoles, yielding (host, change)
    # its step needs only its own hosts to have run their operations: it starts as soon as they have,
    # while other roles' hosts still run theirs (hastack.converge.StepsAhead)
    after_roles_alone: bool = False
    # "module:function" taking AfterRoles (``run`` only reads), run while the roles are prepared and run:
    # a slow read the after-roles step needs (the ring's status), handed to it as ``looked``
    after_roles_look: str | None = None
    cli: str | None = None  # "module:attribute": a typer app, mounted as `hastack <role> ...`
    # "module:function" restoring the role's data from the backups (roles.backup.restore.Restore -> report);
    # `hastack dr` calls it, and it is the command `hastack restore <role>`
    restore: str | None = None
    restore_cli: str | None = None  # "module:function": the typer command `hastack restore <role>`
    # more command groups it brings: name -> "module:attribute" (a typer app), `hastack <name> ...`
    commands: Mapping[str, str] = field(default_factory=dict)

    @property
    def defaults(self) -> dict[str, Any]:
        return {**self.provided_defaults, **self.settings.data_defaults(self.settings_prefix)}

    def after_roles_step(self) -> Callable[[AfterRoles], Iterable[tuple[str, str]]] | None:
        return _load(self.after_roles) if self.after_roles else None

    def after_roles_look_step(self) -> Callable[[AfterRoles], Any] | None:
        return _load(self.after_roles_look) if self.after_roles_look else None

    def cli_app(self):
        return _load(self.cli) if self.cli else None

    def restore_step(self):
        return _load(self.restore) if self.restore else None

    def command_groups(self) -> dict:
        return {name: _load(ref) for name, ref in self.commands.items()}

    def restore_command(self):
        return _load(self.restore_cli) if self.restore_cli else None


def _load(ref: str):
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def merge_data(into: dict[str, Any], more: Mapping[str, Any]) -> None:
    """Add ``more`` to host data; two roles giving parts of one mapping (passwords) are combined."""
    for key, value in more.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), Mapping):
            into[key] = {**into[key], **value}
        else:
            into[key] = value


def config_entries(value: Mapping[str, Any], key_pattern: str, what: str) -> dict[str, Any]:
    """Keys and values that become lines of a configuration file: one line each, nothing injected."""
    import re

    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not re.match(key_pattern, key):
            raise ValueError(f"{key!r} is not {what}")
        if not isinstance(item, (str, int)) or isinstance(item, bool) or any(c in str(item) for c in "\n\r#"):
            raise ValueError(f"{key}: {item!r} must be a number or a one-line string without '#'")
        out[key] = item
    return out
