#!/usr/bin/env python3
"""MariaDB pair on the lab: write outage when the writer dies, acknowledged
writes lost, and replication lag under a steady write load.

Writes go as a user's would: a client in the internet namespace POSTs a
record every 100 ms to https://<floating IP>/records (HAProxy -> app ->
local proxy -> writer). Each run stops the writer's machine like a power
cut, lets the other master take over, starts the dead one again, waits
until both replicate and agree, then counts every acknowledged write
(HTTP 201) missing on either master. Outage = from the last acknowledged
write before the first failure to the next acknowledged one.

Lag: while the stream writes, the passive master is polled every 50 ms for
the newest record; a record's lag is when the passive first held it minus
its commit time on the writer (both machines share the host's clock).

Run as root on a lab that is up. Prints every run, medians and worsts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.lab import Lab  # noqa: E402
from tests.support import mariadb_pair  # noqa: E402


def replication_lag(lab, seconds: float = 15, interval: float = 0.1) -> list[float]:
    writer = mariadb_pair.settled(lab)
    passive = next(h for h in mariadb_pair.masters(lab) if h != writer)
    start_id = int(mariadb_pair.sql(lab, writer, "SELECT IFNULL(MAX(id), 0) FROM hastack.records")[0][0])
    stream = mariadb_pair.write_stream(lab, seconds, interval)
    poll = lab.exec(passive, ["bash", "-c", (
        f"end=$((SECONDS + {int(seconds) + 3})); while [ $SECONDS -lt $end ]; do "  # nosec B608  # an int; the SQL is constant
        "mariadb -N -e 'SELECT UNIX_TIMESTAMP(NOW(6)), IFNULL(MAX(id), 0) FROM hastack.records'; sleep 0.05; done")])
    stream.communicate(timeout=seconds + 30)
    seen = [(float(t), int(i)) for t, i in (line.split("\t") for line in poll.stdout.splitlines())]
    committed = mariadb_pair.sql(lab, writer, f"SELECT id, UNIX_TIMESTAMP(created_at) FROM hastack.records "
                                              f"WHERE id > {start_id} ORDER BY id")  # nosec B608  # an int (int() above)
    lags = []
    for rid, t_commit in ((int(i), float(t)) for i, t in committed):
        t_seen = next((t for t, max_id in seen if max_id >= rid), None)
        if t_seen is not None:
            lags.append(max(0.0, t_seen - t_commit))
    return lags


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    lab = Lab("lab", log=lambda m: None)

    lags = replication_lag(lab)
    print(f"replication lag, 10 writes/s for 15 s ({len(lags)} records, 50 ms polling): "
          f"median {statistics.median(lags) * 1000:.0f} ms, p95 {sorted(lags)[int(len(lags) * 0.95)] * 1000:.0f} ms, "
          f"max {max(lags) * 1000:.0f} ms", flush=True)

    results = []
    for n in range(1, a.runs + 1):
        t0 = time.monotonic()
        r = mariadb_pair.kill_writer_run(lab)
        results.append(r)
        print(f"run {n}: killed {r['killed']}, writes moved to {r['new_writer']}; outage {r['outage_s']:.2f} s, "
              f"{r['failed']} failed of {r['requests']}; acknowledged {r['acked']}, lost {r['lost']}, "
              f"duplicates {r['duplicates']}, checksums match: {r['checksums_match']} "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
    outages = [r["outage_s"] for r in results]
    lost = sum(sum(r["lost"].values()) for r in results)
    acked = sum(r["acked"] for r in results)
    print(f"write outage when the writer dies: median {statistics.median(outages):.2f} s, worst {max(outages):.2f} s "
          f"over {len(outages)} runs; acknowledged writes lost: {lost} of {acked}; "
          f"checksums matched in {sum(r['checksums_match'] for r in results)} of {len(results)} runs")
    return 0 if lost == 0 and all(r["checksums_match"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
