"""`hastack restore cassandra`: the ring's data from the nodes' snapshots in the bucket.

The schema first (each keyspace made with this ring's replication, each table from the
schema.cql its snapshot carries); then every node of this ring loads the snapshots of
every source node (`nodetool import`, tokens not checked) and drops what it does not own
(`nodetool cleanup`), so the source ring's size and tokens do not matter; then a full
repair; then rows per table counted at QUORUM.

Every node downloads every source snapshot: with as many replicas as nodes (the usual
three) each node owns all the data anyway; a larger ring downloads more than it keeps.
"""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from pathlib import Path

import typer

from hastack.console import OutputsOption, StackOption, fail
from roles.backup.restore import Restore, RestoreError, cli_options, parse_time, run_cli, shell, stream_to
from roles.cassandra.ring import CQL_TOOL, STATE_DIR, parse_status

STAGE = "/var/lib/cassandra/restore"  # on the data volume, beside the data: imports move, not copy
SYSTEM = {"system", "system_schema", "system_auth", "system_distributed", "system_traces", "system_views",
          "system_virtual_schema"}


def snapshot_set(source, at: datetime | None) -> list[dict]:
    """Each source node's newest snapshot at or before ``at`` (default: the newest)."""
    newest: dict[str, dict] = {}
    for b in source.backups("cassandra-snapshot"):
        if at is None or b["time"] <= at:
            newest[b["host"]] = b
    return [source.manifest(b["key"]) for b in sorted(newest.values(), key=lambda b: b["host"])]


def restore(r: Restore) -> dict:
    run, say, timeline = r.run, r.say, r.timeline
    nodes = {n: d["private_ip"] for n, d in r.entries.items()}
    first = next(iter(nodes))
    data = r.entries[first]
    dc, rf = data["cassandra_datacenter"], int(data["cassandra_replication_factor"])

    def sh(host: str, command: str, timeout: float = 600) -> str:
        return shell(run, host, command, timeout)

    def cql(command: str, *args: str, stdin: str | None = None, timeout: float = 900) -> object:
        tool = (f"python3 {CQL_TOOL} --address {nodes[first]} --ca /etc/cassandra/tls/ca.crt "
                f"--password-file {STATE_DIR}/admin-password {command} " + " ".join(shlex.quote(a) for a in args))
        if stdin is not None:
            ok, out, err = run.stream(first, tool, [stdin.encode()])
            if not ok:
                raise RestoreError(f"{first}: CQL {command} failed: {err.strip()[-500:]}")
            return json.loads(out)
        return json.loads(sh(first, tool, timeout))

    with timeline.step("cassandra: plan"):
        snaps = snapshot_set(r.source, r.options.get("snapshot"))
        if not snaps:
            raise RestoreError(f"no complete Cassandra snapshot of {r.source.stack!r} in {r.source.bucket}")
        for m in snaps:
            r.identity.check(m)
        tables = sorted({t for m in snaps for t in m["tables"]})
        keyspaces = sorted({t.split(".")[0] for t in tables})
        say(f"snapshots of {', '.join(m['host'] + ' (' + m['created'] + ')' for m in snaps)}: "
            f"{len(tables)} tables in {', '.join(keyspaces) or 'no keyspace'}; into {', '.join(nodes)}")
        ring = parse_status(sh(first, "nodetool status"))
        down = [ip for ip in nodes.values() if ip not in ring or ring[ip].state != "UN"]
        if down:
            raise RestoreError(f"the ring is not whole (not Up/Normal: {', '.join(down)}); nothing was changed")
        existing = [k for k in cql("keyspaces") if k in keyspaces]
        held = {t: n for t, n in cql("counts", *existing).items() if n and t in tables} if existing else {}
        if held and not r.force:
            raise RestoreError("the ring holds data in the tables to restore (" + ", ".join(
                f"{t}: {n:,} rows" for t, n in held.items()) + "). Nothing was changed. Pass --force to replace it")

    with timeline.step(f"cassandra: download {len(snaps)} snapshots to {len(nodes)} nodes"):
        for node in nodes:
            sh(node, f"rm -rf {STAGE} && install -d -m 0700 {STAGE}")
            for m in snaps:
                stream_to(run, node, f"mkdir -p {STAGE}/{m['host']} && zstd -dc | tar -x -C {STAGE}/{m['host']}",
                          r.source, m, r.identity, say, label=f"{m['host']} snapshot to {node}")
            sh(node, f"chown -R cassandra:cassandra {STAGE}")

    with timeline.step("cassandra: schema"):
        schema = [f"CREATE KEYSPACE IF NOT EXISTS \"{ks}\" WITH replication = "
                  f"{{'class': 'NetworkTopologyStrategy', '{dc}': {rf}}};" for ks in keyspaces]
        files = sh(first, f"cd {STAGE}/{snaps[0]['host']} && find . -path '*/snapshots/*/schema.cql' | sort").split()
        for f in files:
            text = sh(first, f"cat {STAGE}/{snaps[0]['host']}/{f}")
            # a type or table once: IF NOT EXISTS, whatever the snapshot wrote
            schema += [s.strip() + ";" for s in text.split(";") if s.strip() and not s.strip().startswith("--")]
        if held:
            schema += [f"TRUNCATE {t};" for t in held]
        say(f"{cql('apply', stdin=chr(10).join(schema))['applied']} schema statements")

    with timeline.step("cassandra: import on every node"):
        for node in nodes:
            for table in tables:  # one nodetool (one JVM) per table: every source node's files at once
                ks, name = table.split(".")
                dirs = sh(node, " ".join(f"ls -d {STAGE}/{m['host']}/{ks}/{name}-*/snapshots/{m['tag']} 2>/dev/null;"
                                         for m in snaps) + " true").split()
                if dirs:
                    sh(node, f"nodetool import --no-tokens {ks} {name} {' '.join(dirs)}", 3600)
            for ks in keyspaces:  # nodetool takes one keyspace (and its tables) per call
                sh(node, f"nodetool cleanup {ks}", 3600)
            sh(node, f"rm -rf {STAGE}")

    with timeline.step("cassandra: repair"):
        for node in nodes:
            for ks in keyspaces:
                sh(node, f"nodetool repair --full -pr {ks}", 7200)

    with timeline.step("cassandra: count rows at QUORUM"):
        counted = cql("counts", *keyspaces)
        missing = [t for t in tables if t not in counted]
        if missing:
            raise RestoreError(f"tables missing after the restore: {', '.join(missing)}")
        check = f"{len(tables)} tables readable at QUORUM: " + ", ".join(f"{t} {counted[t]:,} rows" for t in tables)
        say(check)
    return {"snapshots": [m["object"] for m in snaps], "rows": {t: counted[t] for t in tables}, "checks": [check]}


_opts = cli_options()


def command(stack: str = StackOption, outputs: Path = OutputsOption, from_stack: str = _opts["from_stack"],
            snapshot: str = typer.Option(None, "--snapshot",
                                         help="each node's newest snapshot at or before this time (ISO 8601)"),
            force: bool = _opts["force"], age_key: Path = _opts["age_key"]) -> None:
    """Cassandra from the nodes' snapshots: schema, sstables on every node, repair; rows counted."""
    try:
        at = parse_time(snapshot)
    except RestoreError as e:
        fail(str(e).replace("--to", "--snapshot"))
    run_cli("cassandra", stack, outputs, from_stack, age_key, force, {"snapshot": at})
