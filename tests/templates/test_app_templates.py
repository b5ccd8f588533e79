"""The app servers' local proxy to the MariaDB writer, checked by haproxy -c."""

import subprocess

import pytest

from hastack.stackfile import load_stack
from hastack.templating import render
from roles.mariadb import MARIADB_PORT, WRITER_AGENT_PORT
from tests.templates.test_loadbalancer_templates import need


@pytest.mark.parametrize("stack", ["prod", "staging"])
def test_local_proxy_config_is_accepted_and_reaches_only_the_writer(stack, tmp_path):
    need("haproxy")
    topo = load_stack(stack)
    host = topo.hosts_with_role("app")[0]
    data = topo.host_data(host)
    text = render("app", "/etc/haproxy/haproxy.cfg", hostname=host.name, port=MARIADB_PORT,
                  agent_port=WRITER_AGENT_PORT, masters=data["mariadb_masters"])
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    proc = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"bind 127.0.0.1:{MARIADB_PORT}" in text and "balance first" in text
    assert "on-marked-down shutdown-sessions" in text and f"agent-port {WRITER_AGENT_PORT}" in text
    for name, ip in data["mariadb_masters"].items():
        assert f"server {name} {ip}:{MARIADB_PORT}" in text
    # the application's TLS name for the writer resolves to this proxy
    assert data["etc_hosts"]["mariadb-writer"] == "127.0.0.1"
