#!/usr/bin/python3
"""CQL on a Cassandra node as the generated superuser, for restores (Debian's python3-cassandra).

  cassandra-cql --address IP --ca FILE --password-file FILE apply      statements on stdin, ';'-separated
  cassandra-cql --address IP --ca FILE --password-file FILE counts KS...  rows per table at QUORUM, JSON

The password is read from the node's root-only file, never from the command line.
"""

from __future__ import annotations

import argparse
import json
import sys

from cassandra import ConsistencyLevel
from cassandra.query import SimpleStatement

try:  # on a node, beside it in /opt/hastack
    from cassandra_auth import connect
except ImportError:  # in the repository
    from roles.cassandra.auth import connect

SYSTEM = {"system", "system_schema", "system_auth", "system_distributed", "system_traces", "system_views",
          "system_virtual_schema"}


def statements(text: str) -> list[str]:
    return [s.strip() for s in text.split(";\n") if s.strip() and not s.strip().startswith("--")]


def apply(session, text: str) -> int:
    n = 0
    for stmt in statements(text):
        session.execute(stmt.rstrip(";"), timeout=120)
        n += 1
    session.cluster.control_connection.wait_for_schema_agreement(wait_time=120)
    return n


def counts(session, keyspaces: list[str]) -> dict[str, int]:
    out = {}
    for ks in keyspaces:
        for row in session.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (ks,)):
            # B608: identifiers (CQL binds none): a keyspace that system_schema has (matched above, bound)
            # and a table read from it; Cassandra's names are [A-Za-z0-9_] only
            stmt = SimpleStatement(f'SELECT COUNT(*) FROM "{ks}"."{row.table_name}"',  # nosec B608
                                   consistency_level=ConsistencyLevel.QUORUM, fetch_size=5000)
            out[f"{ks}.{row.table_name}"] = session.execute(stmt, timeout=600).one()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cassandra-cql")
    p.add_argument("--address", required=True)
    p.add_argument("--port", type=int, default=9042)
    p.add_argument("--ca", required=True)
    p.add_argument("--user", default="admin")
    p.add_argument("--password-file", required=True)
    p.add_argument("command", choices=("apply", "counts", "keyspaces"))
    p.add_argument("keyspaces", nargs="*")
    a = p.parse_args(argv)
    with open(a.password_file) as f:
        password = f.read().strip()
    cluster, session = connect(a.address, a.port, a.ca, a.user, password)
    try:
        if a.command == "apply":
            print(json.dumps({"applied": apply(session, sys.stdin.read())}))
        elif a.command == "keyspaces":
            rows = session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
            print(json.dumps(sorted(r.keyspace_name for r in rows if r.keyspace_name not in SYSTEM)))
        else:
            print(json.dumps(counts(session, a.keyspaces)))
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
