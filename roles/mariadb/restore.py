"""`hastack restore mariadb`: the pair rebuilt from the bucket, to a point in time.

The last full backup before the time asked, prepared on the preferred master; the shipped
binlogs replayed on top of it (first to the position where the backup recorded every
table's row count and digest, which are compared, then on to the time asked); the other
master emptied and seeded from the restored one by the pair's own seed path; replication
both ways; the single writer back. Writes are held on both masters from the first step to
the last, so nothing the application writes meanwhile is lost in the swap.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import typer

from hastack.console import OutputsOption, StackOption, fail
from roles.backup.agent import choose_chain, covers, digest_sql, quoted_name, start_position
from roles.backup.restore import (Restore, RestoreError, Source, cli_options, parse_time, run_cli, shell, stream_to,
                                  wait_until)
from roles.hcloud_agent import VENV
from roles.mariadb.config import JOIN, WAIT_FOR_UPGRADE

SQL_DIR = "/var/lib/hastack/mariadb"
HOLD = f"{SQL_DIR}/hold-writes"
STATE = f"{SQL_DIR}/writer-state.json"
WRITER_CLAIM = (f"{VENV}/bin/python /opt/hastack/mariadb_writer.py --config /etc/hastack/mariadb-writer.json "
                "claim --force")
STAGE = "/var/lib/hastack/restore/mariadb"
BINLOGS = "/var/lib/hastack/restore/binlogs"
DATADIR = "/var/lib/mysql"
# empties the data directory (a volume's mount point: its contents go, the directory stays)
CLEAR_DATADIR = f"find {DATADIR} -mindepth 1 -maxdepth 1 ! -name lost+found -exec rm -rf {{}} +"


SECRET_IN_SQL = re.compile(r"(IDENTIFIED BY|PASSWORD\s*=?)\s*'[^']*'", re.IGNORECASE)


def redact(text: str) -> str:
    """MariaDB echoes a failed statement: its passwords never reach the operator's terminal or a log."""
    return SECRET_IN_SQL.sub(r"\1 '***'", text)


# ---------------------------------------------------------------- what to restore


@dataclass
class Plan:
    full: dict  # the full backup's manifest
    binlogs: list[dict]  # manifests, in replay order
    binlog_host: str | None
    to: datetime | None

    def describe(self) -> str:
        chain = (f"{len(self.binlogs)} binlogs shipped by {self.binlog_host} ({self.binlogs[0]['binlog']} to "
                 f"{self.binlogs[-1]['binlog']})" if self.binlogs else "no binlogs after it")
        return (f"full backup {self.full['object']} (GTID {self.full['gtid']}, {self.full['created']}), then {chain}"
                + (f", replayed up to {self.to.isoformat(timespec='seconds')}" if self.to else ", replayed to the end"))


def plan(source: Source, to: datetime | None) -> Plan:
    fulls = [b for b in source.backups("mariadb-full") if to is None or b["time"] <= to]
    if not fulls:
        when = f" before {to.isoformat(timespec='seconds')}" if to else ""
        raise RestoreError(f"no complete MariaDB full backup of {source.stack!r}{when} in {source.bucket}")
    full = source.manifest(fulls[-1]["key"])
    return Plan(full=full, to=to, **binlog_chain(source, full, to))


def binlog_chain(source: Source, full: dict, to: datetime | None) -> dict:
    """The binlogs that continue the full backup (roles/backup/agent.py choose_chain): only those
    listed since the backup began are read."""
    started = datetime.fromisoformat(full["created"]) - timedelta(seconds=float(full.get("seconds", 0)) + 300)
    by_host: dict[str, list[dict]] = {}
    for b in source.backups("mariadb-binlog"):
        if b["time"] >= started:
            by_host.setdefault(b["host"], []).append(source.manifest(b["key"]) | {"_time": b["time"]})
    return choose_chain(full, by_host, to)


# ---------------------------------------------------------------- on the masters


class Pair:
    """SQL and shell on the two masters, as root over SSH."""

    def __init__(self, run, first: str, second: str, database: str, say: Callable[[str], None]):
        self.run, self.first, self.second, self.database, self.say = run, first, second, database, say

    def sh(self, host: str, command: str, timeout: float = 600) -> str:
        return shell(self.run, host, command, timeout, clean=redact)

    def sql(self, host: str, statement: str, timeout: float = 600) -> list[list[str]]:
        out = self.sh(host, f"mariadb --batch --skip-column-names -e {shlex.quote(statement)}", timeout)
        return [line.split("\t") for line in out.splitlines() if line]

    def tables(self, host: str) -> dict[str, list[str]]:
        # B608: the database is the setting, validated (MariaDBSettings.database); the mariadb client binds no parameters
        rows = self.sql(host, "SELECT c.table_name, c.column_name FROM information_schema.columns c "
                              "JOIN information_schema.tables t USING (table_schema, table_name) "
                              f"WHERE c.table_schema = '{self.database}' AND t.table_type = 'BASE TABLE' "  # nosec B608
                              "ORDER BY c.table_name, c.ordinal_position")
        out: dict[str, list[str]] = {}
        for table, column in rows:
            out.setdefault(table, []).append(column)
        return out

    def digests(self, host: str) -> dict[str, dict]:
        """Every table's row count and digest (roles/backup/agent.py digest_sql)."""
        out = {}
        for table, columns in self.tables(host).items():
            rows, digest = self.sql(host, digest_sql(self.database, table, columns))[0]
            out[table] = {"rows": int(rows), "digest": digest}
        return out

    def held(self, host: str) -> dict[str, int]:
        """Tables of the application's database that hold rows: what a restore would replace."""
        # identifiers, quoted (the table names come from the database); MariaDB binds no identifiers
        counts = {t: int(self.sql(host, f"SELECT COUNT(*) FROM {quoted_name(self.database)}.{quoted_name(t)}")[0][0])  # nosec B608
                  for t in self.tables(host)}
        return {t: n for t, n in counts.items() if n}


def restore(r: Restore) -> dict:
    """Restore the pair (``r.entries``, the stack's two masters) from ``r.source``; a report."""
    run, source, identity, entries, say, timeline = r.run, r.source, r.identity, r.entries, r.say, r.timeline
    to, force = r.options.get("to"), r.force
    names = list(entries)
    first = entries[names[0]]["mariadb_writer"]
    second = next(n for n in names if n != first)
    database = entries[first].get("mariadb_database", "hastack")
    pair = Pair(run, first, second, database, say)

    with timeline.step("mariadb: plan"):
        p = plan(source, to)
        identity.check(p.full)
        for m in p.binlogs:
            identity.check(m)
        say(p.describe())
        for h in (first, second):  # after an interrupted restore (writes still held) a master may be stopped
            pair.sh(h, f"if [ -e {HOLD} ]; then systemctl start mariadb && {WAIT_FOR_UPGRADE}; fi")
        held = {h: pair.held(h) for h in (first, second)}
        holding = {h: t for h, t in held.items() if t}
        if holding and not force:
            what = "; ".join(f"{h}: " + ", ".join(f"{t} ({n:,} rows)" for t, n in tables.items())
                             for h, tables in holding.items())
            raise RestoreError(f"the pair holds data in {database!r} ({what}); restoring replaces it with "
                               f"{p.full['object']} and its binlogs. Nothing was changed. Pass --force to replace it")
        if holding:
            say(f"--force: replacing {sum(sum(t.values()) for t in holding.values()):,} rows on the pair")

    with timeline.step("mariadb: hold writes"):
        for h in (first, second):
            pair.sh(h, f"install -d -m 0700 {SQL_DIR} && touch {HOLD} && systemctl stop hastack-mariadb-writer && "
                       "mariadb -e 'SET GLOBAL read_only = ON'")

    with timeline.step("mariadb: download full backup"):
        stream_to(run, first, f"rm -rf {STAGE} && mkdir -p -m 0700 {STAGE} && zstd -dc | mbstream -x -C {STAGE}",
                  source, p.full, identity, say)
    if p.binlogs:
        with timeline.step(f"mariadb: download {len(p.binlogs)} binlogs"):
            pair.sh(first, f"rm -rf {BINLOGS} && mkdir -p -m 0700 {BINLOGS}")
            for i, m in enumerate(p.binlogs):  # numbered: a restored master's names start over
                stream_to(run, first, f"zstd -dc > {BINLOGS}/{i:06d}-{m['binlog']}", source, m, identity, say,
                          label=f"{m['host']} {m['binlog']}")

    with timeline.step("mariadb: prepare"):
        pair.sh(first, f"mariadb-backup --prepare --target-dir={STAGE} > /var/log/hastack-restore-prepare.log 2>&1 "
                       "|| { tail -5 /var/log/hastack-restore-prepare.log >&2; exit 1; }", timeout=7200)

    with timeline.step("mariadb: swap data directory"):
        pair.sh(second, "systemctl stop mariadb")
        pair.sh(first, f"systemctl stop mariadb && {CLEAR_DATADIR} && "
                       f"(cd {STAGE} && find . -mindepth 1 -maxdepth 1 -exec mv -t {DATADIR} {{}} +) && "
                       f"chown -R mysql:mysql {DATADIR} && rm -rf {STAGE} && systemctl start mariadb && {WAIT_FOR_UPGRADE}")
        # this server's binlog continues at the backup's position; it replicates from nobody yet
        pair.sql(first, f"STOP ALL SLAVES; RESET SLAVE ALL; RESET MASTER; "
                        f"SET GLOBAL gtid_binlog_state = '{p.full['gtid']}'; SET GLOBAL gtid_slave_pos = '{p.full['gtid']}'")

    report: dict = {"full": p.full["object"], "binlogs": len(p.binlogs), "binlog_host": p.binlog_host,
                    "verified_at": None, "checks": []}
    checkpoint = p.full.get("checksums") or {}
    position = p.full["gtid"]
    with timeline.step("mariadb: replay binlogs and verify"):
        reach = checkpoint and (p.to is None or datetime.fromisoformat(checkpoint["at"]) <= p.to)
        if reach and not covers(position, checkpoint["gtid"]):
            if not p.binlogs:
                raise RestoreError(f"the backup's verification point {checkpoint['gtid']} lies after the full backup "
                                   "and no binlog reaches it")
            _replay(pair, first, start_position(position, p.binlogs), f"--stop-position={checkpoint['gtid']}")
            position = checkpoint["gtid"]
        if reach:
            now_at = pair.sql(first, "SELECT @@gtid_binlog_pos")[0][0]
            if not covers(now_at, checkpoint["gtid"]):
                raise RestoreError(f"the binlogs end at {now_at}, before the backup's verification point "
                                   f"{checkpoint['gtid']}: a binlog is missing from the bucket")
            got = pair.digests(first)
            want = checkpoint["tables"]
            wrong = sorted(t for t in set(want) | set(got) if got.get(t) != want.get(t))
            if wrong:
                detail = "; ".join(f"{t}: expected {want.get(t)}, restored {got.get(t)}" for t in wrong)
                raise RestoreError(f"restored data differs from what the backup recorded at {checkpoint['gtid']}: "
                                   f"{detail}")
            report["verified_at"] = checkpoint["gtid"]
            report["checks"].append(f"{len(want)} tables equal to the backup's record at GTID {checkpoint['gtid']} "
                                    f"({sum(t['rows'] for t in want.values()):,} rows)")
            say(report["checks"][-1])
        else:
            say("no verification point at or before the time asked: row counts only")
        if p.binlogs:
            stop = [f"--stop-datetime={shlex.quote(p.to.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M:%S'))}"] if p.to else []
            _replay(pair, first, start_position(position, p.binlogs), *stop)

    with timeline.step("mariadb: accounts and replication on the restored master"):
        # the source's accounts (its addresses, its passwords) go; this stack's come back from users.sql
        # B608: constant SQL, the only value put in is SQL_DIR, a constant path
        pair.sh(first, "{ echo 'SET sql_log_bin = 0;'; mariadb --batch --skip-column-names -e \"SELECT CONCAT("  # nosec B608
                       "'DROP USER ', QUOTE(User), '@', QUOTE(Host), ';') FROM mysql.user WHERE User IN "
                       "('app', 'repl', 'exporter')\"; } | mariadb --batch && "
                       f"mariadb --batch < {SQL_DIR}/users.sql")
        pair.sql(first, "SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")
        pair.sh(first, f"mariadb --batch < {SQL_DIR}/replication.sql")

    with timeline.step(f"mariadb: {second} seeded from {first}"):
        pair.sh(second, f"rm -f {STATE} && {CLEAR_DATADIR} && mariadb-install-db --user=mysql --skip-test-db "
                        f">/dev/null && systemctl start mariadb && {WAIT_FOR_UPGRADE} && {JOIN} seed && "
                        f"mariadb --batch < {SQL_DIR}/users.sql && mariadb --batch < {SQL_DIR}/replication.sql",
                timeout=7200)
        # still held: nothing is written while the two are compared
        final = pair.sql(first, "SELECT @@gtid_binlog_pos")[0][0]
        wait_until(lambda: covers(pair.sql(second, "SELECT @@gtid_slave_pos")[0][0], final), 120,
              f"{second} to replicate everything restored", 1)
        a, b = pair.digests(first), pair.digests(second)
        if a != b:
            raise RestoreError(f"{second} differs from {first} after seeding: {a} != {b}")
        report.update(gtid=final, tables={t: d["rows"] for t, d in a.items()}, writer=first)
        report["checks"].append(f"{second} equal to {first}: {len(a)} tables, "
                                f"{sum(d['rows'] for d in a.values()):,} rows, GTID {final}")
        say(report["checks"][-1])

    with timeline.step("mariadb: writes again"):
        # the restored data is a new history: the first master takes the next writer epoch (both agents
        # are stopped and writes held, so the witness's usual rules have nothing to protect)
        pair.sh(first, f"rm -f {STATE} && {WRITER_CLAIM}")
        for h in (first, second):
            pair.sh(h, f"rm -f {HOLD} && systemctl start hastack-mariadb-writer")
        wait_until(lambda: pair.sql(first, "SELECT @@read_only")[0][0] == "0", 60, f"{first} to take writes", 1)
    return report


def _replay(pair: Pair, host: str, start: str, *options: str) -> None:
    """mariadb-binlog from the staged binlogs, after ``start`` (exclusive), into the server as
    the original transactions (same GTIDs, same server ids)."""
    opts = " ".join(options)
    pair.sh(host, f"cd {BINLOGS} && TZ=UTC mariadb-binlog --skip-gtid-strict-mode --start-position={start} {opts} "
                  "$(ls | sort) | mariadb --binary-mode", timeout=7200)




_opts = cli_options()


def command(stack: str = StackOption, outputs: Path = OutputsOption, from_stack: str = _opts["from_stack"],
            to: str = typer.Option(None, "--to", help="point in time (ISO 8601, UTC unless zoned); default: all"),
            force: bool = _opts["force"], age_key: Path = _opts["age_key"]) -> None:
    """The MariaDB pair from the last full backup before --to and the binlogs up to it; verified."""
    try:
        when = parse_time(to)
    except RestoreError as e:
        fail(str(e))
    run_cli("mariadb", stack, outputs, from_stack, age_key, force, {"to": when})
