"""The `hastack` command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from hastack.stackfile import StackFileError, available_stacks, load_stack
from hastack.topology import TopologyError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Provision and run a highly available web stack on Hetzner Cloud (or the local lab).")
console = Console()
err_console = Console(stderr=True)

StackOption = typer.Option("prod", "--stack", "-s", help="stack name: stacks/Pulumi.<stack>.yaml")


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    raise typer.Exit(code)


@app.command()
def validate(stack: str = StackOption) -> None:
    """Check a stack's config and print its hosts; nothing is created."""
    try:
        topo = load_stack(stack)
    except (TopologyError, StackFileError) as e:
        _fail(str(e))
    table = Table(title=f"stack {stack}: {len(topo.hosts)} hosts")
    for col in ("host", "role", "location", "server type", "private IP"):
        table.add_column(col)
    for h in topo.hosts:
        table.add_row(h.name, h.role, h.location, h.server_type, h.private_ip)
    console.print(table)
    for key in topo.secrets_missing:
        console.print(f"[yellow]warning[/yellow]: secret {key} not set (`pulumi config set --secret {key} ...`)")


@app.command()
def plan(stack: str = StackOption) -> None:
    """Print every resource `pulumi up` would create, and the firewall rules. No cloud, no Pulumi CLI."""
    from hastack.plan import make_plan, print_plan

    try:
        result = make_plan(stack)
    except (TopologyError, StackFileError, ValueError) as e:
        _fail(str(e))
    print_plan(result, console)


@app.command()
def stacks() -> None:
    """List the stacks in stacks/."""
    for name in available_stacks():
        console.print(name)


@app.command()
def inventory(outputs: Path = typer.Argument(..., help="JSON from `pulumi stack output --json --show-secrets`")) -> None:
    """Show the pyinfra inventory a stack's outputs give (secrets are not printed)."""
    from hastack.inventory import InventoryError, host_entries

    try:
        entries = host_entries(json.loads(outputs.read_text()))
    except (InventoryError, ValueError, OSError) as e:
        _fail(str(e))
    table = Table(title="inventory")
    for col in ("host", "connect to", "as", "groups", "secrets"):
        table.add_column(col)
    for name, data in entries.items():
        secrets = [k for k in ("failover_token", "backup_credentials") if k in data]
        table.add_row(name, data["ssh_hostname"], data["ssh_user"], ", ".join(data["groups"]), ", ".join(secrets) or "-")
    console.print(table)


if __name__ == "__main__":
    app()
