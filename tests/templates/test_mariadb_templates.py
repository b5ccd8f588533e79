"""MariaDB templates: each master's settings, the seed donor, the join command, the writer agent's
unit and the exporter, with variables from roles.mariadb.config and each master's host data.

The lab tests run them on real masters; here, what the pair depends on: distinct server and
GTID domain ids, odd and even keys, read-only boot, TLS, the preferred writer, the peer."""

import subprocess

import pytest

from hastack.templating import render
from roles import hcloud_agent
from roles.mariadb import DONOR_PORT
from roles.mariadb import config as c
from tests.templates.hostdata import host_data, topology

STACKS = ["prod", "staging"]


def masters(stack):
    topo = topology(stack)
    return topo, [topo.host(n.host) for n in topo.cluster("mariadb").nodes]


def db_vars(stack, host, **overrides):
    return c.template_vars(host.name, host_data(stack, host, "mariadb", **overrides), venv=hcloud_agent.VENV)


def settings(text):
    """key -> value of a my.cnf section (flags without a value map to None)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip() or None
    return out


@pytest.mark.parametrize("stack", STACKS)
def test_masters_have_their_own_ids_and_hand_out_odd_and_even_keys(stack):
    _, pair = masters(stack)
    cnfs = [settings(render("mariadb", c.CNF, **db_vars(stack, h)[c.CNF])) for h in pair]
    assert len(cnfs) == 2
    assert len({cnf["server_id"] for cnf in cnfs}) == 2
    assert len({cnf["gtid_domain_id"] for cnf in cnfs}) == 2
    assert [cnf["auto_increment_increment"] for cnf in cnfs] == ["2", "2"]
    assert sorted(cnf["auto_increment_offset"] for cnf in cnfs) == ["1", "2"]
    for host, cnf in zip(pair, cnfs, strict=True):
        assert cnf["bind_address"] == host.private_ip
        assert cnf["gtid_strict_mode"] == "ON" and cnf["binlog_format"] == "ROW" and cnf["log_slave_updates"] == "ON"
        assert cnf["innodb_flush_log_at_trx_commit"] == "1" and cnf["sync_binlog"] == "1"
        assert cnf["require_secure_transport"] == "ON" and cnf["read_only"] == "ON"
        assert cnf["innodb_buffer_pool_size"] == "256M"  # the role default


@pytest.mark.parametrize("stack", STACKS)
def test_join_command_is_valid_bash_and_only_the_preferred_master_initialises(stack, tmp_path):
    topo, pair = masters(stack)
    writer = topo.cluster("mariadb").nodes[0].host
    for host in pair:
        peer = next(h for h in pair if h.name != host.name)
        text = render("mariadb", c.JOIN, **db_vars(stack, host)[c.JOIN])
        script = tmp_path / f"{host.name}.sh"
        script.write_text(text)
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        lines = text.splitlines()
        assert "DB=hastack" in lines and f"PEER={peer.private_ip}" in lines and f"PEER_NAME={peer.name}" in lines
        preferred = "yes" if host.name == writer else "no"
        assert any(line.startswith(f"PREFERRED={preferred} ") for line in lines), text[:600]
        assert '    [ "$PREFERRED" = yes ] && [ "$peer_has" = 0 ] || exit 0' in lines
        assert f'OPENSSL:$PEER:{DONOR_PORT},' in text
    assert sum("\nPREFERRED=yes " in render("mariadb", c.JOIN, **db_vars(stack, h)[c.JOIN]) for h in pair) == 1


@pytest.mark.parametrize("stack", STACKS)
def test_seed_donor_answers_only_the_peer_on_the_private_address(stack):
    _, pair = masters(stack)
    for host in pair:
        peer = next(h for h in pair if h.name != host.name)
        text = render("mariadb", c.DONOR_UNIT, **db_vars(stack, host)[c.DONOR_UNIT])
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert exec_start.startswith(f"ExecStart=/usr/bin/socat OPENSSL-LISTEN:{DONOR_PORT},bind={host.private_ip},")
        assert ",verify=1," in exec_start and exec_start.count("commonname=") == 1
        assert f",commonname={peer.name} " in exec_start


def test_writer_agent_unit_runs_the_agent_from_its_virtualenv():
    _, pair = masters("prod")
    lines = render("mariadb", c.WRITER_UNIT, **db_vars("prod", pair[0])[c.WRITER_UNIT]).splitlines()
    assert (f"ExecStart={hcloud_agent.VENV}/bin/python /opt/hastack/mariadb_writer.py "
            "--config /etc/hastack/mariadb-writer.json run") in lines
    # its state, and its metrics (the node exporter's textfile directory, if there is one)
    assert "ReadWritePaths=/var/lib/hastack/mariadb -/var/lib/prometheus/node-exporter" in lines
    assert "ProtectSystem=strict" in lines


def test_exporter_listens_on_the_private_address_as_the_exporter_user():
    _, pair = masters("prod")
    host = pair[0]
    password = host_data("prod", host, "mariadb")["mariadb_passwords"]["exporter"]
    lines = render("mariadb", c.EXPORTER_ARGS, **db_vars("prod", host)[c.EXPORTER_ARGS]).splitlines()
    assert f'ARGS="--web.listen-address={host.private_ip}:9104"' in lines
    assert f'DATA_SOURCE_NAME="exporter:{password}@unix(/run/mysqld/mysqld.sock)/"' in lines


def test_while_the_seed_rotates_every_account_logs_in_with_either_password():
    from hastack.secrets import accepted
    from roles.mariadb import USERS, passwords
    from roles.mariadb.deploy import identified, users_sql

    class Data(dict):
        __getattr__ = dict.__getitem__

    host = topology("prod").hosts_with_role("mariadb")[0]
    base = {k: v for k, v in host_data("prod", host, "mariadb").items() if k != "mariadb_accepted"}
    new, old = passwords("new-seed"), passwords("old-seed")
    sql = users_sql(Data(base, mariadb_passwords=new, mariadb_accepted=accepted(["new-seed", "old-seed"], "mariadb", USERS)))
    for user in USERS:
        assert (f"IDENTIFIED VIA mysql_native_password USING PASSWORD('{new[user]}') OR "
                f"mysql_native_password USING PASSWORD('{old[user]}')") in sql
    # after the rotation: one password, and IDENTIFIED BY replaces the whole chain (the old one stops)
    done = users_sql(Data(base, mariadb_passwords=new))
    assert old["app"] not in done and f"IDENTIFIED BY '{new['app']}' REQUIRE SSL" in done
    assert identified(["a"]) == "IDENTIFIED BY 'a'"
