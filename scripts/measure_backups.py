#!/usr/bin/env python3
"""Backups on the lab: duration and size per kind, and how long a committed write
takes to reach the bucket in a shipped binlog.

Duration and size: `hastack backup now --kind K`, then each host's own
metrics (the agent's textfile for the node exporter), over --runs runs.

Binlog shipping delay: a client POSTs a record every 100 ms through the
floating IP (10 writes/s). Every binlog object shipped meanwhile is fetched
with the restore reader, decrypted with the operator's age key and searched
for the records' request ids (row events carry them verbatim); a write's
delay is the time its first binlog object appeared in the bucket minus the
time it was acknowledged. With --failover, the writer's machine is cut off
in the middle of the run and started again; the newest binlog in the bucket
is sampled every 5 s to show shipping never stalls.

Run as root on a lab that is up. Prints every figure, medians and worsts.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab import Lab  # noqa: E402
from roles.backup.agent import KINDS  # noqa: E402
from roles.backup.cli import reader_client  # noqa: E402
from hastack.lab import probe  # noqa: E402
from tests.support import mariadb_pair  # noqa: E402

HASTACK = str(Path(__file__).resolve().parent.parent / ".venv" / "bin" / "hastack")


def metrics(lab, host: str, kind: str) -> dict[str, float]:
    text = lab.exec(host, ["cat", f"/var/lib/prometheus/node-exporter/hastack_backup_{kind.replace('-', '_')}.prom"]).stdout
    out = {}
    for line in text.splitlines():
        if line.startswith("hastack_backup_last_success_"):
            name, value = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
            out[name.removeprefix("hastack_backup_last_success_")] = value
    return out


def backup_runs(lab, runs: int) -> None:
    hosts = {k: [h.name for h in lab.topo.hosts if k in lab.topo.host_data(h).get("backup_kinds", [])] for k in KINDS}
    primary = lab.topo.cluster("redis").primary
    for kind in ("mariadb-full", "cassandra-snapshot", "redis-rdb"):
        durations, sizes, walls = [], [], []
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run([HASTACK, "backup", "now", "--stack", lab.stack, "--kind", kind], check=True,
                           capture_output=True)
            walls.append(time.monotonic() - t0)
            for host in hosts[kind]:
                m = metrics(lab, host, kind)
                if kind == "redis-rdb" and host != primary:
                    continue
                durations.append(m["duration_seconds"])
                sizes.append(m["size_bytes"])
        print(f"{kind:20} per host: median {statistics.median(durations):.1f} s (max {max(durations):.1f}), "
              f"size median {statistics.median(sizes) / 1e3:.1f} kB encrypted; `backup now` for all "
              f"{len(hosts[kind])} hosts: median {statistics.median(walls):.1f} s ({runs} runs)")


def binlog_objects(s3, bucket: str) -> dict[str, float]:
    """key -> LastModified (epoch) of every complete binlog object."""
    found, keys = {}, set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            keys.add(obj["Key"])
            if "/mariadb-binlog/" in obj["Key"] and obj["Key"].endswith(".manifest.json"):
                found[obj["Key"][: -len(".manifest.json")]] = obj["LastModified"].timestamp()
    return {k: t for k, t in found.items() if k in keys}


def shipping_delay(lab, seconds: float, failover: bool) -> None:
    outputs = lab.stack_outputs()
    s3, bucket = reader_client(outputs), outputs["backupBucket"]
    identity = lab.paths.secrets / "backup-age.key"
    before = set(binlog_objects(s3, bucket))
    writer = mariadb_pair.settled(lab)
    stream = mariadb_pair.write_stream(lab, seconds, interval=0.1)
    ages, t0, stopped, started = [], time.monotonic(), False, False
    while time.monotonic() - t0 < seconds:
        objects = binlog_objects(s3, bucket)
        ages.append(time.time() - max(objects.values()) if objects else float("inf"))
        if failover and not stopped and time.monotonic() - t0 > seconds / 3:
            lab.stop(writer, hard=True)
            stopped = True
            print(f"  {time.monotonic() - t0:.0f} s: writer {writer} cut off")
        if stopped and not started and time.monotonic() - t0 > seconds / 2:
            lab.start(writer)
            started = True
            print(f"  {time.monotonic() - t0:.0f} s: {writer} back")
        time.sleep(5)
    records = probe.records(stream, timeout=120)
    time.sleep(90)  # the last writes' binlogs ship
    acked = {r["request_id"]: r["t"] + r["d"] for r in records if r["ok"]}
    first_seen: dict[str, float] = {}
    for key, shipped_at in sorted(binlog_objects(s3, bucket).items(), key=lambda kv: kv[1]):
        if key in before:
            continue
        blob = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        plain = subprocess.run(["age", "-d", "-i", str(identity)], input=blob, capture_output=True, check=True).stdout
        binlog = subprocess.run(["zstd", "-dc"], input=plain, capture_output=True, check=True).stdout
        for rid in acked:
            if rid not in first_seen and rid.encode() in binlog:
                first_seen[rid] = shipped_at
    delays = sorted(first_seen[r] - acked[r] for r in first_seen)
    missing = len(acked) - len(first_seen)
    p95 = delays[int(0.95 * (len(delays) - 1))] if delays else float("nan")
    print(f"writes: {len(records)} sent (one every 100 ms when answered in time), {len(acked)} acknowledged, "
          f"over {seconds:.0f} s")
    print(f"binlog shipping delay, {len(acked)} acknowledged writes"
          f"{' with a writer failover' if failover else ''}: median {statistics.median(delays):.1f} s, "
          f"p95 {p95:.1f} s, max {delays[-1]:.1f} s; not shipped: {missing}")
    print(f"newest binlog in the bucket, sampled every 5 s: median age {statistics.median(ages):.0f} s, "
          f"oldest {max(ages):.0f} s")
    mariadb_pair.settled(lab)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="backup runs per kind")
    parser.add_argument("--seconds", type=float, default=120, help="length of the binlog shipping run")
    parser.add_argument("--failover", action="store_true", help="cut the writer off in the middle of the run")
    parser.add_argument("--skip-backups", action="store_true")
    args = parser.parse_args()
    lab = Lab("lab")
    if not args.skip_backups:
        backup_runs(lab, args.runs)
    shipping_delay(lab, args.seconds, args.failover)


if __name__ == "__main__":
    main()
