"""Load balancer templates, checked by the programs that read them: haproxy -c, keepalived --config-test."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import roles.app as app_role
from hastack.pki import CertificateAuthority
from hastack.stackfile import load_stack
from hastack.templating import render
from roles.loadbalancer import DEFAULTS, STATS_PORT
from tests.support.privileges import needs_real_root

STACKS = ["prod", "staging"]


def need(program):
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    assert path, f"{program} is not installed (make host-deps installs it)"
    return path


def haproxy_cfg(topo, host, cert, ca_file=None):
    ca_file = ca_file or cert.parent / "ca.crt"
    data = {**DEFAULTS, **topo.host_data(host)}
    return render("loadbalancer", "/etc/haproxy/haproxy.cfg", hostname=host.name, certificate=str(cert),
                  private_ip=host.private_ip, stats_port=STATS_PORT, app_servers=data["app_servers"],
                  app_port=app_role.APP_PORT, health_path=app_role.DEFAULTS["app_health_path"],
                  max_conn_per_ip=data["lb_max_conn_per_ip"], max_req_rate_per_ip=data["lb_max_req_rate_per_ip"],
                  hsts_max_age=data["lb_hsts_max_age"], maxconn=data["lb_maxconn"], backend_ca=str(ca_file))


def keepalived_cfg(topo, host, scripts="/usr/local/lib/hastack"):
    data = {**DEFAULTS, **topo.host_data(host)}
    return render("loadbalancer", "/etc/keepalived/keepalived.conf", hostname=host.name, interface="eth1",
                  floating_ip="203.0.113.10", public_interface="eth0",
                  check_script=f"{scripts}/check-haproxy", notify_command=f"{scripts}/notify",
                  private_ip=host.private_ip, peer_ip=data["vrrp_peer_ip"], router_id=data["lb_vrrp_router_id"],
                  advert_int=data["lb_vrrp_advert_int"],
                  priority=100 - data["lb_vrrp_priority_gap"] * (data["lb_index"] - 1),
                  check_weight=data["lb_vrrp_check_weight"])


@pytest.fixture(scope="module")
def site_pem(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    issued = CertificateAuthority(d, "test").issue("site", dns=["www.example.com"], ips=["203.0.113.10"])
    pem = d / "site.pem"
    pem.write_text(issued.chain_pem + issued.key_pem)
    return pem


@pytest.mark.parametrize("stack", STACKS)
def test_haproxy_accepts_the_rendered_config(stack, site_pem, tmp_path):
    need("haproxy")
    topo = load_stack(stack)
    for host in topo.loadbalancers:
        cfg = tmp_path / f"{host.name}.cfg"
        cfg.write_text(haproxy_cfg(topo, host, site_pem))
        proc = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        text = cfg.read_text()
        for app in topo.hosts_with_role("app"):
            assert f"server {app.name} {app.private_ip}:{app_role.APP_PORT} ssl verify required" in text
        assert "ssl-min-ver TLSv1.2" in text and "Strict-Transport-Security" in text
        assert "redirect scheme https" in text and "option redispatch" in text
        assert f"bind {host.private_ip}:{STATS_PORT}" in text  # stats on the private network only


def test_haproxy_rejects_a_broken_config(tmp_path, site_pem):
    need("haproxy")
    topo = load_stack("prod")
    cfg = tmp_path / "broken.cfg"
    cfg.write_text(haproxy_cfg(topo, topo.loadbalancers[0], site_pem).replace("balance roundrobin", "balance nonsense"))
    assert subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True).returncode != 0


NETNS = "hstest-keepalived"


@pytest.fixture(scope="module")
def keepalived_check():
    """keepalived --config-test wants the interface and scripts to exist: a namespace with an
    eth1, and root-owned scripts in a directory only root can write (script security)."""
    need("keepalived")
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    for ifname in ("eth0", "eth1"):
        subprocess.run(["ip", "-n", NETNS, "link", "add", ifname, "type", "veth", "peer", "name", ifname + "p"], check=True)
    scripts = Path("/run/hastack-test-scripts")
    scripts.mkdir(mode=0o755, exist_ok=True)
    for name in ("check-haproxy", "notify"):
        (scripts / name).write_text("#!/bin/sh\nexit 0\n")
        (scripts / name).chmod(0o755)

    def check(path):
        return subprocess.run(["ip", "netns", "exec", NETNS, "keepalived", "--config-test", "-f", str(path)],
                              capture_output=True, text=True)

    yield check, str(scripts)
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    shutil.rmtree(scripts, ignore_errors=True)


@needs_real_root  # keepalived's script security wants every directory up to / owned by root
@pytest.mark.parametrize("stack", STACKS)
def test_keepalived_accepts_the_rendered_config(stack, tmp_path, keepalived_check):
    check, scripts = keepalived_check
    topo = load_stack(stack)
    priorities = []
    for host in topo.loadbalancers:
        cfg = tmp_path / f"{host.name}.conf"
        text = keepalived_cfg(topo, host, scripts)
        cfg.write_text(text)
        proc = check(cfg)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        peer = next(h for h in topo.loadbalancers if h.name != host.name)
        assert f"unicast_peer {{\n        {peer.private_ip}\n    }}" in text
        assert "state BACKUP" in text and "nopreempt" in text
        priorities.append(int(re.search(r"^\s+priority (\d+)$", text, re.M).group(1)))
        assert "203.0.113.10/32 dev eth0" in text
    assert priorities[0] != priorities[1]
    # nopreempt: a failing HAProxy check must fault the instance (no weight), or the IP would never move
    assert "weight" not in text.split("vrrp_script")[1].split("}")[0]


def test_keepalived_rejects_a_broken_config(tmp_path, keepalived_check):
    check, scripts = keepalived_check
    topo = load_stack("prod")
    cfg = tmp_path / "broken.conf"
    cfg.write_text(keepalived_cfg(topo, topo.loadbalancers[0], scripts).replace("interface eth1", "interface eth9"))
    assert check(cfg).returncode != 0
