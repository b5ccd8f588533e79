"""`hastack cassandra ...`: ring operations an operator starts (growing, replacing
and rolling restarts are the converge's)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from hastack.console import OutputsOption, StackOption, console, fail, say, stack_entries

app = typer.Typer(help="Cassandra ring operations (growing, replacing and restarts are done by the converge).",
                  no_args_is_help=True)


def _ring(stack: str, outputs: Path | None):
    from hastack.converge import connected

    entries = {n: d for n, d in stack_entries(stack, outputs).items() if "cassandra" in d.get("groups", [])}
    if not entries:
        fail(f"stack {stack!r} has no Cassandra nodes")
    return entries, connected(entries)


@app.command("status")
def status(stack: str = StackOption, outputs: Path = OutputsOption) -> None:
    """`nodetool status` as the first running node sees the ring."""
    from roles.cassandra.ring import Ring

    entries, conn = _ring(stack, outputs)
    first = next(iter(entries.values()))
    with conn as run:
        via, ring = Ring(dict(first["cassandra_nodes"]), run).view()
    if via is None:
        fail("no Cassandra node is running", code=1)
    table = Table(title=f"ring as {via} sees it")
    for col in ("state", "address", "host id", "rack"):
        table.add_column(col)
    for m in ring.values():
        table.add_row(m.state, m.address, m.host_id, m.rack)
    console.print(table)
    if any(m.state != "UN" for m in ring.values()):
        raise typer.Exit(1)


@app.command("decommission")
def decommission(host: str, stack: str = StackOption, outputs: Path = OutputsOption) -> None:
    """Stream a node's data to the others and take it out of the ring (before removing it from the config)."""
    from roles.cassandra.ring import Ring, RingError

    entries, conn = _ring(stack, outputs)
    if host not in entries:
        fail(f"{host!r} is not a Cassandra node of {stack!r}; nodes: {', '.join(entries)}")
    data = entries[host]
    with conn as run:
        try:
            Ring(dict(data["cassandra_nodes"]), run, log=say).decommission(host, int(data["cassandra_replication_factor"]))
        except RingError as e:
            fail(str(e), code=1)
    console.print(f"{host} left the ring and is stopped; now remove it from the stack's config")
