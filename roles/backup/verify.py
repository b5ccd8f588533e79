#!/usr/bin/python3
"""hastack-backup-verify: restore the newest MariaDB backup into a scratch server and check it.

Runs weekly on the monitoring host (and on demand: `hastack backup verify`). The newest
complete full backup and the binlogs that continue it are downloaded as the restore
reader, decrypted with the restore-verification key, prepared, started as a scratch
MariaDB (no network, its own socket, removed afterwards) and replayed up to the position
where the backup recorded every table's row count and digest; those are compared. The
result goes to the node exporter's textfile collector and, as JSON, to standard output
and /var/lib/hastack/backup/verify-result.json.

A backup that has never been restored is a hope, not a backup.

Runs with Debian's python3 (python3-boto3), beside backup_agent.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone

try:  # on the host, beside it in /opt/hastack
    import backup_agent as agent
except ImportError:  # in the repository
    from roles.backup import agent

WORK = "/var/lib/hastack/verify"
RESULT = "/var/lib/hastack/backup/verify-result.json"
METRICS = os.path.join(agent.METRICS_DIR, "hastack_backup_verify.prom")


class VerifyError(RuntimeError):
    pass


def reader(cfg: dict):
    import boto3

    return boto3.client("s3", region_name=cfg["region"], endpoint_url=cfg.get("endpoint") or None,
                        verify=cfg.get("ca_file") or True, aws_access_key_id=cfg["access_key_id"],
                        aws_secret_access_key=cfg["secret_access_key"])


def newest(s3, cfg: dict) -> tuple[dict, list[dict]]:
    """The newest complete full backup of any master and the binlogs that continue it."""
    objects = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg["bucket"], Prefix=cfg["prefix"]):
        for obj in page.get("Contents", []):
            objects[obj["Key"]] = obj

    def manifest(key: str) -> dict:
        try:
            return agent.checked_manifest(
                json.loads(s3.get_object(Bucket=cfg["bucket"], Key=key + ".manifest.json")["Body"].read()), key)
        except ValueError as e:  # ManifestError, or not JSON
            raise VerifyError(f"a manifest that cannot be trusted: {e}") from None

    complete = {k[: -len(".manifest.json")]: o for k, o in objects.items()
                if k.endswith(".manifest.json") and k[: -len(".manifest.json")] in objects}
    fulls = sorted((o["LastModified"], k) for k, o in complete.items() if k.split("/")[-2] == "mariadb-full")
    if not fulls:
        raise VerifyError(f"no complete MariaDB full backup under {cfg['prefix']} in {cfg['bucket']}")
    full = manifest(fulls[-1][1])
    began = fulls[-1][0].timestamp() - float(full.get("seconds", 0)) - 300
    by_host: dict[str, list[dict]] = {}
    for key, obj in complete.items():
        parts = key.split("/")
        if parts[-2] == "mariadb-binlog" and obj["LastModified"].timestamp() >= began:
            by_host.setdefault(parts[-3], []).append(manifest(key) | {"_time": obj["LastModified"]})
    return full, agent.choose_chain(full, by_host)["binlogs"]


def fetch(s3, cfg: dict, manifest: dict, sink: list[str]) -> None:
    """The object, decrypted with the verification key, into ``sink`` (a shell pipeline reading zstd)."""
    body = s3.get_object(Bucket=cfg["bucket"], Key=manifest["object"])["Body"]
    age = subprocess.Popen(["age", "-d", "-i", cfg["identity_file"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    out = subprocess.Popen(["bash", "-o", "pipefail", "-c", " ".join(sink)], stdin=age.stdout, stderr=subprocess.PIPE)
    age.stdout.close()
    import hashlib

    digest = hashlib.sha256()
    for chunk in body.iter_chunks(1024 * 1024):
        digest.update(chunk)
        age.stdin.write(chunk)
    age.stdin.close()
    age_err = age.stderr.read()
    age.wait()
    _, sink_err = out.communicate()
    if digest.hexdigest() != manifest["sha256"]:
        raise VerifyError(f"{manifest['object']} is not what was uploaded (SHA-256 differs from its manifest)")
    if age.returncode or out.returncode:
        raise VerifyError(f"{manifest['object']}: {(age_err or sink_err).decode(errors='replace').strip()[-300:]}")


def sql(socket: str, statement: str) -> list[list[str]]:
    proc = subprocess.run(["mariadb", f"--socket={socket}", "--batch", "--skip-column-names", "-e", statement],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise VerifyError(f"scratch server: {proc.stderr.strip()[-300:]}")
    return [line.split("\t") for line in proc.stdout.splitlines() if line]


def verify(cfg: dict) -> dict:
    s3 = reader(cfg)
    full, binlogs = newest(s3, cfg)
    checkpoint = full.get("checksums")
    if not checkpoint:
        raise VerifyError(f"{full['object']} records no row counts and digests to compare with")
    work = os.path.join(WORK, datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    data, logs, socket = f"{work}/data", f"{work}/binlogs", f"{work}/mysqld.sock"
    os.makedirs(logs, mode=0o700)
    server = None
    try:
        os.makedirs(data, mode=0o700)
        fetch(s3, cfg, full, ["zstd", "-dc", "|", "mbstream", "-x", "-C", data])
        files = [os.path.join(logs, f"{i:06d}-{m['binlog']}") for i, m in enumerate(binlogs)]
        for m, path in zip(binlogs, files, strict=True):
            fetch(s3, cfg, m, ["zstd", "-dc", ">", path])
        prep = subprocess.run(["mariadb-backup", "--prepare", f"--target-dir={data}"], capture_output=True, text=True)
        if prep.returncode:
            raise VerifyError(f"mariadb-backup --prepare failed: {prep.stderr.strip()[-300:]}")
        shutil.chown(work, "mysql", "mysql")
        subprocess.run(["chown", "-R", "mysql:mysql", work], check=True)
        server = subprocess.Popen([
            "mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={socket}", "--skip-networking",
            "--skip-grant-tables", "--user=mysql", f"--pid-file={work}/mysqld.pid", f"--log-error={work}/error.log",
            "--innodb-buffer-pool-size=128M", "--server-id=4294967295", f"--log-bin={work}/verify-bin",
            "--gtid-strict-mode=ON"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not os.path.exists(socket):
            if server.poll() is not None or time.monotonic() > deadline:
                raise VerifyError(f"the scratch server did not start: {_tail(f'{work}/error.log')}")
            time.sleep(0.5)
        sql(socket, f"RESET MASTER; SET GLOBAL gtid_binlog_state = '{full['gtid']}'")
        if not agent.covers(full["gtid"], checkpoint["gtid"]):
            if not binlogs:
                raise VerifyError(f"no binlog continues {full['object']} to its verification point {checkpoint['gtid']}")
            names = " ".join(files)
            replay = subprocess.run(
                ["bash", "-o", "pipefail", "-c",
                 "TZ=UTC mariadb-binlog --skip-gtid-strict-mode "
                 f"--start-position={agent.start_position(full['gtid'], binlogs)} "
                 f"--stop-position={checkpoint['gtid']} {names} | mariadb --socket={socket} --binary-mode"],
                capture_output=True, text=True, timeout=7200)
            if replay.returncode:
                raise VerifyError(f"binlog replay failed: {replay.stderr.strip()[-300:]}")
        reached = sql(socket, "SELECT @@gtid_binlog_pos")[0][0]
        if not agent.covers(reached, checkpoint["gtid"]):
            raise VerifyError(f"the binlogs reach {reached}, short of the verification point {checkpoint['gtid']}")
        database = full.get("database", "hastack")
        columns: dict[str, list[str]] = {}
        # B608: the database has its settings' form (agent.checked_manifest, as `newest` read it), in SQL text:
        # the mariadb client binds no parameters
        for table, column in sql(socket, "SELECT c.table_name, c.column_name FROM information_schema.columns c "
                                         "JOIN information_schema.tables t USING (table_schema, table_name) "
                                         f"WHERE c.table_schema = '{database}' AND t.table_type = 'BASE TABLE' "  # nosec B608
                                         "ORDER BY c.table_name, c.ordinal_position"):
            columns.setdefault(table, []).append(column)
        got = {}
        for table, cols in columns.items():
            rows, digest = sql(socket, agent.digest_sql(database, table, cols))[0]
            got[table] = {"rows": int(rows), "digest": digest}
        want = checkpoint["tables"]
        wrong = sorted(t for t in set(got) | set(want) if got.get(t) != want.get(t))
        if wrong:
            raise VerifyError("restored tables differ from the backup's record: " + ", ".join(wrong))
        return {"ok": True, "backup": full["object"], "backup_created": full["created"], "binlogs": len(binlogs),
                "gtid": checkpoint["gtid"], "tables": len(want), "rows": sum(t["rows"] for t in want.values())}
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)


def _tail(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()[-300:]
    except OSError:
        return "(no error log)"


def write_metrics(result: dict, seconds: float) -> None:
    previous = {}
    try:
        for line in open(METRICS):
            if line.startswith("hastack_backup_verify_last_success_timestamp_seconds "):
                previous["ts"] = line.split()[1]
    except OSError:
        pass
    now = time.time()
    ok = result["ok"]
    lines = [
        "# HELP hastack_backup_verify_last_run_success 1 if the last test restore of the MariaDB backup succeeded.",
        "# TYPE hastack_backup_verify_last_run_success gauge",
        f"hastack_backup_verify_last_run_success {1 if ok else 0}",
        "# HELP hastack_backup_verify_last_run_timestamp_seconds When the last test restore ran.",
        "# TYPE hastack_backup_verify_last_run_timestamp_seconds gauge",
        f"hastack_backup_verify_last_run_timestamp_seconds {now:.0f}",
        "# HELP hastack_backup_verify_duration_seconds How long the last test restore took.",
        "# TYPE hastack_backup_verify_duration_seconds gauge",
        f"hastack_backup_verify_duration_seconds {seconds:.1f}",
    ]
    success = f"{now:.0f}" if ok else previous.get("ts")
    if success:
        lines += ["# HELP hastack_backup_verify_last_success_timestamp_seconds When a test restore last succeeded.",
                  "# TYPE hastack_backup_verify_last_success_timestamp_seconds gauge",
                  f"hastack_backup_verify_last_success_timestamp_seconds {success}"]
    if ok:
        lines += ["# HELP hastack_backup_verify_rows Rows the last successful test restore compared.",
                  "# TYPE hastack_backup_verify_rows gauge", f"hastack_backup_verify_rows {result['rows']}"]
    os.makedirs(agent.METRICS_DIR, exist_ok=True)
    with open(METRICS + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(METRICS + ".tmp", 0o644)
    os.replace(METRICS + ".tmp", METRICS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="hastack-backup-verify", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="/etc/hastack/backup-verify.json")
    a = p.parse_args(argv)
    with open(a.config) as f:
        cfg = json.load(f)
    started = time.monotonic()
    try:
        result = verify(cfg)
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        result = {"ok": False, "error": str(e)}
    seconds = time.monotonic() - started
    result["seconds"] = round(seconds, 1)
    result["at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_metrics(result, seconds)
    os.makedirs(os.path.dirname(RESULT), mode=0o700, exist_ok=True)
    with open(RESULT, "w") as f:
        json.dump(result, f)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
