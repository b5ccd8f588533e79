"""`pulumi up` ends with a converge: a dynamic resource that runs the pyinfra roles.

It is created once the servers and the floating IP exist, and runs again
whenever the hosts' data, a secret (the seed, a key, the CA), the roles and
templates or the hastack/ code a converge runs change (a digest of all of
them, itself a secret), so one `pulumi up` on a fresh stack ends with a
configured stack, and a rotated secret reaches every host.
The converge is the same entry point as `hastack converge`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

PROJECT_DIR = Path(__file__).resolve().parent.parent.parent
CODE_DIRS = ("roles", "templates")


_LIST_MODULES = """
import importlib, sys
from pathlib import Path
from roles import all_roles
import hastack.converge, hastack.inventory
for r in all_roles():
    try:
        importlib.import_module(f"roles.{r.name}.deploy")
    except ModuleNotFoundError as e:
        if e.name != f"roles.{r.name}.deploy":
            raise
package = Path("hastack").resolve()
for m in list(sys.modules.values()):
    f = Path(getattr(m, "__file__", None) or "/").resolve()
    if f.is_relative_to(package):
        print(f.relative_to(package))
"""


def converge_modules(root: Path = PROJECT_DIR) -> list[Path]:
    """The hastack/ modules a converge runs (the converge, the inventory, the CA, what the roles import),
    as a fresh interpreter imports them: hastack/cli.py or the lab's tooling changing alone changes
    nothing on a host."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _LIST_MODULES], cwd=PROJECT_DIR, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)}, check=True)
    return sorted(root / "hastack" / line for line in proc.stdout.split())


def code_digest(root: Path = PROJECT_DIR, modules: list[Path] | None = None) -> str:
    """A digest of every role and template file and of the hastack/ modules the converge runs: a change
    in any of them means a new converge."""
    h = hashlib.sha256()
    paths = [p for d in CODE_DIRS for p in sorted((root / d).rglob("*"))]
    paths += converge_modules(root) if modules is None else modules
    for path in paths:
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def data_digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def run_converge(props: dict[str, Any]) -> dict[str, Any]:
    from hastack.converge import converge
    from hastack.inventory import host_entries

    entries = host_entries(props["outputs"], ssh_user=props.get("ssh_user") or None)
    for data in entries.values():
        data.update(props.get("connection") or {})
    report = converge(entries)
    if not report.ok:
        raise RuntimeError(report.failure())
    return {"changes": report.changes, "seconds": round(report.seconds, 1),
            "hosts": {n: r.changed for n, r in report.hosts.items()}}


class ConvergeProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        return CreateResult(id_=f"converge-{props['stack']}", outs={**props, "result": run_converge(props)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [k for k in ("digest", "ssh_user") if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, "result": run_converge(news)})


class Converge(pulumi.dynamic.Resource):
    """Runs the converge over the stack's hosts (secrets reach it as secret inputs)."""

    def __init__(self, name: str, stack: str, outputs: pulumi.Input[dict], digest: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__(ConvergeProvider(), name, {
            "stack": stack,
            "outputs": outputs,
            "digest": digest,
            # Who to connect as: the operator's own admin name, else the first admin.
            "ssh_user": os.environ.get("HASTACK_SSH_USER", ""),
            "result": None,
        }, opts)
