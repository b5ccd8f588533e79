"""The topology model: stack config in, hosts and cluster facts out.

Pure Python (no Pulumi, no pyinfra). Pulumi, the lab and the inventory all
read it; nothing re-derives hosts, addresses or cluster facts elsewhere.
A config is refused before any resource or connection is made, with every
problem at once, each naming the key, the value and what would be valid.

  schema      the stack file's keys and their rules (roles add theirs)
  allocation  host names, locations, addresses
  firewall    rules from the ports roles declare
  topology    the model the rest of hastack reads
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from pydantic import ValidationError

from hastack.model.allocation import Host, allocate
from hastack.model.firewall import Rule
from hastack.model.schema import (LOCATIONS, NAMESPACE, REQUIRED_SECRETS, SECRET_KEYS, SERVER_TYPES, NAME_RE,
                                  how_to_set, problems_of, stack_config_model)
from hastack.model.topology import Admin, Topology
from roles import all_roles

__all__ = ["Admin", "Host", "LOCATIONS", "NAMESPACE", "REQUIRED_SECRETS", "Rule", "SERVER_TYPES", "Topology",
           "TopologyError", "config_from_pulumi", "load"]


class TopologyError(ValueError):
    """A stack config that must not be built; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid stack config:\n" + "\n".join(f"  - {p}" for p in problems))


def config_from_pulumi(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Pulumi's flat ``namespace:key`` map (values JSON-encoded) -> this model's keys.

    Keys of other namespaces (``hcloud:token``, ``aws:region``) are left out.
    """
    out: dict[str, Any] = {}
    for key, value in flat.items():
        ns, _, name = key.partition(":")
        if ns != NAMESPACE:
            continue
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[name] = value
    return out


def load(stack: str, config: Mapping[str, Any], secret_keys: set[str] | frozenset[str] = frozenset(),
         require_secrets: bool = True) -> Topology:
    """Validate a stack's config (keys without the ``hastack:`` prefix) and build its topology.

    ``secret_keys`` names the secrets set for the stack (``hastack:failoverToken``);
    with ``require_secrets=False`` (offline plan) missing ones are recorded, not fatal.
    """
    problems: list[str] = []
    if not NAME_RE.match(stack or ""):
        problems.append(f"stack name {stack!r}: must be lowercase letters, digits and '-', starting with a letter")

    raw = dict(config)
    for key in SECRET_KEYS:
        name = key.partition(":")[2]
        if name in raw:
            raw.pop(name)
            problems.append(f"{key}: is stored in plain text; remove it and run `pulumi config set --secret {key} <value>`")

    try:
        cfg = stack_config_model().model_validate(raw, context={"stack": stack})
    except ValidationError as err:
        raise TopologyError(problems + problems_of(err)) from None

    missing = tuple(k for k in REQUIRED_SECRETS.get(cfg.provider, ()) if k not in secret_keys)
    if missing and require_secrets:
        for key in missing:
            problems.append(f"{key}: required secret is not set; run `{how_to_set(key, stack)}`")
    if problems:
        raise TopologyError(problems)

    hosts = allocate(stack, cfg)
    clusters = {r.name: r.cluster(hosts, cfg) for r in all_roles() if r.cluster is not None}
    return Topology(stack=stack, config=cfg, hosts=hosts, clusters=clusters, secrets_missing=missing)
