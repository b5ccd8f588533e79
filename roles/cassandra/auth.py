"""Replacing Cassandra's default superuser, and replicating its auth data.

A new ring starts with the superuser cassandra/cassandra. Once every node is
up, one node is secured (over TLS, with the cassandra-driver):

1. log in as the generated admin; while the seed rotates, with its other password, then
   change it; on a new ring, as cassandra/cassandra (waiting until Cassandra has created it);
2. create the generated superuser (its password from the stack secret);
3. log in again as that superuser (a role cannot change its own superuser status);
4. replicate system_distributed and system_traces to the datacenter with the
   ring's replication factor (NetworkTopologyStrategy);
5. take superuser and login away from cassandra and give it a random password;
6. replicate system_auth the same way, last: until the repair below has copied
   the roles to their new replicas, a node may read a role from a replica that
   does not have it yet, and the admin would stop being a superuser in the
   middle of these steps.

Then `nodetool repair --full system_auth` on each node spreads the auth data to
its new replicas. Every step checks first, so a second run changes nothing and
returns no actions. Passwords travel as bound parameters, never in logged text.
"""

from __future__ import annotations

import secrets
import ssl
import time
from typing import Callable

from cassandra import AuthenticationFailed
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.policies import WhiteListRoundRobinPolicy

DEFAULT_USER = DEFAULT_PASSWORD = "cassandra"  # nosec B105  # Cassandra's public default superuser, which this module disables
REPLICATED_KEYSPACES = ("system_distributed", "system_traces")
AUTH_KEYSPACE = "system_auth"  # replicated last (6. above)


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Clients verify the node's certificate against the stack CA."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def node_cluster(address: str, port: int, ssl_context: ssl.SSLContext | None, user: str, password: str) -> Cluster:
    """A driver cluster talking to this one node only."""
    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([address]))
    return Cluster([address], port=port, ssl_context=ssl_context, protocol_version=5, connect_timeout=10,
                   auth_provider=PlainTextAuthProvider(user, password),
                   execution_profiles={EXEC_PROFILE_DEFAULT: profile})


def connect(address: str, port: int, ca_file: str, user: str, password: str) -> tuple[Cluster, Session]:
    cluster = node_cluster(address, port, tls_context(ca_file), user, password)
    try:
        return cluster, cluster.connect()
    except Exception:
        cluster.shutdown()
        raise


def _auth_failed(error: Exception) -> bool:
    if isinstance(error, AuthenticationFailed):
        return True
    return isinstance(error, NoHostAvailable) and any(
        isinstance(e, AuthenticationFailed) for e in error.errors.values())


def replication(datacenter: str, replication_factor: int) -> dict[str, str]:
    return {"class": "org.apache.cassandra.locator.NetworkTopologyStrategy", datacenter: str(replication_factor)}


def _connect_default(connector: Callable, address: str, port: int, ca_file: str, wait: float):
    deadline = time.monotonic() + wait
    while True:
        try:
            return connector(address, port, ca_file, DEFAULT_USER, DEFAULT_PASSWORD)
        except Exception as e:
            if not _auth_failed(e) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def _replicate(session: Session, keyspace: str, datacenter: str, replication_factor: int,
               actions: list[str]) -> None:
    row = session.execute("SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
                          (keyspace,)).one()
    if row is None or dict(row.replication) != replication(datacenter, replication_factor):
        session.execute(f"ALTER KEYSPACE {keyspace} WITH replication = "
                        f"{{'class': 'NetworkTopologyStrategy', '{datacenter}': {replication_factor}}}")
        actions.append(f"replicated {keyspace} ({datacenter}: {replication_factor})")


def _connect_other(connector: Callable, address: str, port: int, ca_file: str, admin_user: str,
                   other_passwords: list[str]):
    """The admin's session with one of its other passwords (the seed rotates), or None."""
    for password in other_passwords:
        try:
            return connector(address, port, ca_file, admin_user, password)
        except Exception as e:
            if not _auth_failed(e):
                raise
    return None


def _new_admin(connector: Callable, address: str, port: int, ca_file: str, admin_user: str, admin_password: str,
               other_passwords: list[str], default_wait: float, actions: list[str]):
    """The admin's session when its password does not log in: the seed rotates (an other password logs
    in; it is changed to ``admin_password``, in that session), or a new ring (created as cassandra)."""
    other = _connect_other(connector, address, port, ca_file, admin_user, other_passwords)
    if other is not None:
        other[1].execute(f'ALTER ROLE "{admin_user}" WITH PASSWORD = %s', (admin_password,))
        actions.append(f"changed the password of {admin_user}")
        return other
    # a new ring: only the default superuser exists, and only once Cassandra has set it up
    # (some seconds after start: cassandra.superuser_setup_delay_ms)
    cluster, session = _connect_default(connector, address, port, ca_file, default_wait)
    try:
        session.execute(f'CREATE ROLE IF NOT EXISTS "{admin_user}" WITH SUPERUSER = true AND LOGIN = true '
                        f"AND PASSWORD = %s", (admin_password,))
        actions.append(f"created superuser {admin_user}")
    finally:
        cluster.shutdown()
    return connector(address, port, ca_file, admin_user, admin_password)


def secure(address: str, port: int, ca_file: str, admin_user: str, admin_password: str, datacenter: str,
           replication_factor: int, connector: Callable = connect, default_wait: float = 90,
           other_passwords: list[str] = ()) -> list[str]:
    """Runs the steps above against one node; returns what it changed (empty: nothing to do).
    ``other_passwords``: the admin's passwords from the other seed while it rotates."""
    actions: list[str] = []
    try:
        cluster, session = connector(address, port, ca_file, admin_user, admin_password)
    except Exception as e:
        if not _auth_failed(e):
            raise
        cluster, session = _new_admin(connector, address, port, ca_file, admin_user, admin_password,
                                      list(other_passwords), default_wait, actions)

    try:
        for keyspace in REPLICATED_KEYSPACES:
            _replicate(session, keyspace, datacenter, replication_factor, actions)

        row = session.execute("SELECT is_superuser, can_login FROM system_auth.roles WHERE role = %s",
                              (DEFAULT_USER,)).one()
        if row is not None and (row.is_superuser or row.can_login):
            session.execute(f"ALTER ROLE {DEFAULT_USER} WITH SUPERUSER = false AND LOGIN = false AND PASSWORD = %s",
                            (secrets.token_urlsafe(32),))
            actions.append(f"disabled the default superuser {DEFAULT_USER}")

        _replicate(session, AUTH_KEYSPACE, datacenter, replication_factor, actions)
    finally:
        cluster.shutdown()
    return actions


def main(argv: list[str] | None = None) -> int:
    """Run on a node by the ring orchestrator: prints what changed, one line each."""
    import argparse

    p = argparse.ArgumentParser(description="replace Cassandra's default superuser; replicate system_auth")
    p.add_argument("--address", required=True)
    p.add_argument("--port", type=int, default=9042)
    p.add_argument("--ca", required=True)
    p.add_argument("--admin-user", default="admin")
    p.add_argument("--password-file", required=True, help="root-only file with the admin's password")
    p.add_argument("--other-passwords-file", help="root-only file with the admin's other passwords, one a line "
                                                  "(the seed rotates)")
    p.add_argument("--datacenter", required=True)
    p.add_argument("--replication-factor", type=int, required=True)
    a = p.parse_args(argv)
    with open(a.password_file) as f:
        password = f.read().strip()
    others = []
    if a.other_passwords_file:
        with open(a.other_passwords_file) as f:
            others = [line.strip() for line in f if line.strip()]
    for action in secure(a.address, a.port, a.ca, a.admin_user, password, a.datacenter, a.replication_factor,
                         other_passwords=others):
        print(action)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
