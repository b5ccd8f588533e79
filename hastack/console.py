"""What every `hastack` command shares: the consoles, errors, the stack options,
and the hosts of a stack as pyinfra host data (the lab's or a deployed stack's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

StackOption = typer.Option("prod", "--stack", "-s", help="stack name: stacks/Pulumi.<stack>.yaml")
OutputsOption = typer.Option(None, help="stack outputs JSON (default: ask `pulumi stack output`)")


def fail(message: str, code: int = 2) -> NoReturn:
    # plain text: a message may hold brackets ([a-z_]..., [0]) that markup would swallow
    err_console.print(Text.assemble(("error: ", "red"), str(message)), highlight=False)
    raise typer.Exit(code)


def say(message: str) -> None:
    console.print(Text.assemble(("· ", "dim"), message), highlight=False)


def open_lab(stack: str):
    from hastack.lab import Lab, LabError
    from hastack.model import TopologyError
    from hastack.stackfile import StackFileError

    try:
        return Lab(stack, log=say)
    except (TopologyError, StackFileError, LabError, ValueError) as e:
        fail(str(e))


def stack_outputs_of(stack: str, outputs: Path | None) -> dict:
    """A stack's outputs (hastack.outputs): the lab's, a JSON file, or `pulumi stack output`."""
    from hastack.inventory import InventoryError, stack_outputs
    from hastack.lab.layout import is_lab_stack
    from hastack.stackfile import StackFileError

    try:
        if is_lab_stack(stack):
            return open_lab(stack).stack_outputs()
        return json.loads(outputs.read_text()) if outputs else stack_outputs(stack)
    except (StackFileError, InventoryError, OSError, ValueError) as e:
        fail(str(e))


def stack_entries(stack: str, outputs: Path | None) -> dict:
    """Every host of a stack as pyinfra host data: the lab's machines, or a deployed stack's outputs,
    connected to as HASTACK_SSH_USER when it is set (as the converge at the end of `pulumi up`
    does: a CI pipeline's own admin), else as the stack's first admin."""
    import os

    from hastack.inventory import InventoryError, host_entries, stack_outputs
    from hastack.model import NAMESPACE
    from hastack.stackfile import StackFileError, read_stack_file

    try:
        flat, _ = read_stack_file(stack)
    except StackFileError as e:
        fail(str(e))
    if flat.get(f"{NAMESPACE}:provider") == "lab":
        return open_lab(stack).inventory_entries()
    try:
        data = json.loads(outputs.read_text()) if outputs else stack_outputs(stack)
        return host_entries(data, ssh_user=os.environ.get("HASTACK_SSH_USER") or None)
    except (InventoryError, OSError, ValueError) as e:
        fail(str(e))
