#!/usr/bin/python3
"""The backup agent on a data host: one job per run, streamed to the stack's S3 bucket.

  hastack-backup --config /etc/hastack/backup.json mariadb-full | mariadb-binlog | cassandra-snapshot | redis-rdb

Every object is compressed (zstd) and encrypted on the host with age to the
operator's recipients before it leaves; the bucket adds SSE-KMS at rest. The
host's identity may only put into its own prefix: it cannot read, list or
delete anything, so the agent keeps what it shipped in a local state file.

A backup is complete when its manifest exists: the manifest is written last,
after the data object was uploaded and every process of the pipeline
succeeded. An object without a manifest is an interrupted run; restores and
`hastack backup list` ignore it (it cannot be deleted: object lock).

Each job writes its result as Prometheus metrics for the node exporter's
textfile collector; a failure exits non-zero (the journal has the reason).

Runs with Debian's python3 (python3-boto3, python3-pymysql on MariaDB hosts).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone

log = logging.getLogger("hastack-backup")

KINDS = ("mariadb-full", "mariadb-binlog", "cassandra-snapshot", "redis-rdb")
STATE_DIR = "/var/lib/hastack/backup"
METRICS_DIR = "/var/lib/prometheus/node-exporter"
MARIADB_SOCKET = "/run/mysqld/mysqld.sock"
CASSANDRA_DATA = "/var/lib/cassandra/data"
# keyspaces Cassandra makes itself; a restore recreates them (the converge the superuser)
CASSANDRA_SYSTEM = {"system", "system_schema", "system_auth", "system_distributed", "system_traces",
                    "system_views", "system_virtual_schema"}
PART_SIZE = 16 * 1024 * 1024
KEEP_BINLOG_DAYS = 7  # shipped binlogs stay this long on the host (point-in-time restores from the host)


class JobError(RuntimeError):
    pass


# ---------------------------------------------------------------- upload


class Bucket:
    """The host's put-only view of the bucket: its prefix, encryption on the way out."""

    def __init__(self, cfg: dict):
        import boto3
        from botocore.config import Config

        self.cfg = cfg
        self.bucket = cfg["bucket"]
        self.prefix = cfg["prefix"]  # <prefix><host>/
        self.s3 = boto3.client(
            "s3", region_name=cfg["region"], endpoint_url=cfg.get("endpoint") or None,
            verify=cfg.get("ca_file") or True,
            aws_access_key_id=cfg["access_key_id"], aws_secret_access_key=cfg["secret_access_key"],
            config=Config(retries={"max_attempts": 8, "mode": "standard"}, signature_version="s3v4"))

    def key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}/{name}"

    def put_stream(self, key: str, producer: list[str] | None, metadata: dict[str, str],
                   stdin_path: str | None = None, **popen) -> dict:
        """Run ``producer`` | zstd | age and upload its output as ``key``; (size, sha256, seconds).

        ``stdin_path`` instead of a producer: a file read as is (a closed binlog)."""
        started = time.monotonic()
        procs: list[subprocess.Popen] = []
        source = open(stdin_path, "rb") if stdin_path else None
        try:
            if producer:
                procs.append(subprocess.Popen(producer, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen))
                source = procs[-1].stdout
            procs.append(subprocess.Popen(["zstd", "-q", "-3", "-T0", "-c"], stdin=source, stdout=subprocess.PIPE))
            kind = key.rsplit("/", 2)[-2]  # <prefix><kind>/<name>
            recipients = [a for r in recipients_for(self.cfg, kind) for a in ("-r", r)]
            procs.append(subprocess.Popen(["age", *recipients], stdin=procs[-1].stdout, stdout=subprocess.PIPE))
            for p in procs[:-1]:
                p.stdout.close()  # only the next process reads it
            stderr: dict[int, bytes] = {}
            readers = [threading.Thread(target=lambda p=p: stderr.__setitem__(p.pid, p.stderr.read()))
                       for p in procs if p.stderr]
            for t in readers:
                t.start()
            body = _Hashing(procs[-1].stdout)
            from boto3.s3.transfer import TransferConfig

            self.s3.upload_fileobj(
                body, self.bucket, key,
                ExtraArgs={"Metadata": metadata, "ServerSideEncryption": "aws:kms"},
                Config=TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE,
                                      max_concurrency=2, use_threads=True))
            for t in readers:
                t.join()
            for p in procs:
                p.wait()
            failed = [(p.args[0], p.returncode) for p in procs if p.returncode != 0]
            if failed:
                detail = "; ".join(stderr.get(p.pid, b"").decode(errors="replace").strip()[-400:] for p in procs)
                raise JobError(f"pipeline failed ({failed}): {detail}; {key} has no manifest and is ignored")
            return {"size": body.size, "sha256": body.sha256.hexdigest(),
                    "seconds": round(time.monotonic() - started, 3),
                    "producer_stderr": stderr.get(procs[0].pid, b"").decode(errors="replace") if producer else ""}
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            if stdin_path and source:
                source.close()

    def put_manifest(self, key: str, manifest: dict) -> None:
        """Written last: a backup without its manifest does not exist for restores."""
        self.s3.put_object(Bucket=self.bucket, Key=key + ".manifest.json", ServerSideEncryption="aws:kms",
                           Body=json.dumps(manifest, indent=1, sort_keys=True).encode(),
                           ContentType="application/json")


class _Hashing:
    """A file-like reader that counts and hashes what the upload reads."""

    def __init__(self, raw):
        self.raw = raw
        self.size = 0
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.size += len(data)
        self.sha256.update(data)
        return data


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _manifest(cfg: dict, kind: str, key: str, result: dict, **extra) -> dict:
    return {"kind": kind, "host": cfg["host"], "stack": cfg["stack"], "object": key,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "size": result["size"], "sha256": result["sha256"], "seconds": result["seconds"],
            "encryption": {"client": "age", "recipients": recipients_for(cfg, kind), "compression": "zstd"}, **extra}


class ManifestError(ValueError):
    pass


# What a manifest's fields may hold. A manifest comes from the bucket, where any host that backs up
# writes; its names and positions go into shell commands and SQL text of restores and test restores
# (run as root), so a reader takes none that does not have exactly this form.
_GTIDS = re.compile(r"^(\d+-\d+-\d+(,\d+-\d+-\d+)*)?$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")
_MANIFEST_FORMS = {
    "gtid": _GTIDS, "gtid_start": _GTIDS, "gtid_end": _GTIDS,
    "binlog": _FILE_NAME, "tag": _FILE_NAME,
    "database": re.compile(r"^[a-z][a-z0-9_]{0,63}$"),  # roles/mariadb MariaDBSettings.database
    "sha256": re.compile(r"^[0-9a-f]{64}$"),
}
_CASSANDRA_TABLE = re.compile(r"^[A-Za-z0-9_]{1,48}\.[A-Za-z0-9_]{1,48}$")  # keyspace.table, CQL's own limits


def checked_manifest(manifest: object, key: str) -> dict:
    """The manifest of the backup at ``key``, read from the bucket, once each field a restore uses has its
    form (ManifestError names the field otherwise): it must describe that object, in that object's kind."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"{key}: its manifest is not a JSON object")
    if manifest.get("object") != key:
        raise ManifestError(f"{key}: its manifest describes {manifest.get('object')!r}, not this object")
    if manifest.get("kind") not in KINDS or f"/{manifest['kind']}/" not in f"/{key}":
        raise ManifestError(f"{key}: its manifest's kind {manifest.get('kind')!r} is not the object's")
    checksums = manifest.get("checksums")
    point = checksums.get("gtid") if isinstance(checksums, dict) else None
    if point is not None and not (isinstance(point, str) and _GTIDS.fullmatch(point)):
        raise ManifestError(f"{key}: manifest field checksums.gtid={point!r} is not a GTID list")
    for name, form in _MANIFEST_FORMS.items():
        value = manifest.get(name)
        if value is not None and not (isinstance(value, str) and form.fullmatch(value)):
            raise ManifestError(f"{key}: manifest field {name}={value!r} does not have the form {form.pattern}")
    for table in manifest.get("tables") or {}:
        if manifest["kind"] == "cassandra-snapshot" and not _CASSANDRA_TABLE.fullmatch(str(table)):
            raise ManifestError(f"{key}: manifest table {table!r} is not keyspace.table")
    return manifest


def recipients_for(cfg: dict, kind: str) -> list[str]:
    """The operators' keys; for MariaDB backups also the restore-verification key (the monitoring
    host's weekly test restore, roles/backup/verify_key.py)."""
    extra = cfg.get("verify_recipients", []) if kind.startswith("mariadb-") else []
    return list(cfg["recipients"]) + [r for r in extra if r not in cfg["recipients"]]


# ---------------------------------------------------------------- MariaDB


def _mariadb():
    import pymysql

    return pymysql.connect(unix_socket=MARIADB_SOCKET, user="root", autocommit=True, connect_timeout=10)


def _query(conn, sql: str, args=None) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall())


def quoted_name(name: str) -> str:
    """A MariaDB identifier, quoted: table and column names come from the database (the application
    creates them), so a backquote in one is doubled and cannot end the quoting."""
    return "`" + name.replace("`", "``") + "`"


def digest_sql(database: str, table: str, columns: list[str]) -> str:
    """Row count and an order-independent digest of every row's values (NULL told apart from
    empty): the same query on two servers holding the same rows gives the same answer, whatever
    the storage layout (CHECKSUM TABLE's value depends on the row format)."""
    quoted = [quoted_name(c) for c in columns]
    row = "CONCAT_WS('#', " + ", ".join(quoted + [f"ISNULL({q})" for q in quoted]) + ")"
    # identifiers only, each quoted (MariaDB cannot bind identifiers); the database is the validated setting
    return (f"SELECT COUNT(*), COALESCE(SUM(CAST(CONV(LEFT(MD5({row}), 15), 16, 10) AS UNSIGNED)), 0) "
            f"FROM {quoted_name(database)}.{quoted_name(table)}")  # nosec B608  # quoted identifiers, see above


def tables_and_columns(conn, database: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table, column in _query(conn, "SELECT c.table_name, c.column_name FROM information_schema.columns c "
                                      "JOIN information_schema.tables t USING (table_schema, table_name) "
                                      "WHERE c.table_schema = %s AND t.table_type = 'BASE TABLE' "
                                      "ORDER BY c.table_name, c.ordinal_position", (database,)):
        out.setdefault(table, []).append(column)
    return out


def consistent_checksums(conn, database: str) -> dict:
    """Every table's row count and digest in one consistent snapshot, and the GTID position that
    snapshot is at: a restore replays the binlogs to exactly that position and compares."""
    _query(conn, "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    _query(conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT")
    try:
        status = dict(_query(conn, "SHOW STATUS LIKE 'binlog_snapshot_%'"))
        gtid = _query(conn, "SELECT BINLOG_GTID_POS(%s, %s)",
                      (status["Binlog_snapshot_file"], int(status["Binlog_snapshot_position"])))[0][0]
        tables = {}
        for table, columns in tables_and_columns(conn, database).items():
            rows, digest = _query(conn, digest_sql(database, table, columns))[0]
            tables[table] = {"rows": int(rows), "digest": str(digest)}
    finally:
        _query(conn, "ROLLBACK")
    return {"gtid": gtid or "", "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "tables": tables}


def mariadb_full(cfg: dict, bucket: Bucket) -> dict:
    """mariabackup streamed (xbstream), never staged on disk; its GTID position in the manifest,
    then row counts and digests of every table at a GTID position just after it (verification)."""
    name = f"{_stamp()}.xbstream.zst.age"
    key = bucket.key("mariadb-full", name)
    target = tempfile.mkdtemp(prefix="mariabackup-", dir=STATE_DIR)
    try:
        result = bucket.put_stream(
            key, ["mariabackup", "--backup", "--stream=xbstream", f"--target-dir={target}",
                  f"--socket={MARIADB_SOCKET}", "--user=root"],
            metadata={"kind": "mariadb-full", "host": cfg["host"]})
    finally:
        shutil.rmtree(target, ignore_errors=True)
    gtid = _mariabackup_gtid(result.pop("producer_stderr"))
    conn = _mariadb()
    try:
        checksums = consistent_checksums(conn, cfg["mariadb_database"])
    finally:
        conn.close()
    bucket.put_manifest(key, _manifest(cfg, "mariadb-full", key, result, gtid=gtid, database=cfg["mariadb_database"],
                                       checksums=checksums))
    return result


def _mariabackup_gtid(stderr: str) -> str:
    """mariabackup reports the copy's binlog position: "... GTID of the last change '0-1-5,1-2-3'"."""
    for line in reversed(stderr.splitlines()):
        if "GTID of the last change" in line:
            return line.rsplit("GTID of the last change", 1)[1].strip(" '\"\n")
    raise JobError("mariabackup did not report the copy's GTID position")


def mariadb_binlog(cfg: dict, bucket: Bucket) -> dict:
    """Close the current binlog and ship every closed one not shipped yet, in order.

    Both masters ship their own binlogs (log_slave_updates: each holds every
    transaction of the pair), so shipping never depends on which one is the
    writer and survives a failover and a fail-back without a gap. Each object
    carries the GTID state before and after it (the Gtid_list events), so a
    restore chains them.

    A restore or a re-seed starts the binlog over (RESET MASTER: the names begin
    again at .000001): the first file's starting position tells a new series
    from the old one, so its files are shipped too, and every object's name
    carries the time it was shipped, so none replaces an earlier one."""
    state_path = os.path.join(STATE_DIR, "binlog-shipped.json")
    state = _read_json(state_path, {"shipped": []})
    shipped = set(state["shipped"])
    conn = _mariadb()
    total = {"size": 0, "sha256": "", "seconds": 0.0, "files": 0}
    try:
        _query(conn, "FLUSH BINARY LOGS")
        logs = [row[0] for row in _query(conn, "SHOW BINARY LOGS")]
        basedir = os.path.dirname(_query(conn, "SELECT @@log_bin_basename")[0][0])
        first = [logs[0], _gtid_list(conn, logs[0])]
        if new_series(state.get("first"), first) or "first" not in state:
            # a new series, or a state that cannot tell (written before series were told apart): ship
            # what is here; a restore counts a file shipped twice once
            log.warning("shipping every binlog from %s (at %s) on", first[0], first[1])
            shipped = set()
        closed = logs[:-1]  # the last one is being written
        for name, after in zip(closed, logs[1:], strict=True):
            if name in shipped:
                continue
            start, end = _gtid_list(conn, name), _gtid_list(conn, after)
            key = bucket.key("mariadb-binlog", f"{_stamp()}-{name}.zst.age")
            result = bucket.put_stream(key, None, stdin_path=os.path.join(basedir, name),
                                       metadata={"kind": "mariadb-binlog", "host": cfg["host"],
                                                 "gtid-start": start, "gtid-end": end})
            bucket.put_manifest(key, _manifest(cfg, "mariadb-binlog", key, result, binlog=name,
                                               gtid_start=start, gtid_end=end))
            shipped.add(name)
            # keep only names still on the host: purged files never come back
            _write_json(state_path, {"shipped": sorted(shipped & set(logs)), "first": first})
            total["size"] += result["size"]
            total["seconds"] += result["seconds"]
            total["files"] += 1
        _write_json(state_path, {"shipped": sorted(shipped & set(logs)), "first": first})
        _purge_shipped(conn, logs, shipped, basedir)
    finally:
        conn.close()
    return total


def new_series(before: list | None, now: list) -> bool:
    """Did the binlog start over since the last run? ``[first file, its starting GTID list]``:
    purging only ever moves the first file forward; RESET MASTER brings back a lower or equal
    number with another start."""
    if not before:
        return False
    was, is_ = _binlog_number(before[0]), _binlog_number(now[0])
    return is_ < was or (is_ == was and before[1] != now[1])


def _purge_shipped(conn, logs: list[str], shipped: set[str], basedir: str) -> None:
    """Binlogs leave the host once shipped and older than KEEP_BINLOG_DAYS (the peer has long read
    them); never one that is not in the bucket yet, so a shipping outage loses nothing."""
    cutoff = time.time() - KEEP_BINLOG_DAYS * 86400
    first_kept = None
    for name in logs[:-1]:
        if name not in shipped or os.path.getmtime(os.path.join(basedir, name)) > cutoff:
            first_kept = name
            break
    if first_kept and first_kept != logs[0]:
        try:
            _query(conn, "PURGE BINARY LOGS TO %s", (first_kept,))
        except Exception as e:  # noqa: BLE001 - MariaDB refuses while a replica still reads one: next time
            log.warning("binlogs not purged this time: %s", e)


def _gtid_list(conn, binlog: str) -> str:
    """The GTID state at the start of a binlog file (its Gtid_list event), e.g. '0-1-5,1-2-9'."""
    for row in _query(conn, "SHOW BINLOG EVENTS IN %s LIMIT 4", (binlog,)):
        if row[2] == "Gtid_list":
            return row[5].strip("[]").replace(" ", "")
    raise JobError(f"{binlog} has no Gtid_list event")


# ---------------------------------------------------------------- restoring: which binlogs continue a backup


def gtids(text: str) -> dict[int, int]:
    """'0-1-5,1-1-9' -> {domain: sequence number}."""
    out: dict[int, int] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        domain, _server, seq = part.split("-")
        out[int(domain)] = int(seq)
    return out


def covers(a: str, b: str) -> bool:
    """GTID position ``a`` includes everything of position ``b``."""
    have = gtids(a)
    return all(have.get(d, -1) >= seq for d, seq in gtids(b).items())


def start_position(position: str, binlogs: list[dict]) -> str:
    """``position`` as mariadb-binlog's --start-position, naming every GTID domain the binlogs hold.

    A domain the position lacks (a master that first took writes after the full backup, say
    after a failover) starts from its beginning (sequence 0): left out, mariadb-binlog would
    skip that domain's transactions."""
    have = {int(p.split("-")[0]): p for p in filter(None, (x.strip() for x in position.split(",")))}
    for m in binlogs:
        for domain in gtids(m["gtid_end"]):
            have.setdefault(domain, f"{domain}-0-0")
    return ",".join(have[d] for d in sorted(have))


def choose_chain(full: dict, by_host: dict[str, list[dict]], to=None) -> dict:
    """The shipped binlogs (manifests, each with the time it was listed as ``_time``) that
    continue the full backup ``full``, from the master whose shipments reach furthest.

    Both masters ship every transaction of the pair (log_slave_updates), so either chain
    serves; a chain must start at or before the backup's position and has no gap. With
    ``to`` (a point in time), files closed after it are left out but the first one."""
    best = None
    for host, manifests in sorted(by_host.items()):
        # in the order they were shipped (a restored master's names start over); a file shipped twice once
        seen, ordered = set(), []
        for m in sorted(manifests, key=lambda m: (m["_time"], m["object"])):
            if (m["binlog"], m["gtid_start"], m["gtid_end"]) not in seen:
                seen.add((m["binlog"], m["gtid_start"], m["gtid_end"]))
                ordered.append(m)
        # the file the backup's position falls in: it starts at or before it and ends at or after it
        # in every domain (a file of another lineage, one a restore left behind, does not)
        first = next((i for i, m in enumerate(ordered) if not covers(full["gtid"], m["gtid_end"])
                      and covers(full["gtid"], m["gtid_start"]) and covers(m["gtid_end"], full["gtid"])), None)
        if first is None:
            continue  # nothing after the backup, or a gap right after it
        chain = ordered[first:]
        contiguous = [chain[0]]
        for m in chain[1:]:
            if m["gtid_start"] != contiguous[-1]["gtid_end"]:
                break  # a gap, or another series
            contiguous.append(m)
        if to is not None:
            cut = next((i for i, m in enumerate(contiguous) if m["_time"] > to), None)
            contiguous = contiguous[: cut + 1] if cut is not None else contiguous
        end, best_end = contiguous[-1]["gtid_end"], best[1][-1]["gtid_end"] if best else None
        if best is None or (covers(end, best_end) and end != best_end) or (
                not covers(best_end, end) and contiguous[-1]["_time"] > best[1][-1]["_time"]):
            best = (host, contiguous)  # reaches further, or (neither includes the other) was shipped later
    if best is None:
        return {"binlogs": [], "binlog_host": None}
    return {"binlogs": best[1], "binlog_host": best[0]}


def _binlog_number(name: str) -> int:
    return int(name.rsplit(".", 1)[1])


# ---------------------------------------------------------------- Cassandra


def cassandra_snapshot(cfg: dict, bucket: Bucket) -> dict:
    """A snapshot of this node's tables (schema.cql included), streamed as one tar; then removed."""
    tag = f"hastack-{_stamp()}"
    key = bucket.key("cassandra-snapshot", f"{tag}.tar.zst.age")
    _run(["nodetool", "snapshot", "-t", tag])
    try:
        dirs, tables = [], {}
        for keyspace in sorted(os.listdir(CASSANDRA_DATA)):
            if keyspace in CASSANDRA_SYSTEM:
                continue
            for table_dir in sorted(os.listdir(os.path.join(CASSANDRA_DATA, keyspace))):
                snap = os.path.join(keyspace, table_dir, "snapshots", tag)
                full = os.path.join(CASSANDRA_DATA, snap)
                if os.path.isdir(full):
                    dirs.append(snap)
                    files = os.listdir(full)
                    tables[f"{keyspace}.{table_dir.rsplit('-', 1)[0]}"] = {
                        "files": len(files), "bytes": sum(os.path.getsize(os.path.join(full, f)) for f in files)}
        result = bucket.put_stream(key, ["tar", "-C", CASSANDRA_DATA, "-cf", "-", "--", *dirs] if dirs else
                                   ["tar", "-cf", "-", "-T", "/dev/null"],
                                   metadata={"kind": "cassandra-snapshot", "host": cfg["host"], "tag": tag})
    finally:
        _run(["nodetool", "clearsnapshot", "-t", tag])
    bucket.put_manifest(key, _manifest(cfg, "cassandra-snapshot", key, result, tag=tag, tables=tables,
                                       datacenter=cfg.get("cassandra_datacenter"), rack=cfg.get("cassandra_rack")))
    return result


# ---------------------------------------------------------------- Redis


def redis_rdb(cfg: dict, bucket: Bucket) -> dict | None:
    """The primary's RDB (a replica has the same data: it skips)."""
    env = {**os.environ, "REDISCLI_AUTH": _read(cfg["redis_password_file"])}  # never on a command line
    cli = ["redis-cli", "--tls", "--cacert", cfg["redis_ca"], "-h", cfg["private_ip"], "-p", str(cfg["redis_port"]),
           "--user", cfg["redis_user"], "--no-auth-warning"]
    role = subprocess.run(cli + ["ROLE"], env=env, capture_output=True, text=True, timeout=30)
    if role.returncode != 0:
        raise JobError(f"redis-cli ROLE failed: {role.stderr.strip()}")
    answer = role.stdout.split("\n", 1)[0].strip()
    if answer not in ("master", "slave"):  # redis-cli exits 0 on a server error (NOPERM, LOADING...)
        raise JobError(f"redis-cli ROLE answered {role.stdout.strip()[:200]!r}")
    if answer != "master":
        log.info("not the primary; the primary backs up the data set")
        return None
    key = bucket.key("redis-rdb", f"{_stamp()}.rdb.zst.age")
    with tempfile.TemporaryDirectory(dir=STATE_DIR) as tmp:
        rdb = os.path.join(tmp, "dump.rdb")
        got = subprocess.run(cli + ["--rdb", rdb], env=env, capture_output=True, text=True, timeout=3600)
        if got.returncode != 0 or not os.path.exists(rdb):
            raise JobError(f"redis-cli --rdb failed: {got.stderr.strip()}")
        result = bucket.put_stream(key, None, stdin_path=rdb, metadata={"kind": "redis-rdb", "host": cfg["host"]})
    bucket.put_manifest(key, _manifest(cfg, "redis-rdb", key, result))
    return result


# ---------------------------------------------------------------- running a job


JOBS = {"mariadb-full": mariadb_full, "mariadb-binlog": mariadb_binlog,
        "cassandra-snapshot": cassandra_snapshot, "redis-rdb": redis_rdb}


def write_metrics(kind: str, ok: bool, result: dict | None, seconds: float) -> None:
    """node exporter textfile: last success time, duration and size per kind; the last run's outcome."""
    path = os.path.join(METRICS_DIR, f"hastack_backup_{kind.replace('-', '_')}.prom")
    previous = _read_metrics(path)
    now = time.time()
    lines = [
        "# HELP hastack_backup_last_run_success 1 if the last run of this backup kind succeeded.",
        "# TYPE hastack_backup_last_run_success gauge",
        f'hastack_backup_last_run_success{{kind="{kind}"}} {1 if ok else 0}',
        "# HELP hastack_backup_last_run_timestamp_seconds When this backup kind last ran.",
        "# TYPE hastack_backup_last_run_timestamp_seconds gauge",
        f'hastack_backup_last_run_timestamp_seconds{{kind="{kind}"}} {now:.0f}',
    ]
    success = {"ts": now, "duration": seconds, "size": (result or {}).get("size", 0)} if ok else previous
    if success:
        lines += [
            "# HELP hastack_backup_last_success_timestamp_seconds When this backup kind last succeeded.",
            "# TYPE hastack_backup_last_success_timestamp_seconds gauge",
            f'hastack_backup_last_success_timestamp_seconds{{kind="{kind}"}} {success["ts"]:.0f}',
            "# HELP hastack_backup_last_success_duration_seconds How long its last success took.",
            "# TYPE hastack_backup_last_success_duration_seconds gauge",
            f'hastack_backup_last_success_duration_seconds{{kind="{kind}"}} {success["duration"]:.3f}',
            "# HELP hastack_backup_last_success_size_bytes Bytes uploaded by its last success (encrypted).",
            "# TYPE hastack_backup_last_success_size_bytes gauge",
            f'hastack_backup_last_success_size_bytes{{kind="{kind}"}} {success["size"]}',
        ]
    os.makedirs(METRICS_DIR, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)  # the collector never reads half a file


def _read_metrics(path: str) -> dict | None:
    values = {}
    try:
        for line in open(path):
            for name, field in (("last_success_timestamp_seconds", "ts"), ("last_success_duration_seconds", "duration"),
                                ("last_success_size_bytes", "size")):
                if line.startswith(f"hastack_backup_{name}"):
                    values[field] = float(line.rsplit(" ", 1)[1])
    except OSError:
        return None
    return values if len(values) == 3 else None


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise JobError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _read_json(path: str, default):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def _write_json(path: str, value) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hastack-backup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="/etc/hastack/backup.json")
    parser.add_argument("kind", choices=KINDS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    with open(args.config) as f:
        cfg = json.load(f)
    if args.kind not in cfg["kinds"]:
        log.error("%s is not backed up on this host (kinds here: %s)", args.kind, ", ".join(cfg["kinds"]))
        return 2
    os.makedirs(STATE_DIR, mode=0o700, exist_ok=True)
    # one job of a kind at a time, whoever starts it (timer, `hastack backup now`, by hand)
    with open(os.path.join(STATE_DIR, f"{args.kind}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        try:
            result = JOBS[args.kind](cfg, Bucket(cfg))
        except Exception as e:  # noqa: BLE001 - every failure is reported the same way
            write_metrics(args.kind, False, None, time.monotonic() - started)
            log.error("%s failed: %s", args.kind, e)
            return 1
        seconds = time.monotonic() - started
        write_metrics(args.kind, True, result, seconds)
        if result is None:
            log.info("%s: nothing to do on this host", args.kind)
        else:
            log.info("%s done in %.1fs: %s bytes", args.kind, seconds, result.get("size"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
