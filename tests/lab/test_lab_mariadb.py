"""The MariaDB master-master pair on the lab's machines."""

import pytest

from hastack.secrets import mariadb_passwords
from tests.lab.helpers import wait_for

CA = "/usr/local/share/ca-certificates/hastack-lab.crt"


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
        f" ssl={{'ca': {CA!r}}}, ssl_verify_cert=True, connect_timeout=5, autocommit=True)\n"
        f"cur = c.cursor(); cur.execute({query!r}); print(cur.fetchall())\n"
    )
    return lab.exec(app_host, ["python3", "-c", code], input=password)


@pytest.fixture(scope="module")
def pair(lab):
    db1, db2 = (n.host for n in lab.topo.mariadb)
    pw = mariadb_passwords(lab.stack_outputs()["secrets"]["seed"])
    sql(lab, db1, "CREATE TABLE IF NOT EXISTS hastack.probe (id INT AUTO_INCREMENT PRIMARY KEY, origin VARCHAR(32))")
    wait_for(lambda: "probe" in sql(lab, db2, "SHOW TABLES IN hastack"), 20, "the table on the other master")
    return lab, db1, db2, pw


def slave_status(lab, host):
    out = lab.exec(host, ["mariadb", "--batch", "-e", "SHOW SLAVE STATUS\\G"]).stdout
    pairs = (line.strip().partition(":") for line in out.splitlines() if ":" in line)
    return {k.strip(): v.strip() for k, _, v in pairs}


def test_replication_runs_both_ways_by_gtid_over_tls(pair):
    lab, db1, db2, _ = pair
    for host in (db1, db2):
        st = slave_status(lab, host)
        assert st["Slave_IO_Running"] == "Yes" and st["Slave_SQL_Running"] == "Yes", (host, st.get("Last_Error"))
        assert st["Using_Gtid"] == "Slave_Pos" and st["Master_SSL_Allowed"] == "Yes"
        assert st["Master_SSL_Verify_Server_Cert"] == "Yes"
    assert sql(lab, db1, "SELECT @@read_only") == "0" and sql(lab, db2, "SELECT @@read_only") == "1"
    assert sql(lab, db1, "SELECT @@server_id, @@gtid_domain_id, @@auto_increment_offset") == "1\t1\t1"
    assert sql(lab, db2, "SELECT @@server_id, @@gtid_domain_id, @@auto_increment_offset") == "2\t2\t2"


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
    odd = sql(lab, db1, f"SELECT COUNT(*) FROM hastack.probe WHERE origin LIKE '{db1}-%' AND id % 2 = 0")
    even = sql(lab, db1, f"SELECT COUNT(*) FROM hastack.probe WHERE origin LIKE '{db2}-%' AND id % 2 = 1")
    assert odd == even == "0"  # offsets 1 and 2, increment 2
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
    lb = lab.topo.loadbalancers[0].name
    probe = lab.exec(lb, ["timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{ip1}/3306"])
    assert probe.returncode == 124  # a web host never reaches the database port
    mon = lab.topo.monitoring
    # the monitoring host is not a MariaDB client at all
    probe = lab.exec(mon, ["timeout", "2", "bash", "-c", f"exec 3<>/dev/tcp/{ip1}/3306"])
    assert probe.returncode == 124


def test_application_writes_on_the_writer_and_is_refused_on_the_passive(pair):
    lab, db1, db2, pw = pair
    app = lab.topo.hosts_with_role("app")[0].name
    ok = app_query(lab, app, lab.topo.host(db1).private_ip, "INSERT INTO probe (origin) VALUES ('app')", pw["app"])
    assert ok.returncode == 0, ok.stderr
    refused = app_query(lab, app, lab.topo.host(db2).private_ip, "INSERT INTO probe (origin) VALUES ('app')", pw["app"])
    assert refused.returncode != 0 and "read-only" in refused.stderr, refused.stderr
