"""A CQL client the lab runs on a Cassandra machine (Debian's python3-cassandra),
with the admin password read from the node's root-only file. Prints JSON.

The node's files are named by the caller (tests/support/cassandra_ring.py, from
the cassandra role's own constants), never here:

  python3 - --ca FILE --password-file FILE COMMAND ...
    check ADDRESS                 which logins the node accepts
    cql ADDRESS CONSISTENCY STMT  run statements (';'-separated), rows back
    stream SECONDS INTERVAL ADDRESS...
                                  QUORUM write then read, every INTERVAL s;
                                  one JSON line per request
"""

import argparse
import json
import ssl
import sys
import time
import uuid

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy, WhiteListRoundRobinPolicy

# set from the command line (main): the stack CA the node's certificate verifies against,
# and the root-only file with the generated superuser's password
FILES = {"ca": None, "password_file": None}


def tls():
    ctx = ssl.create_default_context(cafile=FILES["ca"])
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def admin_password():
    with open(FILES["password_file"]) as f:
        return f.read().strip()


def cluster(addresses, user="admin", password=None, use_tls=True, only=False, consistency="QUORUM"):
    policy = WhiteListRoundRobinPolicy(addresses) if only else TokenAwarePolicy(DCAwareRoundRobinPolicy())
    profile = ExecutionProfile(load_balancing_policy=policy, request_timeout=10,
                               consistency_level=getattr(ConsistencyLevel, consistency))
    return Cluster(addresses, ssl_context=tls() if use_tls else None, connect_timeout=10,
                   auth_provider=PlainTextAuthProvider(user, password if password is not None else admin_password()),
                   execution_profiles={EXEC_PROFILE_DEFAULT: profile})


def attempt(address, **kw):
    c = cluster([address], only=True, **kw)
    try:
        c.connect().execute("SELECT release_version FROM system.local")
        return "accepted"
    except Exception as e:  # noqa: BLE001 - the refusal is the data
        return "refused: " + type(e).__name__
    finally:
        c.shutdown()


def check(address):
    print(json.dumps({
        "admin over TLS": attempt(address),
        "cassandra/cassandra": attempt(address, user="cassandra", password="cassandra"),
        "admin without TLS": attempt(address, use_tls=False),
        "admin, wrong password": attempt(address, password="wrong"),
    }))


def cql(address, consistency, statements):
    c = cluster([address], only=True, consistency=consistency)
    try:
        session = c.connect()
        rows = []
        for stmt in filter(None, (s.strip() for s in statements.split(";"))):
            rows = [list(map(str, r)) for r in session.execute(stmt)]
        print(json.dumps(rows))
    finally:
        c.shutdown()


def stream(seconds, interval, addresses):
    c = cluster(addresses)
    session = c.connect()
    write = session.prepare("INSERT INTO hastack_probe.kv (k, v) VALUES (?, ?)")
    read = session.prepare("SELECT v FROM hastack_probe.kv WHERE k = ?")
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            t0 = time.monotonic()
            key, value = uuid.uuid4(), str(time.time())
            rec = {"t": time.time(), "k": str(key)}
            try:
                session.execute(write, (key, value))
                row = session.execute(read, (key,)).one()
                rec["ok"] = row is not None and row.v == value
            except Exception as e:  # noqa: BLE001 - every failure is a data point
                rec.update(ok=False, error=type(e).__name__ + ": " + str(e)[:160])
            rec["d"] = round(time.monotonic() - t0, 4)
            print(json.dumps(rec), flush=True)
            time.sleep(max(0.0, interval - (time.monotonic() - t0)))
    finally:
        c.shutdown()


def main(argv):
    p = argparse.ArgumentParser(prog="cql_client")
    p.add_argument("--ca", required=True, help="the CA file the node's certificate verifies against")
    p.add_argument("--password-file", required=True, help="the file holding the admin's password")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("check").add_argument("address")
    c = sub.add_parser("cql")
    c.add_argument("address")
    c.add_argument("consistency")
    c.add_argument("statements")
    s = sub.add_parser("stream")
    s.add_argument("seconds", type=float)
    s.add_argument("interval", type=float)
    s.add_argument("addresses", nargs="+")
    a = p.parse_args(argv)
    FILES.update(ca=a.ca, password_file=a.password_file)
    if a.command == "check":
        check(a.address)
    elif a.command == "cql":
        cql(a.address, a.consistency, a.statements)
    else:
        stream(a.seconds, a.interval, a.addresses)


if __name__ == "__main__":
    main(sys.argv[1:])
