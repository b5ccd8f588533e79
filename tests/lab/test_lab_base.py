"""The lab as real machines, converged by the base role: access, hardening, firewall, teardown."""

import subprocess
from concurrent.futures import ThreadPoolExecutor

from hastack.converge import converge
from hastack.lab.layout import lab_topology
from hastack.lab.machine import LabError
from tests.support.lab import tcp


def ssh(lab, host, command="true", user=None, extra=()):
    cmd = lab.ssh_command(host, user=user)
    cmd[1:1] = list(extra)
    return subprocess.run(cmd + [command], capture_output=True, text=True, timeout=30)


def on_all(lab, fn):
    with ThreadPoolExecutor(max_workers=len(lab.machines)) as pool:
        return dict(zip(lab.machines, pool.map(fn, lab.machines), strict=True))


def test_every_machine_runs_and_converged(lab, first_converge):
    assert all(row["state"] == "running" for row in lab.status()), lab.status()
    failed = {n: r.failed for n, r in first_converge.hosts.items() if r.failed}
    assert not failed, failed


def test_security_updates_reach_the_hosts_and_an_upgrade_restarts_no_replicated_service(lab, first_converge):
    """The package cache serves the security suite. A host given back a package's release version (as an
    image older than a security fix has it) is upgraded by the next converge, and then no host has a security
    update pending. A maintainer script's restart of MariaDB (as an upgrade of mariadb-server runs it) is
    refused by policy-rc.d: the server keeps running, the same process."""
    from roles.base import config as c

    suites = on_all(lab, lambda h: lab.exec(h, ["apt-cache", "policy"], check=True).stdout)
    assert all("-security" in text for text in suites.values()), {h: t[-300:] for h, t in suites.items()}

    host = lab.topo.hosts_with_role("app")[0].name
    package, release, fixed = _security_fixed_package(lab, host)
    lab.exec(host, ["apt-get", "install", "-y", "-q", "--allow-downgrades", f"{package}={release}"], check=True)
    assert lab.exec(host, ["sh", "-c", c.PENDING_SECURITY], check=True).stdout.split() == [package]
    report = converge(lab.inventory_entries())
    assert report.ok, report
    assert any("Security updates: 1 package" in op for op in report.hosts[host].changed_operations), \
        report.hosts[host].changed_operations
    installed = lab.exec(host, ["dpkg-query", "-W", "-f", "${Version}", package], check=True).stdout
    assert installed == fixed, (package, installed, fixed)
    # the answer asked of apt again after the upgrade: the next converge finds it cached under the new state
    assert any(op.endswith("Pending security updates read again after the package changes")
               for op in report.hosts[host].changed_operations), report.hosts[host].changed_operations
    cached = lab.exec(host, ["sh", "-c", f'[ "$(head -n 1 {c.PENDING_SECURITY_CACHE})" = "$({c.PENDING_SECURITY_KEY})" ]'])
    assert cached.returncode == 0, "the pending security updates' cache is stale after the converge"
    pending = on_all(lab, lambda h: lab.exec(h, ["sh", "-c", c.PENDING_SECURITY], check=True).stdout.split())
    assert pending == {h: [] for h in lab.machines}, pending

    db = lab.topo.hosts_with_role("mariadb")[0].name
    pid = lab.exec(db, ["systemctl", "show", "-p", "MainPID", "--value", "mariadb.service"], check=True).stdout.strip()
    lab.exec(db, ["deb-systemd-invoke", "restart", "mariadb.service"])
    assert lab.exec(db, ["systemctl", "show", "-p", "MainPID", "--value", "mariadb.service"],
                    check=True).stdout.strip() == pid != "0"


def _security_fixed_package(lab, host) -> tuple[str, str, str]:
    """A library on ``host`` with a security fix over its release version: (name, release, fixed)."""
    for package in ("libexpat1", "libpcre2-8-0", "libbrotli1", "libssh2-1"):
        versions = {}  # suite -> version, from lines "name | version | mirror suite/main arch Packages"
        for line in lab.exec(host, ["apt-cache", "madison", package], check=True).stdout.splitlines():
            _, version, source = (field.strip() for field in line.split("|"))
            versions.setdefault(source.split()[1].split("/")[0], version)
        release, fixed = versions.get("bookworm"), versions.get("bookworm-security")
        if release and fixed and release != fixed:
            return package, release, fixed
    raise AssertionError("no installed library has a security fix over its release version")


def test_a_second_converge_through_pulumi_ups_entry_point_reports_zero_changes(lab):
    """Idempotence: over the unchanged lab, the converge the dynamic resource of `pulumi up` runs (the very
    converge of `hastack converge`) changes nothing on any host."""
    from hastack.cloud.converge_resource import ConvergeProvider

    props = {"stack": "lab", "outputs": lab.stack_outputs(), "digest": "x", "ssh_user": lab.admin,
             "connection": lab.connection()}
    result = ConvergeProvider().create(props)
    assert result.outs["result"]["changes"] == 0, result.outs["result"]
    assert set(result.outs["result"]["hosts"]) == set(lab.machines)


def test_sshd_effective_settings_are_hardened(lab):
    def effective(host):
        out = lab.exec(host, ["sshd", "-T", "-C", "user=labadmin,host=operator,addr=198.18.0.1"], check=True).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    for host, conf in on_all(lab, effective).items():
        assert conf["passwordauthentication"] == "no", host
        assert conf["kbdinteractiveauthentication"] == "no", host
        assert conf["permitrootlogin"] == "no", host
        assert conf["pubkeyauthentication"] == "yes", host
        assert conf["authenticationmethods"] == "publickey", host


def test_admin_key_login_works_and_root_and_password_are_refused(lab):
    def check(host):
        admin = ssh(lab, host, "sudo -n true && hostname")
        root = ssh(lab, host, user="root", extra=["-i", str(lab.paths.admin_key(lab.admin))])
        password = subprocess.run(
            ["ssh", "-o", f"UserKnownHostsFile={lab.paths.known_hosts}", "-o", "StrictHostKeyChecking=yes",
             "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive",
             "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"labadmin@{lab.addr.public_ip(lab.machine(host).host)}",
             "true"], capture_output=True, text=True, timeout=30)
        return admin, root, password

    for host, (admin, root, password) in on_all(lab, check).items():
        assert admin.returncode == 0 and admin.stdout.strip() == host, (host, admin.stderr)
        assert root.returncode == 255 and "Permission denied" in root.stderr, (host, root.stderr)
        # the server offers no password method at all
        assert password.returncode == 255 and "Permission denied (publickey)" in password.stderr, (host, password.stderr)


def test_host_firewall_matches_the_declarations(lab):
    from hastack.templating import render
    from roles.base import DEFAULTS
    from roles.base import config as base_config

    topo = lab.topo
    for host in topo.hosts:
        # the file in place is the one generated from the declarations...
        expected = render("base", base_config.NFTABLES,
                          **base_config.template_vars(host.name, {**DEFAULTS, **topo.host_data(host)})[base_config.NFTABLES])
        assert lab.exec(host.name, ["cat", base_config.NFTABLES], check=True).stdout == expected, host.name
        # ...and it is what the kernel enforces
        ruleset = lab.exec(host.name, ["nft", "list", "table", "inet", "hastack"], check=True).stdout
        assert "policy drop" in ruleset
        for rule in topo.host_rules(host):
            assert f'comment "{rule.port.name}"' in ruleset, (host.name, rule.port.name)
            if rule.port.port:
                assert f"dport {rule.port.port}" in ruleset, (host.name, rule.port.name)

    # and they hold on the wire: the node exporter (listening on every host) only for monitoring,
    # SSH only for the operator, never from another host or the internet namespace
    mon = topo.host(topo.hosts_with_role("monitoring")[0].name)
    app = topo.hosts_with_role("app")[0]
    probes = []
    for host in topo.hosts:
        if host.name != mon.name:
            probes.append((mon.name, host, 9100, "open"))
            probes.append((app.name if host.name != app.name else topo.hosts_with_role("loadbalancer")[0].name, host, 9100, "filtered"))
        probes.append((app.name if host.name != app.name else mon.name, host, 22, "filtered"))
    db = topo.hosts_with_role("mariadb")[0]
    probes.append((topo.hosts_with_role("loadbalancer")[0].name, db, 3306, "filtered"))  # a web host never reaches the database port

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: tcp(lab, p[0], p[1].private_ip, p[2]), probes))
    wrong = [(src, dst.name, port, want, got) for (src, dst, port, want), got in zip(probes, results, strict=True)
             if (want == "filtered") != (got == "filtered")]
    assert not wrong, wrong

    assert tcp(lab, None, lab.addr.public_ip(db), 22) == "filtered", "SSH must be filtered from the internet"


def test_node_exporter_serves_metrics_to_monitoring(lab):
    mon = lab.topo.host(lab.topo.hosts_with_role("monitoring")[0].name)
    target = lab.topo.hosts_with_role("mariadb")[0]
    out = lab.exec(mon.name, ["curl", "-sf", f"http://{target.private_ip}:9100/metrics"], check=True).stdout
    assert "node_uname_info" in out


def test_hosts_file_and_hostname_from_the_topology(lab):
    def hosts_file(host):
        """(address, names) of every entry of the machine's /etc/hosts, comments dropped."""
        text = lab.exec(host, ["cat", "/etc/hosts"], check=True).stdout
        fields = (line.split("#", 1)[0].split() for line in text.splitlines())
        return [(f[0], f[1:]) for f in fields if f]

    for machine, entries in on_all(lab, hosts_file).items():
        assert lab.exec(machine, ["hostname"], check=True).stdout.strip() == machine
        for host in lab.topo.hosts:
            # the name on exactly one line, which is the host's private address followed by that name alone
            claiming = [(address, names) for address, names in entries if host.name in names]
            assert claiming == [(host.private_ip, [host.name])], (machine, host.name, claiming)


def test_removing_an_admin_revokes_access_everywhere(lab):
    without = lab_topology("lab", lab.paths, drop_admins=("labops",))
    assert [a.name for a in without.admins] == ["labadmin"]
    before = on_all(lab, lambda h: ssh(lab, h, user="labops").returncode)
    assert set(before.values()) == {0}, before

    # an open database session of the admin, held by a root process they left behind (sudo, setsid, nohup:
    # not theirs by user, not tied to their terminal): it ends with the admin all the same
    held = "(echo 'SELECT CONNECTION_ID();'; exec sleep 900) | mariadb -N -B -n > /run/held-connection"
    assert ssh(lab, "lab-db1", f'sudo -n setsid nohup sh -c "{held}" >/dev/null 2>&1 </dev/null & sleep 1',
               user="labops").returncode == 0
    connection = int(lab.exec("lab-db1", ["cat", "/run/held-connection"], check=True).stdout)
    assert _connection_open(lab, "lab-db1", connection)

    # a master powered off (as its peer fences it) when the admin is removed: the converge fails and names
    # it as the host where the removed admin may still log in; every other host is revoked all the same
    lab.stop("lab-db2", hard=True)
    partial = converge(lab.inventory_entries(without))
    assert not partial.ok and partial.hosts["lab-db2"].failed
    assert [n for n, r in partial.hosts.items() if not r.access_settled] == ["lab-db2"]
    assert "access not settled on lab-db2: an admin removed from the stack may still log in" in partial.failure()
    denied = on_all(lab, lambda h: ssh(lab, h, user="labops").returncode if h != "lab-db2" else None)
    assert {h: rc for h, rc in denied.items() if rc not in (255, None)} == {}, denied
    assert not _connection_open(lab, "lab-db1", connection)

    # when it returns, its access gate removes the admin before sshd and MariaDB start: no login, ever
    tries = _logins_while_booting(lab, "lab-db2", "labops")
    assert tries and 0 not in tries, tries
    gate = lab.exec("lab-db2", ["journalctl", "-b", "-u", "hastack-access-gate", "-o", "cat"]).stdout
    assert "removed former admin labops" in gate, gate
    started = {u: _active_since(lab, "lab-db2", u) for u in
               ("hastack-access-gate.service", "ssh.service", "mariadb.service")}
    assert 0 < started["hastack-access-gate.service"] <= min(started["ssh.service"], started["mariadb.service"]), started
    assert lab.exec("lab-db2", ["id", "labops"]).returncode != 0

    report = converge(lab.inventory_entries(without))
    assert report.ok, {n: r.failed for n, r in report.hosts.items() if r.failed}
    after = on_all(lab, lambda h: ssh(lab, h, user="labops"))
    assert all(p.returncode == 255 and "Permission denied" in p.stderr for p in after.values()), \
        {h: p.stderr for h, p in after.items()}
    still = on_all(lab, lambda h: ssh(lab, h).returncode)
    assert set(still.values()) == {0}

    # what the admin did with sudo is on record on the monitoring host, their account and home gone: the
    # journal of lab-db1, in the file of lab-db1's address, readable by root (admins, through sudo) only
    assert lab.exec("lab-db1", ["id", "labops"]).returncode != 0
    assert lab.exec("lab-db1", ["test", "-e", "/home/labops"]).returncode != 0
    records = _shipped_sudo_records(lab, "lab-db1")
    assert any("labops : " in r and "COMMAND=/usr/bin/setsid nohup sh -c" in r and "held-connection" in r
               for r in records), records[-5:]

    # putting the admin back restores access on the next converge
    assert converge(lab.inventory_entries()).ok
    again = on_all(lab, lambda h: ssh(lab, h, user="labops").returncode)
    assert set(again.values()) == {0}, again


def _shipped_sudo_records(lab, host) -> list[str]:
    """sudo's records of ``host`` as the monitoring host keeps them (in the file named after its address)."""
    from roles.journal_shipping import REMOTE_DIR

    sink = lab.topo.hosts_with_role("monitoring")[0].name
    assert lab.exec(sink, ["stat", "-c", "%a %U", REMOTE_DIR], check=True).stdout.split() == ["700", "systemd-journal-remote"]
    assert lab.exec(sink, ["runuser", "-u", "nobody", "--", "ls", REMOTE_DIR]).returncode != 0
    shipped = f"{REMOTE_DIR}/remote-{lab.topo.host(host).private_ip}*.journal"  # also the archived ones
    return lab.exec(sink, ["journalctl", "--file", shipped, "SYSLOG_IDENTIFIER=sudo", "-o", "cat", "--no-pager"],
                    check=True).stdout.splitlines()


def _logins_while_booting(lab, host, user, timeout=240.0) -> list[int]:
    """Starts ``host`` and tries to log in as ``user`` until its MariaDB is up: ssh's exit codes."""
    import time

    lab.machine(host).start()
    tries, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        tries.append(ssh(lab, host, user=user, extra=("-o", "ConnectTimeout=2")).returncode)
        try:
            up = lab.exec(host, ["systemctl", "is-active", "mariadb.service"]).returncode == 0
        except LabError:  # not far enough into its boot to enter, unless it is not running at all
            if not lab.machine(host).running():
                console = (lab.paths.logs / f"{host}.console.log").read_text(errors="replace")
                raise AssertionError(f"{host} stopped while booting; its console's end: {console[-2000:]}") from None
            up = False
        if up:
            tries.append(ssh(lab, host, user=user).returncode)
            return tries
        time.sleep(0.2)
    raise AssertionError(f"MariaDB on {host} not up after {timeout:.0f} s; logins: {tries}")


def _connection_open(lab, host, connection: int) -> bool:
    out = lab.exec(host, ["mariadb", "-N", "-e", "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                                                 f"WHERE ID = {connection}"], check=True).stdout
    return out.strip() == "1"


def _active_since(lab, host, unit) -> int:
    out = lab.exec(host, ["systemctl", "show", "-P", "ActiveEnterTimestampMonotonic", unit], check=True).stdout
    return int(out.strip() or 0)


def test_lab_command_line(lab):
    import json
    import sys

    def hastack(*args):
        return subprocess.run([sys.executable, "-m", "hastack.cli", "lab", *args], capture_output=True, text=True,
                              timeout=60)

    status = json.loads(hastack("status", "--json").stdout)
    assert {m["name"]: m["state"] for m in status["machines"]} == {n: "running" for n in lab.machines}
    assert status["floating_ip"] == lab.addr.floating_ip
    out = hastack("exec", "lab-app1", "--", "cat", "/etc/hostname")
    assert out.returncode == 0 and out.stdout.strip() == "lab-app1"
    bad = hastack("exec", "lab-nosuch", "--", "true")
    assert bad.returncode == 2 and "no machine 'lab-nosuch'" in bad.stderr


def test_stop_and_start_a_machine(lab):
    import threading

    lab.stop("lab-app2")
    assert next(r for r in lab.status() if r["name"] == "lab-app2")["state"] == "stopped"
    # two power-ons at once (the API's, as a writer agent restarts the peer it fenced, and an operator's):
    # one machine boots, and its pid file names it
    other = threading.Thread(target=lab.machine("lab-app2").start)
    other.start()
    assert lab.start("lab-app2") == "running"
    other.join()
    assert next(r for r in lab.status() if r["name"] == "lab-app2")["state"] == "running"
    assert ssh(lab, "lab-app2").returncode == 0
    # the boot mounted them as fstab says: nothing runs from shared memory or the device files
    from roles.base import config as c
    for mount in c.RESTRICTED_MOUNTS:
        mounted = lab.exec("lab-app2", ["sh", "-c", c.mounted_options(mount)], check=True).stdout.strip()
        assert mounted == c.wanted_options(mount), (mount, mounted)


def test_converge_check_names_the_drift_changes_nothing_and_a_converge_repairs_it(lab):
    """`hastack converge --check` as the nightly pipeline runs it: a file changed by hand and a stopped
    service on one host named exactly (exit 1), left as they are; a converge repairs both; then 0."""
    import sys

    from roles.base.config import JOURNALD

    def check():
        return subprocess.run([sys.executable, "-m", "hastack.cli", "converge", "--stack", "lab", "--check"],
                              capture_output=True, text=True, timeout=600, env={"COLUMNS": "250", "PATH": "/usr/bin:/bin"})

    victim = "lab-app2"
    lab.exec(victim, ["sh", "-c", f"echo '# changed by hand' >> {JOURNALD}"], check=True)
    lab.exec(victim, ["systemctl", "stop", "prometheus-node-exporter"], check=True)
    drift = check()
    out = " ".join(drift.stdout.split())
    assert drift.returncode == 1, drift.stdout[-3000:] + drift.stderr[-2000:]
    assert "2 operations would change on 1 of 12 hosts" in out, out[-3000:]
    row = next(line for line in drift.stdout.splitlines() if victim in line)
    assert "│ 2 " in row, row
    assert "journald" in drift.stdout.lower() and "Node exporter" in drift.stdout, drift.stdout[-3000:]
    # the dry run changed nothing
    assert "# changed by hand" in lab.exec(victim, ["cat", JOURNALD], check=True).stdout
    assert lab.exec(victim, ["systemctl", "is-active", "prometheus-node-exporter"]).stdout.strip() != "active"

    repaired = converge(lab.inventory_entries())
    ops = repaired.hosts[victim].changed_operations
    assert repaired.ok and any("journald" in op for op in ops) and any("Node exporter" in op for op in ops), ops
    assert "# changed by hand" not in lab.exec(victim, ["cat", JOURNALD], check=True).stdout
    assert lab.exec(victim, ["systemctl", "is-active", "prometheus-node-exporter"]).stdout.strip() == "active"
    # after a converge, no drift anywhere (the nightly check's normal answer)
    clean = check()
    assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-2000:]
    assert "0 operations would change on 0 of 12 hosts" in " ".join(clean.stdout.split())


def test_the_users_fact_in_one_pass_reads_as_pyinfras_own_command(lab):
    """The converge asks the accounts in one pass (hastack.fact_batches); on hosts of three roles, with
    the admins, their groups and service accounts, it prints exactly what pyinfra's command prints."""
    from pyinfra.facts.server import Users

    from hastack.fact_batches import _USERS_SCRIPT

    for name in ("lab-db1", "lab-lb1", "lab-mon1"):
        own = lab.exec(name, ["sh", "-c", Users().command()], check=True).stdout
        one_pass = lab.exec(name, ["sh", "-c", _USERS_SCRIPT], check=True).stdout
        assert one_pass == own, (name, own, one_pass)
        assert "|labadmin " in own or "|labadmin|" in own, own


# every certificate a converge puts on the lab, by the host and file that hold it
CERTIFICATE_FILES = {
    "lab-db1": "/etc/mysql/tls/server.crt", "lab-redis1": "/etc/redis/tls/redis.crt",
    "lab-cass1": "/etc/cassandra/tls/node.pem", "lab-app1": "/etc/hastack-app/tls.crt",
    "lab-lb1": "/etc/haproxy/certs/site.pem", "lab-mon1": "/etc/hastack/witness/server.crt",
}


def test_a_converge_from_a_fresh_clone_adopts_the_hosts_certificates(lab, tmp_path, monkeypatch):
    """A clone that never converged the stack (a CI runner): the CA comes from the stack's outputs and the
    certificates the hosts have are adopted, so the converge changes nothing and restarts nothing. Without
    the CA in the outputs the converge stops before it connects anywhere."""
    import pytest

    from hastack.inventory import InventoryError, host_entries

    clone = tmp_path / "clone-pki"
    monkeypatch.setenv("HASTACK_PKI_ROOT", str(clone))
    outputs = lab.stack_outputs()
    for host in outputs["hosts"].values():
        del host["data"]["pki_dir"]  # as a cloud stack's outputs: pki/<stack>/ of this clone

    def entries():
        found = host_entries(outputs, ssh_user=lab.admin)
        for data in found.values():
            data.update(lab.connection())
        return found

    def fingerprints():
        return {h: lab.exec(h, ["sha256sum", path], check=True).stdout.split()[0] for h, path in CERTIFICATE_FILES.items()}

    before = fingerprints()
    report = converge(entries())
    assert report.ok, {n: r.failed for n, r in report.hosts.items() if r.failed}
    assert report.changes == 0, {n: r.changed_operations for n, r in report.hosts.items() if r.changed}
    assert fingerprints() == before
    assert (clone / "lab" / "ca.crt").read_text() == lab.ca_state().secrets()["ca"]["cert"]
    # the clone now holds what the hosts have: a second converge does not read them again
    adopted = {p.stem for p in (clone / "lab" / "issued").glob("*.crt")}
    assert {"mariadb-lab-db1", "mariadb-lab-db2", "cassandra-lab-cass3", "site", "witness-lab-mon1"} <= adopted

    del outputs["secrets"]["ca"]
    with pytest.raises(InventoryError, match=r"no CA \(secrets.ca\)"):
        entries()
    assert fingerprints() == before


def test_the_stack_ca_is_trusted_by_the_services_only(lab):
    """The stack CA is in the file the services name, not in the system trust store: a program on a host
    that does not ask for it does not take the CA's word for any name."""
    certificates = {"lab-app1": "/etc/hastack-app/tls.crt", "lab-db1": "/etc/mysql/tls/server.crt",
                    "lab-lb1": "/etc/hastack/witness/client.crt"}
    for host, cert in certificates.items():
        assert lab.exec(host, ["test", "-e", "/usr/local/share/ca-certificates/hastack-lab.crt"]).returncode == 1
        with_stack_ca = lab.exec(host, ["openssl", "verify", "-CAfile", "/etc/ssl/hastack/lab-ca.crt", cert])
        assert with_stack_ca.returncode == 0, with_stack_ca.stdout + with_stack_ca.stderr
    system = lab.exec("lab-app1", ["openssl", "verify", "-CAfile", "/etc/ssl/certs/ca-certificates.crt",
                                   "/etc/hastack-app/tls.crt"])
    assert system.returncode != 0 and "unable to get local issuer certificate" in system.stdout + system.stderr


def test_a_file_added_by_hand_is_found_by_the_integrity_check_alerted_and_on_record_off_the_host(lab):
    """A cron job dropped by hand (what an intruder or a departing admin might leave): the daily check finds it,
    Prometheus alerts on that host, and the difference is in the host's journal on the monitoring host. Taken
    away again, the next check is clean and the alert goes."""
    import time

    from roles.base.config import INTEGRITY_METRICS
    from roles.journal_shipping import REMOTE_DIR
    from tests.support.lab import wait_for
    from tests.support.monitoring import firing, monitoring_host

    victim, planted = "lab-redis2", "/etc/cron.d/hastack-test-planted"

    def check() -> dict[str, float]:
        started = time.monotonic()
        lab.exec(victim, ["systemctl", "start", "hastack-integrity.service"], check=True)
        print(f"integrity check on {victim}: {time.monotonic() - started:.1f} s")
        text = lab.exec(victim, ["cat", INTEGRITY_METRICS], check=True).stdout
        return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("hastack_integrity_changes{")}

    assert check() == {"added": 0, "removed": 0, "changed": 0, "package": 0}
    lab.exec(victim, ["sh", "-c", f"echo '* * * * * root true' > {planted}"], check=True)
    try:
        assert check() == {"added": 1, "removed": 0, "changed": 0, "package": 0}
        wait_for(lambda: ("HostFilesChanged", victim) in firing(lab), 90, f"HostFilesChanged on {victim}")
        sink = monitoring_host(lab)
        shipped = f"{REMOTE_DIR}/remote-{lab.topo.host(victim).private_ip}*.journal"
        wait_for(lambda: planted in lab.exec(sink, ["journalctl", "--file", shipped, "SYSLOG_IDENTIFIER=hastack-integrity",
                                                    "-o", "cat", "--no-pager"]).stdout,
                 60, f"the check's record of {planted} on {sink}")
    finally:
        lab.exec(victim, ["rm", "-f", planted], check=True)
    assert check() == {"added": 0, "removed": 0, "changed": 0, "package": 0}
    wait_for(lambda: ("HostFilesChanged", victim) not in firing(lab), 90, f"HostFilesChanged on {victim} to end")


def test_every_privileged_program_is_in_the_audit_rules_and_auditd_leaves_a_container_to_its_host(lab):
    """Every set-uid or set-gid program of every converged host has its rule (a package that brings a new
    one fails this until config.PRIVILEGED_PROGRAMS names it); auditd is enabled but skips itself in a
    container, whose kernel's audit records are its host's (tests/lab/test_lab_audit.py runs it)."""
    from roles.base import config as c

    def look(host):
        programs = lab.exec(host, ["find", "/", "-xdev", "-type", "f", "-perm", "/6000"], check=True).stdout.split()
        rules = lab.exec(host, ["cat", c.AUDIT_RULES], check=True).stdout
        shown = lab.exec(host, ["systemctl", "show", "-p", "UnitFileState,ConditionResult,ActiveState",
                                "auditd.service"], check=True).stdout
        unit = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        return [p for p in programs if f"-F path={p} -F perm=x" not in rules], unit

    found = on_all(lab, look)
    assert {h: missing for h, (missing, _) in found.items() if missing} == {}
    skipped = {"UnitFileState": "enabled", "ConditionResult": "no", "ActiveState": "inactive"}
    assert {h: unit for h, (_, unit) in found.items() if unit != skipped} == {}


def test_every_role_reaches_a_lynis_hardening_index_of_80_with_no_warning_and_only_accepted_suggestions(lab):
    """lynis, Debian's, on the first machine of each role, the tests a container cannot pass skipped
    (hastack/lab/lynis.py says which): an index of at least 80, no warning (vulnerable packages among them),
    and every suggestion left one of the accepted ones, each with its reason."""
    from hastack.lab.lynis import ACCEPTED, MINIMUM_INDEX, audit_each_role

    audits = {role: a for role, (_name, a) in audit_each_role(lab).items()}
    assert {role: a.index for role, a in audits.items() if a.index < MINIMUM_INDEX} == {}, audits
    assert {role: a.warnings for role, a in audits.items() if a.warnings} == {}, audits
    unexplained = {role: sorted(set(a.suggestions) - set(ACCEPTED)) for role, a in audits.items()}
    assert {role: ids for role, ids in unexplained.items() if ids} == {}, audits
