"""The Cassandra ring on the lab, as the tests and the measurement script drive it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from roles.cassandra import CQL_PORT
from roles.cassandra.config import TLS_DIR
from roles.cassandra.ring import STATE_DIR, Ring, parse_status

# the client runs on a Cassandra machine (python3 -, the file on stdin), with the node's
# files as the cassandra role puts them there: the stack CA, the admin's password
CLIENT = Path(__file__).with_name("cql_client.py").read_text()
CLIENT_FILES = ("--ca", f"{TLS_DIR}/ca.crt", "--password-file", f"{STATE_DIR}/admin-password")
# the probe keyspace: replicated to every node of a 3-node ring
KEYSPACE = ("CREATE KEYSPACE IF NOT EXISTS hastack_probe WITH replication = "
            "{'class': 'NetworkTopologyStrategy', 'lab': 3}; "
            "CREATE TABLE IF NOT EXISTS hastack_probe.kv (k uuid PRIMARY KEY, v text)")


def runner(lab):
    """The ring orchestrator's `run`, through the lab's machines (root, no SSH)."""
    def run(name: str, command: str, timeout: float = 120) -> tuple[bool, str, str]:
        proc = lab.machine(name).exec(["bash", "-c", command], check=False, timeout=timeout)
        return proc.returncode == 0, proc.stdout, proc.stderr

    return run


def serves_cql(lab, node: str) -> bool:
    """Whether ``node`` listens for CQL: it does from the moment it has joined (or rejoined) the ring to its
    stop. A look at its sockets, cheap enough to poll, where `nodetool` starts a JVM each time."""
    proc = lab.exec(node, ["ss", "-Htln", f"sport = :{CQL_PORT}"])
    return proc.returncode == 0 and bool(proc.stdout.strip())


def wait_all_normal(lab, via: str, nodes: list[str], timeout: float) -> None:
    """Until every node of ``nodes`` is Up/Normal in ``via``'s view: each serving CQL first (polled
    cheaply), then `nodetool status` every 3 s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(serves_cql(lab, n) for n in nodes):
            members = parse_status(lab.exec(via, ["nodetool", "status"]).stdout)
            if sum(1 for m in members.values() if m.state == "UN") == len(nodes):
                return
            time.sleep(3)
        else:
            time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for every Cassandra node Up/Normal")


def ring(lab, topo=None) -> Ring:
    return Ring((topo or lab.topo).cluster("cassandra").join_order, runner(lab))


def client(lab, node: str, *args: str, timeout: float = 120) -> Any:
    proc = lab.exec(node, ["python3", "-", *CLIENT_FILES, *args], input=CLIENT)
    if proc.returncode != 0:
        raise RuntimeError(f"{node}: CQL client {args[0]} failed: {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout)


def cql(lab, node: str, statements: str, consistency: str = "QUORUM", address: str | None = None) -> list[list[str]]:
    """Statements through one node (``address``, default the node's own) as the admin."""
    return client(lab, node, "cql", address or lab.topo.host(node).private_ip, consistency, statements)


def quorum_during_stop(lab, victim: str, via: str, seconds: float = 30, stop_at: float = 5,
                       start_at: float = 20, interval: float = 0.05) -> dict[str, Any]:
    """QUORUM write+read pairs every ``interval`` s from ``via`` while ``victim`` is stopped and
    started again; every request counted."""
    addresses = [lab.topo.host(n.host).private_ip for n in lab.topo.cluster("cassandra").nodes]
    proc = lab.machine(via).popen(["python3", "-", *CLIENT_FILES, "stream", str(seconds), str(interval), *addresses],
                                  input=CLIENT)
    t0 = time.monotonic()
    time.sleep(stop_at)
    lab.exec(victim, ["systemctl", "stop", "cassandra.service"])
    stopped = time.monotonic() - t0
    time.sleep(max(0.0, start_at - (time.monotonic() - t0)))
    lab.exec(victim, ["systemctl", "start", "cassandra.service"])
    out, err = proc.communicate(timeout=seconds + 60)
    records = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    failed = [r for r in records if not r["ok"]]
    return {"requests": len(records), "failed": len(failed), "stopped_after_s": round(stopped, 1),
            "success_rate": (len(records) - len(failed)) / len(records) if records else 0.0,
            "errors": sorted({r.get("error", "wrong value")[:100] for r in failed})[:5], "stderr": err[-400:]}
