"""The stack file's schema: every key, its type and its rule, checked where it is declared.

Built from the roles: ``hastack:roles`` has one entry per role with hosts (its
count rule from the role), ``hastack:settings`` one block per role (the
role's settings model), and a role may own a top-level block
(``hastack:cassandra``, ``hastack:backup``). A config is checked as a whole:
every problem is reported at once, naming the key, the value and what would
be valid.
"""

from __future__ import annotations

import ipaddress
import re
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator

from hastack import validators
from hastack.role import Section
from roles import all_roles, role

NAMESPACE = "hastack"

# Hetzner Cloud locations and the network zone each belongs to. A private
# network's subnet lives in one zone, so a stack's locations must share it.
LOCATIONS = {
    "fsn1": "eu-central",
    "nbg1": "eu-central",
    "hel1": "eu-central",
    "ash": "us-east",
    "hil": "us-west",
    "sin": "ap-southeast",
}

SERVER_TYPES = frozenset(
    "cx22 cx32 cx42 cx52 cx23 cx33 cx43 cx53 "
    "cpx11 cpx21 cpx31 cpx41 cpx51 cpx12 cpx22 cpx32 cpx42 cpx52 cpx62 "
    "cax11 cax21 cax31 cax41 "
    "ccx13 ccx23 ccx33 ccx43 ccx53 ccx63".split()
)

PROVIDERS = ("hetzner", "lab")

# Secrets a real (Hetzner) stack cannot run without. The lab makes its own.
REQUIRED_SECRETS = {
    "hetzner": ("hastack:failoverToken", "hastack:secretSeed", "hastack:ca"),
    "lab": (),
}
SECRET_KEYS = frozenset(k for keys in REQUIRED_SECRETS.values() for k in keys)


def how_to_set(key: str, stack: str) -> str:
    """The command that sets a required secret."""
    return f"hastack ca store --stack {stack}" if key == "hastack:ca" else f"pulumi config set --secret {key} <value>"

RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# a stack name, or a Pulumi stack reference: [org/][project/]stack
STACK_REF_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+){0,2}$")
RESERVED_USERS = frozenset("root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc nobody "
                           "sshd systemd-network systemd-resolve messagebus _apt mysql redis cassandra prometheus "
                           "haproxy".split())


def _private_network(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise ValueError(f"not a network in CIDR form ({e}); e.g. 10.20.0.0/16") from None
    if net.version != 4 or not any(net.subnet_of(r) for r in RFC1918):
        raise ValueError("not a private range; use one inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    return value


def _location(value: str) -> str:
    if value not in LOCATIONS:
        raise ValueError(f"unknown location; valid: {', '.join(LOCATIONS)}")
    return value


def _admin_cidr(value: str) -> str:
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as e:
        raise ValueError(f"not a network in CIDR form ({e}); e.g. 203.0.113.0/24") from None
    if net.prefixlen == 0:
        raise ValueError("would open SSH to the whole internet; list your office or VPN ranges instead, e.g. 203.0.113.0/24")
    return value


def _refused_by(problem_of):
    """A validator from a hastack.validators check: its problem text becomes the error."""
    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(problem)
        return value
    return AfterValidator(check)


Location = Annotated[str, AfterValidator(_location)]
AdminCidr = Annotated[str, AfterValidator(_admin_cidr)]
SshKey = Annotated[str, _refused_by(validators.ssh_public_key_problem)]
Image = Annotated[str, _refused_by(validators.image_problem)]
Domain = Annotated[str, _refused_by(validators.domain_problem)]


def _own_keys(problems: list[str]) -> ValueError:
    """Problems of a rule across keys: each line already names its keys (hastack:...)."""
    return ValueError("\n".join(problems))


class AdminConfig(Section):
    name: str
    ssh_key: SshKey

    @field_validator("name")
    @classmethod
    def _user(cls, value: str) -> str:
        if not USER_RE.match(value) or value in RESERVED_USERS:
            raise ValueError("must be a Linux user name ([a-z_][a-z0-9_-]*, max 32) and not a system account")
        return value


class NetworkConfig(Section):
    ip_range: str = "10.20.0.0/16"
    subnet: str = "10.20.1.0/24"

    _private = field_validator("ip_range", "subnet")(classmethod(lambda cls, v: _private_network(v)))

    @model_validator(mode="after")
    def _subnet_in_range(self):
        rng, sub = ipaddress.ip_network(self.ip_range), ipaddress.ip_network(self.subnet)
        if not sub.subnet_of(rng):
            raise _own_keys([f"{NAMESPACE}:network.subnet = {self.subnet!r}: must lie inside {NAMESPACE}:network.ipRange "
                             f"({self.ip_range})"])
        if sub.prefixlen > 24:
            raise _own_keys([f"{NAMESPACE}:network.subnet = {self.subnet!r}: too small; use a /24 or larger "
                             "(role address blocks need 160 addresses)"])
        return self


class LabConfig(Section):
    public_range: str = "198.18.0.0/24"
    floating_ip: str = "198.18.0.100"

    @model_validator(mode="after")
    def _ip_in_range(self):
        key = f"{NAMESPACE}:lab"
        try:
            pub = ipaddress.ip_network(self.public_range, strict=True)
        except ValueError as e:
            raise _own_keys([f"{key}.publicRange = {self.public_range!r}: not a network in CIDR form ({e})"]) from None
        try:
            fip = ipaddress.ip_address(self.floating_ip)
        except ValueError:
            raise _own_keys([f"{key}.floatingIp = {self.floating_ip!r}: not an IPv4 address"]) from None
        if fip not in pub:
            raise _own_keys([f"{key}.floatingIp = {self.floating_ip!r}: must lie inside {key}.publicRange ({pub})"])
        return self


class RoleConfig(Section):
    """hastack:roles.<role>; each role gets a subclass carrying its count rule."""

    count: int
    server_type: str
    volume_size: int | None = Field(default=None, description="GB, roles with a data volume only")
    names: list[str] | None = None

    @field_validator("server_type")
    @classmethod
    def _server_type(cls, value: str) -> str:
        if value not in SERVER_TYPES:
            raise ValueError(f"unknown server type; valid: {', '.join(sorted(SERVER_TYPES))}")
        return value

    @field_validator("names")
    @classmethod
    def _names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if not NAME_RE.match(name):
                raise ValueError(f"{name!r} must be a hostname (lowercase letters, digits, '-', starting with a letter)")
        return value


def _role_config(name: str) -> type[RoleConfig]:
    placement = role(name).placement

    def count(cls, value: int) -> int:
        if not placement.min_count <= value <= placement.max_count:
            raise ValueError(f"must be {placement.count_rule}")
        return value

    def volume(cls, value: int | None) -> int | None:
        if placement.data_volume and (value is None or not 10 <= value <= 10240):
            raise ValueError(f"{name} keeps its data on a volume: give 10 to 10240 GB")
        if not placement.data_volume and value is not None:
            data_roles = [r.name for r in all_roles() if r.placement and r.placement.data_volume]
            raise ValueError(f"only {' and '.join(data_roles)} get data volumes")
        return value

    def names_match_count(self):
        if self.names is not None and len(self.names) != self.count:
            raise _own_keys([f"{NAMESPACE}:roles.{name}.names = {self.names}: gives {len(self.names)} names "
                             f"for count {self.count}"])
        return self

    return create_model(
        f"RoleConfig_{name}", __base__=RoleConfig,
        __validators__={
            "count_rule": field_validator("count")(classmethod(count)),
            # a data role without volumeSize is refused too, so the default must be checked
            "volume_rule": field_validator("volume_size", mode="after")(classmethod(volume)),
            "names_rule": model_validator(mode="after")(names_match_count),
        },
        volume_size=(int | None, Field(default=None, validate_default=True)),
    )


class StackConfigBase(Section):
    provider: Literal["hetzner", "lab"] = "hetzner"
    locations: list[Location]
    network: NetworkConfig = NetworkConfig()
    admins: list[AdminConfig] = []
    admin_cidrs: list[AdminCidr] = []
    image: Image = "debian-12"
    domain: Domain | None = None
    lab: LabConfig | None = None
    converge: bool = True
    restore_from: str | None = None

    @field_validator("locations")
    @classmethod
    def _locations(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one Hetzner location, e.g. [nbg1, fsn1]")
        if len(set(value)) != len(value):
            raise ValueError("a location is listed twice")
        zones = {LOCATIONS[loc] for loc in value}
        if len(zones) > 1:
            raise ValueError(f"locations span network zones {sorted(zones)}; one private network needs them all in "
                             "one zone (e.g. fsn1, nbg1, hel1 are eu-central)")
        return value

    @field_validator("admins")
    @classmethod
    def _admins(cls, value: list[AdminConfig]) -> list[AdminConfig]:
        if not value:
            raise ValueError("at least one admin with a name and an SSH public key is required (SSH is key-only)")
        names = [a.name for a in value]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"duplicate admin name {', '.join(twice)}")
        return value

    @field_validator("admin_cidrs")
    @classmethod
    def _admin_cidrs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list the networks admins connect from (office, VPN), e.g. [203.0.113.0/24]")
        return value

    @field_validator("restore_from")
    @classmethod
    def _restore_from(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        if not STACK_REF_RE.match(value):
            raise ValueError("must name a stack (e.g. prod) or a Pulumi stack reference (org/project/stack) "
                             "of letters, digits, '_', '.' and '-'")
        stack = (info.context or {}).get("stack")
        if stack is not None and value.rsplit("/", 1)[-1] == stack:
            raise ValueError(f"names this stack ({stack}); give the stack whose backups this one restores from, "
                             "e.g. prod")
        return value

    @model_validator(mode="after")
    def _across(self, info: ValidationInfo):
        ns = NAMESPACE
        problems = []
        if self.lab is not None:
            pub = ipaddress.ip_network(self.lab.public_range)
            for key, value in (("ipRange", self.network.ip_range), ("subnet", self.network.subnet)):
                if pub.overlaps(ipaddress.ip_network(value)):
                    problems.append(f"{ns}:lab.publicRange = {self.lab.public_range!r}: overlaps {ns}:network.{key} "
                                    f"({value}); choose ranges that do not overlap")
        elif self.provider == "lab":
            problems.append(f"{ns}:lab: required when {ns}:provider is 'lab' (give publicRange and floatingIp)")
        if self.provider == "lab" and self.restore_from is not None:
            problems.append(f"{ns}:restoreFrom = {self.restore_from!r}: not possible when {ns}:provider is 'lab' "
                            "(the lab has one bucket only, its own); remove the key")
        stack = (info.context or {}).get("stack", "stack")
        seen: dict[str, str] = {}
        for name in role_names():
            for host in host_names(stack, self, name):
                if host in seen:
                    problems.append(f"{ns}:roles.{name}.names: host name {host!r} is also used by role {seen[host]}; "
                                    "host names must be unique")
                seen[host] = name
        for r in all_roles():
            if r.check is not None:
                problems.extend(r.check(self))
        if problems:
            raise _own_keys(problems)
        return self

    def role_config(self, name: str) -> RoleConfig:
        return getattr(self.roles, name)

    @property
    def sections(self) -> dict[str, Section]:
        return {r.section[0]: getattr(self, r.section[0]) for r in all_roles() if r.section}


def role_names() -> tuple[str, ...]:
    return tuple(r.name for r in all_roles() if r.placement is not None)


def host_names(stack: str, cfg: StackConfigBase, name: str) -> list[str]:
    rc = getattr(cfg.roles, name)
    if rc.names:
        return list(rc.names)
    return [f"{stack}-{role(name).placement.short_name}{i}" for i in range(1, rc.count + 1)]


@cache
def stack_config_model() -> type[StackConfigBase]:
    """hastack:* as one model; the roles contribute their parts."""
    roles_model = create_model("Roles", __base__=Section, **{n: (_role_config(n), ...) for n in role_names()})
    settings_model = create_model("RoleSettings", __base__=Section,
                                  **{r.name: (r.settings, r.settings()) for r in all_roles()})
    sections = {r.section[0]: (r.section[1], r.section[1]()) for r in all_roles() if r.section}
    return create_model("StackConfig", __base__=StackConfigBase, roles=(roles_model, ...),
                        settings=(settings_model, settings_model()), **sections)


# ---------------------------------------------------------------- messages


def key_of(loc: tuple) -> str:
    key = NAMESPACE + ":"
    for i, part in enumerate(loc):
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key += ("." if i else "") + str(part)
    return key


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def problems_of(err: ValidationError) -> list[str]:
    """One line per problem: the key (camelCase, as in the stack file), the value, what would be valid."""
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = key_of(loc)
        kind = e["type"]
        if kind == "extra_forbidden" and loc[:-1] == ("roles",):
            problems.append(f"{key}: unknown role; valid roles: {', '.join(role_names())}")
        elif kind == "extra_forbidden":
            valid = valid_keys(loc[:-1])
            problems.append(f"{key}: unknown key; valid keys here: {', '.join(valid) if valid else 'none'}")
        elif kind == "missing":
            rule = ""
            if len(loc) == 2 and loc[0] == "roles":
                rule = f" (count: {role(loc[1]).placement.count_rule})"
            problems.append(f"{key}: required but not set{rule}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if msg.startswith(NAMESPACE + ":"):
                problems.extend(msg.split("\n"))  # a rule across keys: each line names its own keys
            elif isinstance(e.get("input"), dict):
                problems.append(f"{key}: {msg}")
            else:
                problems.append(f"{key} = {_short(e.get('input'))}: {msg}")
    return problems


def valid_keys(loc: tuple) -> list[str]:
    """The keys a block of the stack file accepts, camelCase as written there."""
    from pydantic import BaseModel

    model: Any = stack_config_model()
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(_snake(part))
        if field is None:
            return []
        candidates = [field.annotation, *getattr(field.annotation, "__args__", ())]
        for candidate in candidates:
            inner = getattr(candidate, "__args__", (None,))[0] if getattr(candidate, "__origin__", None) is list else candidate
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                model = inner
                break
        else:
            return []
    return [f.alias or n for n, f in model.model_fields.items()]


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()
