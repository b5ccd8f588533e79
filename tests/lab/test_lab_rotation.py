"""Offboarding an admin and rotating every secret on the lab, while writes flow through the floating IP."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from botocore.exceptions import ClientError

from hastack.converge import converge
from hastack.lab import FLOATING_IP_ID
from hastack.lab.layout import HCLOUD_API_PORT, lab_seed_state
from roles.cassandra import passwords as cassandra_passwords
from roles.mariadb import passwords as mariadb_passwords
from roles.redis import passwords as redis_passwords
from tests.support import chaos

REDIS_CLI = ["timeout", "5", "redis-cli", "--no-auth-warning", "--tls", "--cacert", "/etc/redis/tls/ca.crt",
             "-h", "127.0.0.1"]


def redis_login(lab, host: str, port: int, user: str | None, password: str) -> str:
    who = ["--user", user] if user else []
    return lab.exec(host, ["env", f"REDISCLI_AUTH={password}", *REDIS_CLI, "-p", str(port), *who, "PING"]).stdout.strip()


def mariadb_login(lab, host: str, user: str, password: str) -> bool:
    return lab.exec(host, ["mariadb", "-u", user, f"-p{password}", "-e", "SELECT 1"]).returncode == 0


def cassandra_login(lab, host: str, user: str, password: str) -> bool:
    ip = lab.topo.host(host).private_ip
    code = ("import sys; sys.path.insert(0, '/opt/hastack'); import cassandra_auth as a; "
            f"c, s = a.connect({ip!r}, 9042, '/etc/cassandra/tls/ca.crt', {user!r}, sys.stdin.read()); c.shutdown()")
    return lab.exec(host, ["python3", "-c", code], input=password).returncode == 0


def jmx_login(lab, host: str, password: str) -> bool:
    """Whether nodetool logs in to the node's JMX with ``password`` (the wrapper given a password file of its
    own, in place of the node's)."""
    from roles.cassandra.config import JMX_PASSWORD_FILE, JMX_USER, NODETOOL

    wrapper = lab.exec(host, ["cat", NODETOOL], check=True).stdout
    probe = "/run/hastack-jmx-probe"
    script = f"umask 077 && cat > {probe} && sh -c \"$1\" nodetool version; rc=$?; rm -f {probe}; exit $rc"
    return lab.exec(host, ["sh", "-c", script, "probe", wrapper.replace(JMX_PASSWORD_FILE, probe)],
                    input=f"{JMX_USER} {password}\n").returncode == 0


def logins(lab, seed: str) -> dict[str, bool]:
    """Whether each kind of account logs in with the passwords of ``seed``."""
    redis, mariadb, cassandra = redis_passwords(seed), mariadb_passwords(seed), cassandra_passwords(seed)
    redis_host = lab.topo.hosts_with_role("redis")[0].name
    db = lab.topo.hosts_with_role("mariadb")[0].name
    cass = lab.topo.hosts_with_role("cassandra")[0].name
    return {
        "redis app": redis_login(lab, redis_host, 6379, "app", redis["app"]) == "PONG",
        "redis sentinel": redis_login(lab, redis_host, 6379, "sentinel", redis["sentinel"]) == "PONG",
        "sentinel": redis_login(lab, redis_host, 26379, None, redis["sentinel"]) == "PONG",
        "mariadb exporter": mariadb_login(lab, db, "exporter", mariadb["exporter"]),
        "cassandra admin": cassandra_login(lab, cass, "admin", cassandra["admin"]),
        "cassandra jmx": jmx_login(lab, cass, cassandra["jmx"]),
    }


def tls_endpoints(lab) -> dict[str, tuple[str | None, str, int, str | None]]:
    """A TLS endpoint of each kind the stack CA's certificates serve: (a host its firewall and accounts let
    in, or None for the internet side; address, port, STARTTLS protocol)."""
    from roles.app import APP_PORT
    from roles.cassandra import PORTS as CASSANDRA_PORTS
    from roles.mariadb import WRITER_PEER_PORT
    from roles.witness import WITNESS_PORT

    port = {p.name: p.port for p in CASSANDRA_PORTS}
    first = {role: lab.topo.hosts_with_role(role)[0] for role in ("mariadb", "redis", "cassandra", "app", "monitoring")}
    own = {role: (h.name, h.private_ip) for role, h in first.items()}
    db, app, other_db = first["mariadb"].private_ip, first["app"].name, lab.topo.hosts_with_role("mariadb")[1].name
    return {"mariadb": (app, db, 3306, "mysql"), "mariadb writer agents": (other_db, db, WRITER_PEER_PORT, None),
            "redis": (*own["redis"], 6379, None), "sentinel": (*own["redis"], 26379, None),
            "cassandra cql": (*own["cassandra"], port["cassandra-cql"], None),
            "cassandra internode": (*own["cassandra"], port["cassandra-internode"], None),
            "app": (*own["app"], APP_PORT, None), "witness": (*own["monitoring"], WITNESS_PORT, None),
            "site": (None, lab.addr.floating_ip, 443, None)}


def verified(lab, ca_pem: str, endpoint: tuple[str | None, str, int, str | None]) -> bool:
    """Whether the endpoint served a certificate whose chain verifies under ``ca_pem`` alone: OpenSSL's verdict,
    from ``endpoint``'s host, or from the lab's internet side for the site."""
    from hastack.lab.layout import INTERNET_NS

    host, address, port, starttls = endpoint
    script = ('f=$(mktemp); cat > "$f"; openssl s_client -connect "$1" -CAfile "$f" ${2:+-starttls "$2"} '
              '</dev/null 2>&1; rm -f "$f"')
    args = ["bash", "-c", script, "verify", f"{address}:{port}", starttls or ""]
    if host is None:
        out = subprocess.run(["ip", "netns", "exec", INTERNET_NS, *args], input=ca_pem, capture_output=True,
                             text=True, timeout=30).stdout
    else:
        out = lab.exec(host, args, input=ca_pem).stdout
    if "Server certificate" not in out:
        raise AssertionError(f"{address}:{port} served no certificate to {host or 'the internet side'}:\n{out[-1500:]}")
    return "Verify return code: 0 (ok)" in out


class Health:
    """Samples MariaDB replication and the Cassandra ring every few seconds while secrets rotate: every TLS
    error between the masters, every moment fewer than a quorum of Cassandra nodes served CQL (a node
    restarting closes its CQL port when it stops and opens it again once it has rejoined). Sockets, not
    `nodetool`: a JVM per node per sample would load the 2-core lab enough to double the rotation's time."""

    def __init__(self, lab):
        import threading

        self.lab, self.samples, self.problems = lab, 0, []
        self.nodes = [h.name for h in lab.topo.hosts_with_role("cassandra")]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tests.support.cassandra_ring import serves_cql

        while not self.stop.wait(2):
            self.samples += 1
            for db in chaos.masters(self.lab):
                status = self.lab.exec(db, ["mariadb", "-e", "SHOW SLAVE STATUS\\G"]).stdout
                for line in status.splitlines():
                    if "Last_IO_Error" in line or "Last_SSL_Error" in line:
                        if any(w in line for w in ("SSL", "TLS", "certificate")):
                            self.problems.append(f"{time.strftime('%T')} {db}: {line.strip()}")
            up = sum(1 for n in self.nodes if serves_cql(self.lab, n))
            if up < len(self.nodes) // 2 + 1:
                self.problems.append(f"{time.strftime('%T')} cassandra: {up} of {len(self.nodes)} nodes serve CQL")

    def __enter__(self) -> "Health":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=120)


def ssh_status(lab, host: str, user: str) -> int:
    cmd = lab.ssh_command(host, user=user)
    return subprocess.run(cmd + ["true"], capture_output=True, text=True, timeout=30).returncode


def test_offboarding_an_admin_under_load_rotates_everything_they_knew(lab):
    """`hastack offboard labops` from the command line while four clients write through the floating IP:
    no write fails or is lost; labops logs in nowhere and has no account left; every old derived password is
    refused by Redis, Sentinel, MariaDB and Cassandra and the new ones log in; the old backup keys are refused
    by the lab S3 and the old failover token by the lab Hetzner API; the old CA verifies no service and the
    new one every service, replication and the ring never saw a TLS failure or lost their quorum on the way;
    no Cassandra node restarted; replication and the Sentinels work; a second converge changes nothing."""
    from hastack.lab import Lab, s3
    from hastack.stackfile import stack_path
    from hastack.token_rotation import TokenError, check_token

    hosts = [h.name for h in lab.topo.hosts]
    assert all(ssh_status(lab, h, "labops") == 0 for h in hosts)
    old_seed = lab_seed_state(lab.paths)
    assert old_seed.stage == "done" and all(logins(lab, old_seed.seed).values())
    old_keys = s3.load_credentials(lab.paths)
    old_token = (lab.paths.secrets / "hcloud-token").read_text().strip()
    old_ca = lab.ca_state()
    assert old_ca.stage == "done"
    endpoints = tls_endpoints(lab)
    old_ca_pem = old_ca.secrets()["ca"]["cert"]
    assert {k: verified(lab, old_ca_pem, e) for k, e in endpoints.items()} == {k: True for k in endpoints}
    ring = [h.name for h in lab.topo.hosts_with_role("cassandra")]
    ring_pids = {h: chaos.service_pid(lab, h, "cassandra.service") for h in ring}
    stack_file = stack_path("lab")
    original = stack_file.read_text()
    try:
        with chaos.Run(lab, "offboard") as run, Health(lab) as health:
            run.fault()
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-m", "hastack.cli", "offboard", "labops", "--stack", "lab"],
                                  capture_output=True, text=True, timeout=1800)
            took = time.monotonic() - started
            print(proc.stdout)  # each converge's time, and the rolling restarts it ran
            run.back()
            run.extra["no_failure_allowed"] = True  # a failed write brings the machines' journals into the result
        result = run.result
        print(json.dumps({"offboard_s": round(took, 1), **{k: result[k] for k in
                          ("requests", "acked", "failed", "lost", "errors", "failures", "duration_s")},
                          "health_samples": health.samples, "health_problems": health.problems}))
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "offboarded labops from lab in" in proc.stdout and "[x] removed labops from hastack:admins" in proc.stdout
        assert result["failed"] == 0 and result["lost"] == 0, (f"the lab host {chaos.describe_host(result['host'])}\n"
                                                               + json.dumps(result, indent=1))
        assert health.samples > 10 and health.problems == [], health.problems

        # the CA: a new one, with name constraints; the old one verifies no service, the new one every service
        new_ca = lab.ca_state()
        new_ca_pem = new_ca.secrets()["ca"]["cert"]
        assert new_ca.stage == "done" and new_ca_pem != old_ca_pem and "ca_also" not in new_ca.secrets()
        assert {k: verified(lab, new_ca_pem, e) for k, e in endpoints.items()} == {k: True for k in endpoints}
        assert {k: verified(lab, old_ca_pem, e) for k, e in endpoints.items()} == {k: False for k in endpoints}
        assert lab.stack_trust_file.read_text() == new_ca_pem

        # labops: nowhere
        assert {h: ssh_status(lab, h, "labops") for h in hosts} == {h: 255 for h in hosts}
        assert all(ssh_status(lab, h, "labadmin") == 0 for h in hosts)
        assert all(lab.exec(h, ["id", "labops"]).returncode != 0 for h in hosts)

        # the seed: every old password refused, every new one logs in
        new_seed = lab_seed_state(lab.paths)
        assert new_seed.stage == "done" and new_seed.seed != old_seed.seed
        assert all(logins(lab, new_seed.seed).values()), logins(lab, new_seed.seed)
        assert not any(logins(lab, old_seed.seed).values()), logins(lab, old_seed.seed)
        # no Cassandra node restarted: the new JMX password and the new certificates were taken in place
        assert {h: chaos.service_pid(lab, h, "cassandra.service") for h in ring} == ring_pids
        assert chaos.redis_primary(lab) is not None  # the Sentinels agree on a primary, with the new passwords
        for db in chaos.masters(lab):
            status = lab.exec(db, ["mariadb", "-e", "SHOW SLAVE STATUS\\G"]).stdout
            assert "Slave_IO_Running: Yes" in status and "Slave_SQL_Running: Yes" in status, status

        # the backup keys: the old ones refused by the lab S3, the new ones on the hosts
        new_keys = s3.load_credentials(lab.paths)
        host = sorted(old_keys["writers"])[0]
        assert new_keys["writers"][host]["access_key_id"] != old_keys["writers"][host]["access_key_id"]
        for key in (old_keys["writers"][host], old_keys["reader"]):
            with pytest.raises(ClientError) as refused:
                s3._Clients(old_keys, key)("s3").list_objects_v2(Bucket=old_keys["bucket"], MaxKeys=1)
            assert refused.value.response["Error"]["Code"] == "InvalidAccessKeyId"
        s3.client_for(new_keys, "reader").list_objects_v2(Bucket=new_keys["bucket"], MaxKeys=1)

        # the test restore's key changed with the seed: a full backup was taken under the new one
        assert "[x] a full MariaDB backup (2 jobs) under the new seed's verification key" in proc.stdout, proc.stdout

        # the failover token: the old one refused by the lab Hetzner API
        api = f"https://{lab.addr.host_public}:{HCLOUD_API_PORT}/v1"
        with pytest.raises(TokenError, match="refuses the token"):
            check_token(old_token, api, FLOATING_IP_ID, str(lab.ca.cert_path))
        check_token((lab.paths.secrets / "hcloud-token").read_text(), api, FLOATING_IP_ID, str(lab.ca.cert_path))

        # nothing left to do: the stack file without labops converges with no change
        assert converge(Lab("lab").inventory_entries()).changes == 0
    finally:
        stack_file.write_text(original)
