"""`hastack backup ...`: what is in the bucket, and backups taken now."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from hastack.console import OutputsOption, StackOption, console, fail, say, stack_entries, stack_outputs_of
from roles.backup.agent import KINDS

app = typer.Typer(help="Backups in the stack's S3 bucket (taken daily, MariaDB binlogs continuously).",
                  no_args_is_help=True)


def reader_client(outputs: dict):
    """boto3 S3 client as the restore reader: it may list and get, nothing else."""
    import boto3

    secrets = outputs.get("secrets") or {}
    reader = secrets.get("restore_reader")
    if not reader or not outputs.get("backupBucket"):
        fail("the stack outputs have no backup bucket or reader identity (backupBucket, secrets.restore_reader)")
    endpoint, ca = None, None
    for host in outputs["hosts"].values():
        data = host.get("data") or {}
        endpoint, ca = data.get("backup_s3_endpoint") or endpoint, data.get("backup_s3_ca") or ca
    verify: str | bool = True
    if ca:
        path = Path.home() / ".cache" / "hastack" / "backup-s3-ca.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(ca)
        verify = str(path)
    return boto3.client("s3", region_name=outputs.get("backupRegion"), endpoint_url=endpoint, verify=verify,
                        aws_access_key_id=reader["access_key_id"], aws_secret_access_key=reader["secret_access_key"])


def list_backups(outputs: dict) -> list[dict]:
    """Every complete backup (its manifest exists), newest first: kind, host, time, size, key."""
    from roles.backup.restore import Source

    return [dict(b, time=b["time"].isoformat(timespec="seconds"))
            for b in reversed(Source("", outputs).backups())]


@app.command("list")
def list_cmd(stack: str = StackOption, outputs: Path = OutputsOption,
             as_json: bool = typer.Option(False, "--json", help="one JSON list, for scripts"),
             kind: str = typer.Option(None, help=f"only this kind: {', '.join(KINDS)}")) -> None:
    """Every backup in the bucket, newest first (the restore reader's view; no decryption)."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind {kind!r}: valid kinds: {', '.join(KINDS)}")
    backups = [b for b in list_backups(stack_outputs_of(stack, outputs)) if kind in (None, b["kind"])]
    if as_json:
        print(json.dumps(backups, indent=1))
        return
    table = Table(title=f"backups of {stack}: {len(backups)}")
    for col in ("kind", "host", "time (UTC)", "size", "object"):
        table.add_column(col)
    for b in backups:
        table.add_row(b["kind"], b["host"], b["time"], f"{b['size']:,}", b["key"])
    console.print(table)


def run_backups(stack: str, outputs: Path | None, kind: str | None = None) -> tuple[int, list[str]]:
    """Runs the backup jobs (of ``kind``, or all) on every host that has them and waits for each:
    (jobs run, one line per failed job). ValueError when no host takes them."""
    from hastack.converge import connected

    entries = {n: d for n, d in stack_entries(stack, outputs).items() if "backup" in d.get("roles", [])}
    jobs = [(name, k) for name, d in entries.items() for k in d["backup_kinds"] if kind in (None, k)]
    if not jobs:
        raise ValueError(f"no host of {stack!r} takes {kind or 'any'} backups")
    failed = []
    with connected({n: entries[n] for n in {j[0] for j in jobs}}) as run:
        for name, k in jobs:
            say(f"{name}: {k}")
            ok, _out, err = run(name, f"systemctl start hastack-backup@{k}.service", 7200)
            if not ok:
                _, journal, _ = run(name, f"journalctl -u hastack-backup@{k}.service -n 5 --no-pager -o cat", 30)
                failed.append(f"{name} {k}: {journal.strip() or err.strip()}")
    return len(jobs), failed


@app.command("now")
def now(stack: str = StackOption, outputs: Path = OutputsOption,
        kind: str = typer.Option(None, help=f"only this kind: {', '.join(KINDS)}")) -> None:
    """Run the backup jobs now on every host that has them, and wait for each."""
    if kind is not None and kind not in KINDS:
        fail(f"--kind {kind!r}: valid kinds: {', '.join(KINDS)}")
    try:
        jobs, failed = run_backups(stack, outputs, kind)
    except ValueError as e:
        fail(str(e))
    for line in failed:
        console.print(f"FAILED {line}", highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)
    console.print(f"{jobs} backup jobs done")


@app.command("verify")
def verify(stack: str = StackOption, outputs: Path = OutputsOption,
           as_json: bool = typer.Option(False, "--json", help="the result as JSON")) -> None:
    """Test-restore the newest MariaDB backup now (the weekly job on the monitoring host) and compare it."""
    from hastack.converge import connected
    from roles.backup.config import VERIFY_SERVICE
    from roles.backup.verify import RESULT

    entries = {n: d for n, d in stack_entries(stack, outputs).items() if d.get("backup_verifier")}
    if not entries:
        fail(f"stack {stack!r} has no host that verifies backups (a monitoring host and a MariaDB pair)")
    name = next(iter(entries))
    if not as_json:  # --json: standard output is the JSON alone
        say(f"{name}: restoring the newest MariaDB backup into a scratch server")
    with connected(entries) as run:
        run(name, f"systemctl start {Path(VERIFY_SERVICE).name}", 7200)
        ok, out, err = run(name, f"cat {RESULT}", 30)
    if not ok:
        fail(f"{name}: no result from the test restore: {err.strip()}", code=1)
    result = json.loads(out)
    if as_json:
        print(json.dumps(result, indent=1))
    elif result["ok"]:
        console.print(f"verified: {result['backup']} ({result['backup_created']}) and {result['binlogs']} binlogs "
                      f"restored in {result['seconds']} s; {result['tables']} tables, {result['rows']:,} rows equal "
                      f"to the backup's record at GTID {result['gtid']}", highlight=False, markup=False)
    else:
        console.print(f"FAILED: {result['error']}", highlight=False, markup=False)
    if not result["ok"]:
        raise typer.Exit(1)
