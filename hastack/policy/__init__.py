"""hastack's invariants as one rule set, served through two front doors.

- the policy pack (``policy/``, pulumi-policy): every ``pulumi preview`` and
  ``pulumi up`` with ``--policy-pack policy/`` (hastack.policy.pack adapts
  pulumi-policy's arguments);
- ``hastack plan``: the same rules on the offline recording of the program
  (hastack.recording), no cloud and no Pulumi CLI; a violation fails the plan.

Rules see resources in one neutral shape (``Resource``): Pulumi type and name,
properties (camelCase, as the engine names them), the options ``protect`` and
``ignore_changes``, and which resources each property is computed from
(``property_dependencies``: how a bucket's versioning finds its bucket, a server
its placement group). A resource rule looks at one resource at a time (the pack
runs it before the resource is created or changed); a stack rule sees every
resource at once, to relate one to another.

What a rule cannot take from the resources comes from the topology model
(``StackFacts``): the admin networks (``hastack:adminCidrs``) and which roles
keep data (the roles whose placement has a data volume).

A violation names its rule, the resource (type and name), what is wrong and
what would be valid. The rules themselves are in hastack.policy.rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from hastack.model import Topology
    from hastack.recording import Recording


@dataclass(frozen=True)
class Resource:
    """A resource as every rule sees it, whichever front door it came through."""

    type: str
    name: str
    props: Mapping[str, Any] = field(default_factory=dict)
    urn: str = ""
    protect: bool = False
    ignore_changes: tuple[str, ...] = ()
    # property -> URNs of the resources its value is computed from
    property_dependencies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.urn:  # a resource made by hand (tests): a URN of the same shape as the engine's
            object.__setattr__(self, "urn", f"urn:pulumi:stack::hastack::{self.type}::{self.name}")

    def get(self, prop: str, default: Any = None) -> Any:
        return self.props.get(prop, default)

    def depends_on(self, prop: str) -> tuple[str, ...]:
        return tuple(self.property_dependencies.get(prop, ()))

    def __str__(self) -> str:
        return f"{self.type} {self.name!r}"


@dataclass(frozen=True)
class Violation:
    rule: str
    resource_type: str
    resource_name: str
    urn: str
    message: str  # what is wrong, and what would be valid

    @property
    def resource(self) -> str:
        return f"{self.resource_type} {self.resource_name!r}"

    def __str__(self) -> str:
        return f"[{self.rule}] {self.resource}: {self.message}"


def data_roles() -> frozenset[str]:
    """The roles whose hosts keep data on a volume (MariaDB, Cassandra), from the roles' own placement."""
    from roles import all_roles

    return frozenset(r.name for r in all_roles() if r.placement is not None and r.placement.data_volume)


@dataclass(frozen=True)
class StackFacts:
    """What the rules take from the topology model rather than from the resources."""

    admin_cidrs: tuple[str, ...]
    data_roles: frozenset[str] = field(default_factory=data_roles)

    @classmethod
    def of(cls, topo: Topology) -> StackFacts:
        return cls(admin_cidrs=tuple(topo.admin_cidrs))


ResourceCheck = Callable[[Resource, StackFacts], Iterable[str]]
StackCheck = Callable[[Sequence[Resource], StackFacts], Iterable[tuple[Resource, str]]]


@dataclass(frozen=True)
class ResourceRule:
    """A rule over one resource of the given types: ``check`` yields one problem per thing wrong."""

    name: str
    description: str
    types: tuple[str, ...]
    check: ResourceCheck

    def applies_to(self, resource: Resource) -> bool:
        return resource.type in self.types

    def violations(self, resource: Resource, facts: StackFacts) -> list[Violation]:
        if not self.applies_to(resource):
            return []
        return [Violation(self.name, resource.type, resource.name, resource.urn, problem)
                for problem in self.check(resource, facts)]


@dataclass(frozen=True)
class StackRule:
    """A rule over every resource of the stack: ``check`` yields (resource, problem) pairs."""

    name: str
    description: str
    check: StackCheck

    def violations(self, resources: Sequence[Resource], facts: StackFacts) -> list[Violation]:
        return [Violation(self.name, r.type, r.name, r.urn, problem) for r, problem in self.check(resources, facts)]


Rule = ResourceRule | StackRule


def all_rules() -> tuple[Rule, ...]:
    from hastack.policy.rules import RULES

    return tuple(RULES)


def evaluate(resources: Sequence[Resource], facts: StackFacts,
             rules: Sequence[Rule] | None = None) -> list[Violation]:
    """Every violation of ``rules`` (default: all of them) among ``resources``: rule by rule, and
    by resource type and name within a rule."""
    found: list[Violation] = []
    for rule in all_rules() if rules is None else rules:
        if isinstance(rule, ResourceRule):
            of_rule = [v for resource in resources for v in rule.violations(resource, facts)]
        else:
            of_rule = rule.violations(resources, facts)
        found.extend(sorted(of_rule, key=lambda v: (v.resource_type, v.resource_name)))
    return found


def from_recording(rec: Recording) -> list[Resource]:
    """The resources of an offline run of the program (hastack.recording), in the rules' shape."""
    return [Resource(type=r.type, name=r.name, props=r.inputs, urn=r.urn, protect=r.protect,
                     ignore_changes=tuple(r.ignore_changes),
                     property_dependencies={k: tuple(v) for k, v in r.property_dependencies.items()})
            for r in rec.resources]
