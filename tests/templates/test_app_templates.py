"""App server templates: the local proxy to the MariaDB writer (checked by haproxy -c) and the
application's unit (checked by systemd-analyze verify), with variables from roles.app.config."""

import shutil
import subprocess

import pytest

from hastack.templating import render
from roles.app import APP_PORT
from roles.app import config as c
from roles.mariadb import MARIADB_PORT, WRITER_AGENT_PORT
from roles.redis import REDIS_PORT
from tests.templates.hostdata import host_data, topology
from tests.templates.test_loadbalancer_templates import need


def app_vars(stack, host, **overrides):
    return c.template_vars(host.name, host_data(stack, host, "app", **overrides))


@pytest.mark.parametrize("stack", ["prod", "staging"])
def test_local_proxy_config_is_accepted_and_reaches_only_the_writer(stack, tmp_path):
    topo = topology(stack)
    host = topo.hosts_with_role("app")[0]
    text = render("app", c.PROXY_CFG, **app_vars(stack, host)[c.PROXY_CFG])
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    proc = subprocess.run([need("haproxy"), "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"bind 127.0.0.1:{MARIADB_PORT}" in text and "balance first" in text
    assert "on-marked-down shutdown-sessions" in text and f"tcp-check connect port {WRITER_AGENT_PORT}" in text
    assert 'tcp-check expect string "up"' in text  # the writer agent's answer, not a bare connection
    servers = [line.strip() for line in text.splitlines() if line.strip().startswith("server ")]
    assert servers == [f"server {n.host} {topo.host(n.host).private_ip}:{MARIADB_PORT}" for n in topo.cluster("mariadb").nodes]
    assert len(servers) == 2
    # the application's TLS name for the writer resolves to this proxy
    assert host_data(stack, host, "app")["etc_hosts"]["mariadb-writer"] == "127.0.0.1"


def _environment(text):
    return dict(line.removeprefix("Environment=").split("=", 1)
                for line in text.splitlines() if line.startswith("Environment="))


@pytest.mark.parametrize("stack", ["prod", "staging"])
def test_app_unit_runs_the_reference_app_against_the_topology(stack):
    topo = topology(stack)
    host = topo.hosts_with_role("app")[0]
    text = render("app", c.UNIT, **app_vars(stack, host)[c.UNIT])
    lines = text.splitlines()
    assert "ExecStart=/usr/bin/python3 /opt/hastack-app/app.py" in lines
    env = _environment(text)
    assert env["HASTACK_BIND"] == host.private_ip and env["HASTACK_PORT"] == str(APP_PORT)
    assert env["HASTACK_DEPENDENCIES"] == ""
    assert env["HASTACK_MYSQL_HOST"] == "mariadb-writer" and env["HASTACK_MYSQL_DATABASE"] == "hastack"
    # the stack CA as the app's own credential: a change of it restarts the app (the CA rotating)
    assert env["HASTACK_CA_FILE"] == "%d/ca.crt" and "LoadCredential=ca.crt:/etc/hastack-app/ca.crt" in lines
    assert env["HASTACK_REDIS_HOSTS"].split(",") == [f"{h.private_ip}:{REDIS_PORT}" for h in topo.hosts_with_role("redis")]
    # app_tls is on by default: the certificate and key reach the service as credentials
    assert "LoadCredential=tls.crt:/etc/hastack-app/tls.crt" in lines
    assert "LoadCredential=tls.key:/etc/hastack-app/tls.key" in lines
    assert "DynamicUser=yes" in lines and "NoNewPrivileges=yes" in lines


def test_app_unit_follows_operator_overrides():
    host = topology("prod").hosts_with_role("app")[0]
    v = app_vars("prod", host, app_tls=False, app_exec="/opt/shop/bin/shop", app_dependencies=["db", "cache"])
    text = render("app", c.UNIT, **v[c.UNIT])
    assert "ExecStart=/opt/shop/bin/shop" in text.splitlines()
    assert _environment(text)["HASTACK_DEPENDENCIES"] == "db,cache"
    assert "tls.crt" not in text and "tls.key" not in text


def test_app_unit_passes_systemd_analyze_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (package systemd)")
    host = topology("prod").hosts_with_role("app")[0]
    unit = tmp_path / "hastack-app.service"
    unit.write_text(render("app", c.UNIT, **app_vars("prod", host)[c.UNIT]))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("ExecStart=/usr/bin/python3", "ExecStart=/nonexistent/python3"))
    assert subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True).returncode != 0
