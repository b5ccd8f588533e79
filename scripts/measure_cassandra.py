#!/usr/bin/env python3
"""The Cassandra ring on the lab: time to form a 3-node ring, time to add a
node, and the QUORUM success rate while one node stops and starts again.

- Forming: every node configured by the converge but stopped and empty (as
  after `pulumi up` on new servers); timed is the ring orchestrator alone,
  seed first and one node at a time, until all are Up/Normal and serve CQL,
  then the default superuser replaced and system_auth repaired.
- Adding: a fourth machine, configured by the converge with the ring left
  alone; timed is the orchestrator joining it (Up/Normal everywhere, data
  streamed) and the cleanup of the others. It is then decommissioned (timed
  too) and removed.
- QUORUM: a client on the first node writes and reads back a row at QUORUM
  every 50 ms for 30 s; the last node is stopped at 5 s and started at 20 s.

Destroys the lab ring's data (it is re-formed). Run as root on a lab that is
up. Prints every run and medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hastack.converge import converge  # noqa: E402
from hastack.lab import Lab  # noqa: E402
from hastack.lab.layout import lab_topology  # noqa: E402
from tests.support import cassandra_ring  # noqa: E402
from tests.support.cassandra_ring import KEYSPACE  # noqa: E402

WIPE = ("systemctl stop cassandra.service; rm -rf /var/lib/cassandra/data /var/lib/cassandra/commitlog "
        "/var/lib/cassandra/hints /var/lib/cassandra/saved_caches /var/lib/hastack/cassandra/auth-secured "
        "/var/lib/hastack/cassandra/cleanup-needed /var/lib/hastack/cassandra/restart-needed")


def form(lab) -> float:
    nodes = [n.host for n in lab.topo.cluster("cassandra").nodes]
    for node in nodes:
        lab.exec(node, ["bash", "-c", WIPE])
    t0 = time.monotonic()
    actions = cassandra_ring.ring(lab).converge(lab.topo.cluster("cassandra").replication_factor, lab.topo.cluster("cassandra").datacenter)
    took = time.monotonic() - t0
    joined = [n for n, a in actions if a == "joined the ring"]
    if joined != list(lab.topo.cluster("cassandra").join_order):
        raise RuntimeError(f"the nodes did not join in the topology's order: {actions}")
    return took


def add_and_remove(lab) -> tuple[float, float]:
    big = Lab("lab", topo=lab_topology("lab", counts={"cassandra": 4}), log=lambda m: None)
    new = next(n.host for n in big.topo.cluster("cassandra").nodes if n.host not in {m.host for m in lab.topo.cluster("cassandra").nodes})
    try:
        big.up(converge=False)
        report = converge(big.inventory_entries(), after_roles=False)
        if not report.ok:
            raise RuntimeError(f"converge failed: { {n: r.failed for n, r in report.hosts.items() if r.failed} }")
        ring = cassandra_ring.ring(big, big.topo)
        t0 = time.monotonic()
        actions = ring.converge(big.topo.cluster("cassandra").replication_factor, big.topo.cluster("cassandra").datacenter)
        added = time.monotonic() - t0
        if (new, "joined the ring") not in actions:
            raise RuntimeError(f"{new} did not join the ring: {actions}")
        t0 = time.monotonic()
        ring.decommission(new, big.topo.cluster("cassandra").replication_factor)
        removed = time.monotonic() - t0
    finally:
        big.machine(new).remove()
    return added, removed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--quorum-runs", type=int, default=5)
    a = p.parse_args()
    lab = Lab("lab", log=lambda m: None)
    nodes = [n.host for n in lab.topo.cluster("cassandra").nodes]

    formed = []
    for n in range(1, a.runs + 1):
        formed.append(form(lab))
        print(f"form run {n}: 3-node ring Up/Normal and secured in {formed[-1]:.1f} s", flush=True)
    cassandra_ring.cql(lab, nodes[0], KEYSPACE)
    cassandra_ring.cql(lab, nodes[0], "; ".join(f"INSERT INTO hastack_probe.kv (k, v) VALUES (uuid(), 'row-{i}')"  # nosec B608  # i: an int
                                                for i in range(500)))

    added, removed = [], []
    for n in range(1, a.runs + 1):
        add, rem = add_and_remove(lab)
        added.append(add)
        removed.append(rem)
        print(f"grow run {n}: fourth node joined (and the others cleaned up) in {add:.1f} s; "
              f"decommissioned in {rem:.1f} s", flush=True)

    rates, total, failed = [], 0, 0
    for n in range(1, a.quorum_runs + 1):
        r = cassandra_ring.quorum_during_stop(lab, victim=nodes[-1], via=nodes[0])
        cassandra_ring.ring(lab).wait_normal(nodes[-1], timeout=300)
        rates.append(r["success_rate"])
        total, failed = total + r["requests"], failed + r["failed"]
        print(f"quorum run {n}: {r['requests'] - r['failed']}/{r['requests']} succeeded "
              f"({r['success_rate'] * 100:.2f} %) {r['errors'] or ''}", flush=True)

    print(f"form a 3-node ring: median {statistics.median(formed):.1f} s (runs: "
          f"{', '.join(f'{x:.1f}' for x in formed)})")
    print(f"add a node: median {statistics.median(added):.1f} s; decommission it: median "
          f"{statistics.median(removed):.1f} s")
    print(f"QUORUM write+read during a node stop: {total - failed}/{total} succeeded "
          f"({(total - failed) / total * 100:.2f} %), worst run {min(rates) * 100:.2f} %")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
