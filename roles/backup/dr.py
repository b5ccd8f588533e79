"""`hastack dr ...`: a stack's whole data layer rebuilt from the bucket.

  rebuild  create or check the infrastructure, converge, restore every data store
           (each verifies itself), and say where the site answers; a timeline.
  drill    on the lab: writes keep arriving through the floating IP while every data
           machine is destroyed with its disk, rebuilt empty, restored and verified;
           RTO and RPO measured from what the writers were told.

Data stores are restored Cassandra and Redis first, MariaDB last: the MariaDB restore
releases the writes it held, so the site takes writes again only once everything is back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import typer

from hastack.console import OutputsOption, StackOption, console, err_console, fail, say
from roles.backup.restore import AGE_KEY_ENV, AgeIdentity, Restore, RestoreError, Timeline, source_for

app = typer.Typer(help="Disaster recovery: rebuild a stack's data from the backups; drill it on the lab.",
                  no_args_is_help=True)

RPO_GOAL_S = 60  # a write older than this at the disaster must survive it
RESTORE_ORDER = ("cassandra", "redis", "mariadb")  # MariaDB last: it releases the writes


def data_roles() -> list:
    from roles import all_roles

    by_name = {r.name: r for r in all_roles() if r.restore}
    return [by_name[n] for n in RESTORE_ORDER if n in by_name] + [r for n, r in by_name.items() if n not in RESTORE_ORDER]


def restore_all(stack: str, outputs: dict, entries: dict[str, dict], from_stack: str | None, identity: AgeIdentity,
                timeline: Timeline, force: bool = False, log: Callable[[str], None] = say) -> dict:
    """Every data store of the stack from ``from_stack``'s backups (default: its own)."""
    from hastack.converge import connected

    source = source_for(stack, outputs, from_stack)
    reports = {}
    for r in data_roles():
        hosts = {n: d for n, d in entries.items() if r.name in d.get("groups", [])}
        if not hosts:
            continue
        with connected(hosts) as run:
            reports[r.name] = r.restore_step()(Restore(run=run, source=source, identity=identity, entries=hosts,
                                                       say=log, timeline=timeline, force=force))
    return reports


# ---------------------------------------------------------------- rebuild


@app.command("rebuild")
def rebuild(stack: str = StackOption, from_stack: str = typer.Option(..., "--from", help="whose backups to restore"),
            outputs: Path = OutputsOption,
            age_key: Path = typer.Option(None, "--age-key", envvar=AGE_KEY_ENV, help="the operator's age key"),
            force: bool = typer.Option(False, "--force", help="replace data the stack already holds"),
            as_json: bool = typer.Option(False, "--json", help="the timeline and reports as JSON")) -> None:
    """Infrastructure, converge, every data store restored and verified, the site's address."""
    from hastack.console import stack_entries, stack_outputs_of
    from hastack.converge import converge
    from hastack.lab.layout import is_lab_stack

    log = _stderr if as_json else say  # --json: standard output is the JSON alone
    timeline = Timeline(log)
    try:
        identity = AgeIdentity.load(age_key, stack)  # before anything changes
        with timeline.step("infrastructure"):
            if is_lab_stack(stack):
                from hastack.console import open_lab

                lab = open_lab(stack)
                lab.log = log
                lab.up(converge=False)
            elif shutil.which("pulumi"):
                _pulumi_up(stack, log)
            elif outputs is None:
                raise RestoreError(
                    f"no Pulumi CLI here to create the infrastructure: run `pulumi up --stack {stack}` in "
                    f"{Path(__file__).resolve().parents[2]} where it is installed (it creates the servers, the "
                    "network and the bucket and converges them), then run this command again, here with "
                    f"`--outputs FILE` from `pulumi stack output --stack {stack} --json --show-secrets > FILE`")
            else:
                log(f"no Pulumi CLI here: using the outputs in {outputs} (`pulumi up --stack {stack}` ran elsewhere)")
        out = stack_outputs_of(stack, outputs)
        entries = stack_entries(stack, outputs)
        with timeline.step("converge"):
            report = converge(entries, progress=log)
            if not report.ok:
                failed = next(r for r in report.hosts.values() if r.failed)
                raise RestoreError(f"converge failed on {failed.name}: {failed.failed}")
        reports = restore_all(stack, out, entries, from_stack, identity, timeline, force=force, log=log)
        with timeline.step("site"):
            site = _site_answers(out)
    except RestoreError as e:
        err_console.print(timeline.table(), highlight=False, markup=False)
        fail(str(e), code=1)
    result = {"stack": stack, "from": from_stack, "timeline": timeline.steps, "restored": reports, "site": site}
    if as_json:
        print(json.dumps(result, indent=1, default=str))
        return
    console.print(timeline.table(), highlight=False, markup=False)
    console.print(f"{stack} rebuilt from {from_stack}'s backups; the site answers at {site['url']} "
                  f"(floating IP {site['floating_ip']}): point DNS there if it pointed elsewhere",
                  highlight=False, markup=False)


def _pulumi_up(stack: str, log: Callable[[str], None]) -> None:
    """`pulumi up` through the Automation API (the program in this directory)."""
    from pulumi import automation as auto

    s = auto.select_stack(stack_name=stack, work_dir=str(Path(__file__).resolve().parents[2]))
    s.up(on_output=lambda line: log(line.rstrip()))


def _stderr(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


def _site_answers(outputs: dict) -> dict:
    ip = outputs.get("floatingIp")
    return {"floating_ip": ip, "url": f"https://{ip}/"}


# ---------------------------------------------------------------- drill (the lab)


@app.command("drill")
def drill(stack: str = typer.Option("lab", "--stack", "-s", help="a lab stack"),
          as_json: bool = typer.Option(False, "--json", help="the figures as one JSON object"),
          interval: float = typer.Option(0.2, help="seconds between two writes through the floating IP")) -> None:
    """Destroy every data machine of the lab under writes, rebuild, restore, verify; RTO and RPO."""
    from hastack.console import open_lab
    from hastack.lab.layout import is_lab_stack

    if not is_lab_stack(stack):
        fail(f"--stack {stack!r}: a drill destroys machines, so it runs on a lab stack only")
    lab = open_lab(stack)
    log = _stderr if as_json else say
    try:
        result = run_drill(lab, interval=interval, log=log)
    except RestoreError as e:
        if isinstance(getattr(e, "timeline", None), Timeline):
            err_console.print(e.timeline.table(), highlight=False, markup=False)
        fail(str(e), code=1)
    if as_json:
        print(json.dumps(result, indent=1))
    else:
        console.print(json.dumps({k: v for k, v in result.items() if k != "timeline"}, indent=1),
                      highlight=False, markup=False)
    if not result["verified"] or result["lost"]:
        raise typer.Exit(1)


CASSANDRA_MARKERS = 200  # rows written before the backups, every one expected back
WRITES_AFTER_BACKUP_S = 90  # longer than the RPO goal: "lost" then counts real writes


def run_drill(lab, interval: float = 0.2, log: Callable[[str], None] = say) -> dict:
    timeline = Timeline(log)
    lab.log = log  # the lab's own progress with the drill's (standard error under --json)
    try:
        return _drill(lab, interval, log, timeline)
    except RestoreError as e:
        e.timeline = timeline  # what was done before it failed, printed with the error
        raise


def _drill(lab, interval: float, log: Callable[[str], None], timeline: Timeline) -> dict:
    from hastack.converge import connected
    from hastack.lab import probe

    identity = AgeIdentity.load(None, lab.stack)
    data_hosts = [h.name for h in lab.topo.hosts if any(r.name in lab.topo.host_roles(h) for r in data_roles())]

    writes = probe.start(lab, seconds=7200, path="/records", interval=interval, timeout=8, write=True)
    try:
        with timeline.step("before: marker rows, then every backup, under writes"):
            # what the drill loses is measured against acknowledged writes: a stack that takes none
            # (left holding writes, say) would make an empty backup and a drill that proves nothing
            if _wait_serving(writes, time.time() - 1, 60) is None:
                raise RestoreError("the stack takes no writes through the floating IP (not one acknowledged in "
                                   "60 s), so nothing was destroyed: bring it back first (`hastack lab up`, or "
                                   "`hastack restore` if its data stores are empty) and run the drill again")
            entries = lab.inventory_entries()
            _cassandra_markers(entries, log)
            _backup_now(lab.stack, log)
        # writes go on: the older ones must all come back (from the full backup or the binlogs),
        # the last seconds' only as far as binlog shipping reached
        time.sleep(WRITES_AFTER_BACKUP_S)
        disaster_at = time.time()
        with timeline.step(f"disaster: {len(data_hosts)} data machines destroyed with their disks"):
            for name in data_hosts:
                lab.machine(name).remove()
        with timeline.step("rebuild: machines booted empty"):
            lab.up(converge=False)
            for db in lab.topo.hosts_with_role("mariadb"):
                # a new pair holds writes until its restore (hastack:restoreFrom does this on a cloud stack)
                lab.exec(db.name, ["install", "-D", "-m", "0600", "/dev/null", "/var/lib/hastack/mariadb/hold-writes"],
                         check=True)
        from hastack.converge import converge

        entries = lab.inventory_entries()
        with timeline.step("converge"):
            report = converge({n: entries[n] for n in data_hosts}, progress=log)
            if not report.ok:
                failed = next(r for r in report.hosts.values() if r.failed)
                raise RestoreError(f"converge failed on {failed.name}: {failed.failed}")
        reports = restore_all(lab.stack, lab.stack_outputs(), entries, None, identity, timeline, log=log)
        restored_at = time.time()
        serving = _wait_serving(writes, disaster_at, 300)
        time.sleep(5)
    finally:
        writes.terminate()
    records = probe.records(writes, timeout=30)

    with timeline.step("verify: acknowledged writes and markers"):
        writer = reports["mariadb"]["writer"]
        with connected({writer: entries[writer]}) as run:
            ok, out, err = run(writer, "mariadb --batch --skip-column-names -e "
                                       "'SELECT request_id FROM hastack.records'", 120)
        if not ok:
            raise RestoreError(f"{writer}: cannot read the records back: {err.strip()}")
        present = set(out.split())
        acked = [r for r in records if r.get("ok") and r["t"] + r["d"] <= disaster_at]
        recovered = [r for r in acked if r["request_id"] in present]
        missing = [r for r in acked if r["request_id"] not in present]
        lost = [r for r in missing if r["t"] + r["d"] < disaster_at - RPO_GOAL_S]
        newest = max((r["t"] + r["d"] for r in recovered), default=None)
        markers = reports.get("cassandra", {}).get("rows", {}).get("hastack_drill.markers")
    serving_again_at = max(serving, restored_at) if serving else None
    result = {
        "disaster_at": _iso(disaster_at),
        "serving_again_at": _iso(serving_again_at) if serving_again_at else None,
        "rto_s": round(serving_again_at - disaster_at, 1) if serving_again_at else None,
        "rpo_s": round(disaster_at - newest, 1) if newest else None,
        "acknowledged_before": len(acked),
        "acknowledged_older_than_goal": sum(r["t"] + r["d"] < disaster_at - RPO_GOAL_S for r in acked),
        "recovered": len(recovered),
        "lost": len(lost),
        "missing_within_rpo_goal": len(missing) - len(lost),
        "cassandra_markers": {"written": CASSANDRA_MARKERS, "restored": markers},
        "verified": bool(serving_again_at) and not lost and markers == CASSANDRA_MARKERS
                    and (bool(recovered) or not acked) and all(r.get("checks") for r in reports.values()),
        "phases": _phases(timeline),
        "timeline": timeline.steps,
    }
    return result


def _cassandra_markers(entries: dict, log) -> None:
    from hastack.converge import connected
    from roles.cassandra.ring import CQL_TOOL, STATE_DIR

    node = next(n for n, d in entries.items() if "cassandra" in d.get("groups", []))
    stmts = ["CREATE KEYSPACE IF NOT EXISTS hastack_drill WITH replication = {'class': 'NetworkTopologyStrategy', "
             f"'{entries[node]['cassandra_datacenter']}': {entries[node]['cassandra_replication_factor']}}};",
             "CREATE TABLE IF NOT EXISTS hastack_drill.markers (id int PRIMARY KEY, at timestamp);",
             "TRUNCATE hastack_drill.markers;"]
    stmts += [f"INSERT INTO hastack_drill.markers (id, at) VALUES ({i}, toTimestamp(now()));"  # nosec B608  # i: an int
              for i in range(CASSANDRA_MARKERS)]
    with connected({node: entries[node]}) as run:
        ok, out, err = run.stream(node, f"python3 {CQL_TOOL} --address {entries[node]['private_ip']} "
                                        f"--ca /etc/cassandra/tls/ca.crt --password-file {STATE_DIR}/admin-password "
                                        "apply", ["\n".join(stmts).encode()])
    if not ok:
        raise RestoreError(f"{node}: marker rows not written: {err.strip()[-300:]}")
    log(f"{CASSANDRA_MARKERS} marker rows in hastack_drill.markers")


def _backup_now(stack: str, log) -> None:
    proc = subprocess.run([sys.executable, "-m", "hastack.cli", "backup", "now", "--stack", stack],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RestoreError(f"backups before the drill failed: {(proc.stdout + proc.stderr).strip()[-400:]}")
    log(proc.stdout.strip().splitlines()[-1])


def _wait_serving(writes, since: float, timeout: float) -> float | None:
    """When the first write after ``since`` was acknowledged (read from the running probe's file)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/self/fd/{writes.answers.fileno()}") as f:  # the probe's answers so far
            for line in f:
                rec = json.loads(line) if line.strip() else None
                if rec and rec.get("ok") and rec["t"] > since:
                    return rec["t"] + rec["d"]
        time.sleep(1)
    return None


def _phases(timeline: Timeline) -> dict[str, float]:
    """Seconds per phase: rebuild, converge, download, restore, verify."""
    phases = {"rebuild": 0.0, "converge": 0.0, "download": 0.0, "restore": 0.0, "verify": 0.0}
    for s in timeline.steps:
        name = s["step"]
        key = ("rebuild" if name.startswith(("rebuild", "disaster")) else "converge" if name == "converge"
               else "download" if "download" in name else "verify" if "verif" in name or "count" in name
               else "restore" if ":" in name else None)
        if key:
            phases[key] = round(phases[key] + s["seconds"], 1)
    return phases


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
