"""The rule set as a pulumi-policy pack: the adapter that ``policy/__main__.py`` serves.

Each resource rule becomes a ``ResourceValidationPolicy`` (run on a resource's
inputs before the engine creates or changes it), each stack rule a
``StackValidationPolicy`` (run on every resource of the stack once the preview
or update has them all); all are mandatory. pulumi-policy's arguments are turned
into the rules' ``Resource``: ``resource_type``, ``name``, ``urn``, ``props``
(kept as pulumi-policy's proxy, so a value unknown during a preview stops the
rule with pulumi-policy's "can't run during preview" instead of being judged),
``opts.protect``, ``opts.ignore_changes`` and, for stack rules,
``property_dependencies``.

The facts a rule needs from the topology (the admin networks) come from the
stack's config, which the Pulumi CLI hands to a policy pack as to the program.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any, Callable, Sequence

from pulumi_policy import (EnforcementLevel, Policy, PolicyResource, ReportViolation, ResourceValidationArgs,
                           ResourceValidationPolicy, StackValidationArgs, StackValidationPolicy)

from hastack.policy import Resource, ResourceRule, StackFacts, StackRule, Violation, all_rules

PACK_NAME = "hastack"


def resource_of(subject: ResourceValidationArgs | PolicyResource) -> Resource:
    """A resource as pulumi-policy hands it to a resource policy (ResourceValidationArgs) or to
    a stack policy (PolicyResource)."""
    deps = getattr(subject, "property_dependencies", None) or {}
    return Resource(
        type=subject.resource_type,
        name=subject.name,
        props=subject.props,
        urn=subject.urn,
        protect=bool(subject.opts.protect),
        ignore_changes=tuple(subject.opts.ignore_changes or ()),
        property_dependencies={prop: tuple(r.urn for r in targets) for prop, targets in deps.items()},
    )


def message_of(violation: Violation) -> str:
    """What the pack reports: Pulumi adds the policy's name and the resource's URN."""
    return f"{violation.resource}: {violation.message}"


def facts_from_config() -> StackFacts:
    """The stack's facts from its config as the engine gives it to the pack: the same
    topology model as the program's (hastack.model), secrets left out."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    from hastack import model

    flat = dict(runtime_config.CONFIG.get()) or runtime_config.get_config_env()
    plain = {k: v for k, v in flat.items()
             if k not in model.REQUIRED_SECRETS["hetzner"] and not runtime_config.is_config_secret(k)}
    stack = os.environ.get("PULUMI_STACK") or pulumi.get_stack()
    try:
        topo = model.load(stack, model.config_from_pulumi(plain), require_secrets=False)
    except model.TopologyError as err:
        raise RuntimeError(f"policy pack {PACK_NAME}: the config of stack {stack!r} gives no topology, so the "
                           f"admin networks are unknown ({err})") from None
    return StackFacts.of(topo)


def _resource_policy(rule: ResourceRule, facts_of: Callable[[], StackFacts]) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        if args.resource_type not in rule.types:
            return
        for violation in rule.violations(resource_of(args), facts_of()):
            report_violation(message_of(violation), None)

    return ResourceValidationPolicy(name=rule.name, description=rule.description, validate=validate,
                                    enforcement_level=EnforcementLevel.MANDATORY)


def _stack_policy(rule: StackRule, facts_of: Callable[[], StackFacts]) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [resource_of(r) for r in args.resources]
        for violation in rule.violations(resources, facts_of()):
            report_violation(message_of(violation), violation.urn)

    return StackValidationPolicy(name=rule.name, description=rule.description, validate=validate,
                                 enforcement_level=EnforcementLevel.MANDATORY)


def policies(facts_of: Callable[[], StackFacts] | None = None) -> list[Policy]:
    """One pulumi-policy policy per rule, in the rule set's order. ``facts_of`` gives the stack's
    facts (default: from the stack's config, read once, when a rule first needs them)."""
    facts_of = facts_of or cache(facts_from_config)
    return [_resource_policy(rule, facts_of) if isinstance(rule, ResourceRule) else _stack_policy(rule, facts_of)
            for rule in all_rules()]


def policy_pack_args(facts_of: Callable[[], StackFacts] | None = None) -> dict[str, Any]:
    """What ``policy/__main__.py`` gives ``PolicyPack`` (which serves the pack until the engine stops it)."""
    return {"name": PACK_NAME, "enforcement_level": EnforcementLevel.MANDATORY, "policies": policies(facts_of),
            "description": "hastack's invariants: protected data, a closed firewall, EU servers, "
                           "undeletable backups, a put-only backup writer"}


def violations_reported(policies_: Sequence[Policy], resources: Sequence[PolicyResource]) -> list[tuple[str, str]]:
    """(policy name, message) for every violation ``policies_`` report on ``resources``, called as
    the analyzer calls them (resource policies once per resource, stack policies once); for tests
    and for looking at the pack without the Pulumi CLI."""
    reported: list[tuple[str, str]] = []
    for policy in policies_:
        def report(message: str, urn: str | None = None, _name: str = policy.name) -> None:
            reported.append((_name, message))

        if isinstance(policy, ResourceValidationPolicy):
            for r in resources:
                policy.validate(ResourceValidationArgs(r.resource_type, r.props, r.urn, r.name, r.opts, r.provider),
                                report)
        else:
            policy.validate(StackValidationArgs(list(resources)), report)
    return reported
