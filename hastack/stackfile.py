"""Read a stack's config straight from stacks/Pulumi.<stack>.yaml.

Used where there is no Pulumi engine (offline plan, lab, converge). Secret
values stay encrypted in the file; only their presence is reported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hastack.model import NAMESPACE, Topology, load

PROJECT_DIR = Path(__file__).resolve().parent.parent
STACKS_DIR = PROJECT_DIR / "stacks"


class StackFileError(ValueError):
    pass


def stack_path(stack: str, stacks_dir: Path = STACKS_DIR) -> Path:
    return stacks_dir / f"Pulumi.{stack}.yaml"


def available_stacks(stacks_dir: Path = STACKS_DIR) -> list[str]:
    return sorted(p.name[len("Pulumi."):-len(".yaml")] for p in stacks_dir.glob("Pulumi.*.yaml"))


def read_stack_file(stack: str, stacks_dir: Path = STACKS_DIR) -> tuple[dict[str, Any], set[str]]:
    """Return (full flat config map, keys whose value is a Pulumi secret)."""
    path = stack_path(stack, stacks_dir)
    if not path.exists():
        raise StackFileError(f"no stack file {path}; stacks here: {', '.join(available_stacks(stacks_dir)) or 'none'}")
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise StackFileError(f"{path}: expected a mapping with a 'config' key")
    flat = doc.get("config") or {}
    if not isinstance(flat, dict):
        raise StackFileError(f"{path}: 'config' must be a mapping of namespace:key to value")
    secrets = {k for k, v in flat.items() if isinstance(v, dict) and set(v) == {"secure"}}
    return flat, secrets


def hastack_config(flat: dict[str, Any]) -> dict[str, Any]:
    """The ``hastack:`` keys, prefix removed, secrets left out."""
    out = {}
    for key, value in flat.items():
        ns, _, name = key.partition(":")
        if ns == NAMESPACE and not (isinstance(value, dict) and set(value) == {"secure"}):
            out[name] = value
    return out


def load_stack(stack: str, require_secrets: bool = False, stacks_dir: Path = STACKS_DIR) -> Topology:
    flat, secrets = read_stack_file(stack, stacks_dir)
    return load(stack, hastack_config(flat), secret_keys=secrets, require_secrets=require_secrets)
