"""The MariaDB master-master pair on the lab's machines."""

import time

import pytest
import requests

from hastack.converge import converge
from roles.mariadb import passwords as mariadb_passwords
from tests.support import mariadb_pair
from tests.support.lab import records_api, tcp, wait_for

CA = "/etc/ssl/hastack/lab-ca.crt"


def sql(lab, host, query, check=True):
    """As root over the local socket (root has no network access)."""
    proc = lab.exec(host, ["mariadb", "--batch", "--skip-column-names", "-e", query])
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def app_query(lab, app_host, db_ip, query, password):
    """The application's account, from an app server, over TLS verified against the stack CA."""
    code = (
        "import sys, pymysql\n"
        f"c = pymysql.connect(host={db_ip!r}, user='app', password=sys.stdin.read().strip(), database='hastack',"
        # ssl_ca, not ssl={'ca': ...}: PyMySQL drops an ssl dict when ssl_verify_cert is given
        f" ssl_ca={CA!r}, ssl_verify_cert=True, connect_timeout=5, autocommit=True)\n"
        f"cur = c.cursor(); cur.execute({query!r}); print(cur.fetchall())\n"
    )
    return lab.exec(app_host, ["python3", "-c", code], input=password)


@pytest.fixture(scope="module")
def pair(lab):
    """(lab, writer, passive, passwords): which master writes depends on what happened before."""
    writer = mariadb_pair.settled(lab)
    db1, db2 = writer, next(h for h in mariadb_pair.masters(lab) if h != writer)
    pw = mariadb_passwords(lab.stack_outputs()["secrets"]["seed"])
    sql(lab, db1, "CREATE TABLE IF NOT EXISTS hastack.probe (id INT AUTO_INCREMENT PRIMARY KEY, origin VARCHAR(32))")
    wait_for(lambda: "probe" in sql(lab, db2, "SHOW TABLES IN hastack"), 20, "the table on the other master")
    return lab, db1, db2, pw


def test_replication_runs_both_ways_by_gtid_over_tls(pair):
    lab, db1, db2, _ = pair
    for host in (db1, db2):
        st = mariadb_pair.slave_status(lab, host)
        assert st["Slave_IO_Running"] == "Yes" and st["Slave_SQL_Running"] == "Yes", (host, st.get("Last_Error"))
        assert st["Using_Gtid"] == "Slave_Pos" and st["Master_SSL_Allowed"] == "Yes"
        assert st["Master_SSL_Verify_Server_Cert"] == "Yes"
    assert sql(lab, db1, "SELECT @@read_only") == "0" and sql(lab, db2, "SELECT @@read_only") == "1"
    for node in lab.topo.cluster("mariadb").nodes:
        assert sql(lab, node.host, "SELECT @@server_id, @@gtid_domain_id, @@auto_increment_offset") == \
            f"{node.server_id}\t{node.gtid_domain_id}\t{node.auto_increment_offset}"


def test_rows_from_either_master_reach_the_other_and_keys_never_collide(pair):
    lab, db1, db2, _ = pair
    burst = "; ".join(f"INSERT INTO hastack.probe (origin) VALUES ('{{host}}-{i}')" for i in range(50))
    # both masters take inserts at the same moment (root may write on the read-only one)
    import threading

    threads = [threading.Thread(target=sql, args=(lab, h, burst.replace("{host}", h))) for h in (db1, db2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def converged():
        a = sql(lab, db1, "SELECT COUNT(*), COUNT(DISTINCT id) FROM hastack.probe")
        b = sql(lab, db2, "SELECT COUNT(*), COUNT(DISTINCT id) FROM hastack.probe")
        return a == b and a.split("\t")[0] == a.split("\t")[1] and int(a.split("\t")[0]) >= 100

    wait_for(converged, 30, "both masters to hold every row once")
    for node in lab.topo.cluster("mariadb").nodes:  # offsets 1 and 2, increment 2
        wrong = sql(lab, db1, f"SELECT COUNT(*) FROM hastack.probe WHERE origin LIKE '{node.host}-%' "
                              f"AND id % 2 <> {node.auto_increment_offset % 2}")
        assert wrong == "0", node.host
    assert sql(lab, db1, "CHECKSUM TABLE hastack.probe").split("\t")[1] == sql(lab, db2, "CHECKSUM TABLE hastack.probe").split("\t")[1]


def test_replication_account_only_over_tls(pair):
    lab, db1, db2, pw = pair
    ip1 = lab.topo.host(db1).private_ip
    base = ["env", f"MYSQL_PWD={pw['repl']}", "mariadb", "-h", ip1, "-u", "repl", "-e", "SELECT 1"]
    plain = lab.exec(db2, base[:3] + ["--skip-ssl"] + base[3:])
    assert plain.returncode != 0 and ("insecure transport" in plain.stderr or "Access denied" in plain.stderr), plain.stderr
    tls = lab.exec(db2, base[:3] + ["--ssl", "--ssl-ca", CA, "--ssl-verify-server-cert"] + base[3:])
    assert tls.returncode == 0, tls.stderr


def test_clients_outside_the_allowed_set_are_refused(pair):
    lab, db1, db2, pw = pair
    ip1 = lab.topo.host(db1).private_ip
    lb = lab.topo.hosts_with_role("loadbalancer")[0].name
    assert tcp(lab, lb, ip1, 3306) == "filtered"  # a web host never reaches the database port
    mon = lab.topo.hosts_with_role("monitoring")[0].name
    # the monitoring host is not a MariaDB client at all
    assert tcp(lab, mon, ip1, 3306) == "filtered"


def test_application_writes_on_the_writer_and_is_refused_on_the_passive(pair):
    lab, db1, db2, pw = pair
    app = lab.topo.hosts_with_role("app")[0].name
    ok = app_query(lab, app, lab.topo.host(db1).private_ip, "INSERT INTO probe (origin) VALUES ('app')", pw["app"])
    assert ok.returncode == 0, ok.stderr
    refused = app_query(lab, app, lab.topo.host(db2).private_ip, "INSERT INTO probe (origin) VALUES ('app')", pw["app"])
    assert refused.returncode != 0 and "read-only" in refused.stderr, refused.stderr


def test_the_app_stores_records_through_the_writer_and_reads_them_back(pair):
    lab, writer, passive, _ = pair
    import uuid

    rid = str(uuid.uuid4())
    code, body = records_api(lab, "POST", "/records", json={"request_id": rid, "value": "hello"})
    assert code == 201, body
    wait_for(lambda: rid in mariadb_pair.request_ids(lab, passive), 10, "the record on the passive master")
    code, got = records_api(lab, "GET", f"/records/{body['id']}")
    assert code == 200 and got["request_id"] == rid and got["value"] == "hello"
    # bad input is refused with a reason, and nothing is written
    code, err = records_api(lab, "POST", "/records", json={"request_id": "not-a-uuid", "value": "x"})
    assert code == 400 and "UUID" in err["error"]


def test_mysqld_exporter_reports_both_masters(pair):
    lab, writer, passive, _ = pair
    mon = lab.topo.hosts_with_role("monitoring")[0].name
    for host in (writer, passive):
        metrics = lab.exec(mon, ["curl", "-sf", f"http://{lab.topo.host(host).private_ip}:9104/metrics"]).stdout
        assert "mysql_up 1" in metrics, host
        expected = "0" if host == writer else "1"
        assert f"mysql_global_variables_read_only {expected}" in metrics, host


def test_writes_move_to_the_other_master_when_the_writer_dies_and_none_is_lost(pair):
    """The issue's scenario: the active master's machine stops under a stream of writes through the app."""
    lab, writer, passive, _ = pair
    started = int(time.time())
    result = mariadb_pair.kill_writer_run(lab)
    assert result["killed"] == writer and result["recovered"], result
    assert result["outage_s"] < 10, result
    # the returning master stays passive: no automatic fail-back, never two writers
    assert result["new_writer"] == passive, result
    assert result["acked"] > 50 and result["lost"] == {writer: 0, passive: 0}, result
    assert result["checksums_match"], result
    # before taking writes, the survivor made sure through the Hetzner API that the dead master is off: after a
    # power cut the API already says so; a master that still runs (a cut link) it powers off (the chaos suite)
    token = lab.stack_outputs()["secrets"]["failover_token"]
    log = requests.get(f"https://{lab.addr.host_public}:8443/lab/log", verify=str(lab.ca.cert_path), timeout=5,
                       headers={"Authorization": f"Bearer {token}"}).json()["log"]
    journal = lab.exec(passive, ["journalctl", "-u", "hastack-mariadb-writer", "--since", f"@{started}", "-o", "cat",
                                 "--no-pager"]).stdout
    server = lab.server_id(writer)
    already_off = f"{writer} (server {server}) is already off"
    fenced = already_off if already_off in journal else f"fencing {writer}: powering off server {server}"
    assert fenced in journal and journal.index(fenced) < journal.index(f"promoting {passive} to writer"), journal
    if "powering off" in fenced:
        assert any(e["path"] == f"/v1/servers/{server}/actions/poweroff" and e["time"] >= started for e in log), log


def test_a_master_rebuilt_empty_is_seeded_from_its_peer_and_rejoins(lab):
    writer = mariadb_pair.settled(lab)
    victim = next(h for h in mariadb_pair.masters(lab) if h != writer)
    before = mariadb_pair.checksums(lab)[writer]
    # as a rebuilt server would be: an empty data directory, no agent state
    wipe = ("systemctl stop hastack-mariadb-writer mariadb && rm -rf /var/lib/mysql /var/lib/hastack/mariadb/writer-state.json"
            " && mkdir -m 0755 /var/lib/mysql && chown mysql:mysql /var/lib/mysql"
            " && mariadb-install-db --user=mysql --skip-test-db >/dev/null && systemctl start mariadb")
    proc = lab.exec(victim, ["bash", "-c", wipe])
    assert proc.returncode == 0, proc.stderr
    assert sql(lab, victim, "SHOW DATABASES LIKE 'hastack'") == ""
    report = converge(lab.inventory_entries())
    assert report.ok, report
    assert mariadb_pair.settled(lab) == writer
    sums = mariadb_pair.checksums(lab)
    assert sums[victim] == sums[writer] and before  # same data on both
    # the pair replicates both ways again: a row from the writer reaches the rebuilt master
    sql(lab, writer, "INSERT INTO hastack.probe (origin) VALUES ('after-reseed')")
    wait_for(lambda: "after-reseed" in sql(lab, victim, "SELECT origin FROM hastack.probe"), 20, "replication to the rebuilt master")
    again = converge(lab.inventory_entries())
    assert again.changes == 0, {n: r.changed_operations for n, r in again.hosts.items() if r.changed}
