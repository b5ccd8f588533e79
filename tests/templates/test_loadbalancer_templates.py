"""Load balancer templates, checked by the programs that read them: haproxy -c, keepalived --config-test.

Variables come from roles.loadbalancer.config with the host's data (tests/templates/hostdata.py),
as the deploy gets them; only file paths are moved onto this machine where a checker opens them.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import roles.app as app_role
from hastack.pki import CertificateAuthority
from hastack.templating import render
from roles.loadbalancer import STATS_PORT
from roles.loadbalancer import config as c
from tests.support.privileges import needs_real_root
from tests.templates.hostdata import FLOATING_IP, host_data, topology

STACKS = ["prod", "staging"]
# the interfaces the deploy finds holding the private and the public address (facts)
PRIVATE_IF, PUBLIC_IF = "eth1", "eth0"


def need(program):
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")
    assert path, f"{program} is not installed (make host-deps installs it)"
    return path


def lb_vars(stack, host, **overrides):
    """target -> variables, as the deploy computes them on ``host``."""
    return c.template_vars(host.name, host_data(stack, host, "loadbalancer", **overrides),
                           interface=PRIVATE_IF, public_interface=PUBLIC_IF)


def haproxy_cfg(stack, host, pki, **overrides):
    """haproxy.cfg for ``host``, its certificate files moved to ``pki`` (haproxy -c opens them)."""
    v = lb_vars(stack, host, **overrides)[c.HAPROXY_CFG]
    assert v["certificate"] == c.CERT and v["backend_ca"] in (c.STACK_CA, None)
    v.update(certificate=str(pki["site"]), backend_ca=v["backend_ca"] and str(pki["ca"]))
    return render("loadbalancer", c.HAPROXY_CFG, **v)


def keepalived_cfg(stack, host, scripts):
    """keepalived.conf for ``host``, its scripts moved to ``scripts`` (keepalived checks they exist)."""
    v = lb_vars(stack, host)[c.KEEPALIVED_CONF]
    assert v["check_script"] == c.CHECK_SCRIPT and v["notify_command"] == c.NOTIFY_COMMAND
    v.update(check_script=f"{scripts}/{Path(c.CHECK_SCRIPT).name}",
             notify_command=f"{scripts}/{Path(c.FAILOVER_COMMAND).name} notify")
    return render("loadbalancer", c.KEEPALIVED_CONF, **v)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority.own(d, "test")
    issued = ca.issue("site", dns=["www.example.com"], ips=[FLOATING_IP])
    site = d / "site.pem"
    site.write_text(issued.chain_pem + issued.key_pem)
    stack_ca = d / "stack-ca.pem"
    stack_ca.write_text(ca.ca_pem_ensured())
    return {"site": site, "ca": stack_ca}


def haproxy_check(path):
    return subprocess.run([need("haproxy"), "-c", "-f", str(path)], capture_output=True, text=True)


@pytest.mark.parametrize("stack", STACKS)
def test_haproxy_accepts_the_rendered_config_with_tls_to_every_app_server(stack, pki, tmp_path):
    topo = topology(stack)
    for host in topo.hosts_with_role("loadbalancer"):
        text = haproxy_cfg(stack, host, pki)
        cfg = tmp_path / f"{host.name}.cfg"
        cfg.write_text(text)
        proc = haproxy_check(cfg)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        servers = [line.strip() for line in text.splitlines() if line.strip().startswith("server ")]
        assert servers == [
            f"server {app.name} {app.private_ip}:{app_role.APP_PORT} ssl verify required ca-file {pki['ca']} "
            f"verifyhost {app.name} sni str({app.name})"
            for app in topo.hosts_with_role("app")
        ]
        assert f"bind :443 ssl crt {pki['site']} alpn h2,http/1.1" in text
        assert "ssl-min-ver TLSv1.2" in text and "redirect scheme https code 301" in text
        assert "option redispatch 1" in text
        assert f"option httpchk GET {app_role.DEFAULTS['app_health_path']}" in text
        assert f"bind {host.private_ip}:{STATS_PORT}" in text  # stats on the private network only


def test_haproxy_limits_are_the_role_defaults():
    """The README's promises: HSTS for two years, per-client limits, 8000 connections."""
    topo = topology("prod")
    lines = [line.strip() for line in haproxy_cfg("prod", topo.hosts_with_role("loadbalancer")[0], {"site": "s", "ca": "c"}).splitlines()]
    assert "maxconn 8000" in lines
    assert 'http-response set-header Strict-Transport-Security "max-age=63072000; includeSubDomains"' in lines
    # sized for many users behind one address; a refused client is told when to come back
    assert "tcp-request connection reject if { sc0_conn_cur gt 1000 }" in lines
    assert ('http-request deny deny_status 429 content-type text/plain string "too many requests from your address; '
            'retry in 10 s\\n" hdr Retry-After 10 if { sc0_http_req_rate gt 3000 }') in lines


def test_haproxy_plain_to_app_servers_when_app_tls_is_off(pki, tmp_path):
    topo = topology("prod")
    text = haproxy_cfg("prod", topo.hosts_with_role("loadbalancer")[0], pki, app_tls=False, app_health_path="/up")
    cfg = tmp_path / "plain.cfg"
    cfg.write_text(text)
    proc = haproxy_check(cfg)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    servers = [line.strip() for line in text.splitlines() if line.strip().startswith("server ")]
    assert servers == [f"server {a.name} {a.private_ip}:{app_role.APP_PORT}" for a in topo.hosts_with_role("app")]
    assert "option httpchk GET /up" in text


def test_haproxy_rejects_a_broken_config(pki, tmp_path):
    topo = topology("prod")
    text = haproxy_cfg("prod", topo.hosts_with_role("loadbalancer")[0], pki)
    assert "balance roundrobin" in text
    good, broken = tmp_path / "good.cfg", tmp_path / "broken.cfg"
    good.write_text(text)
    broken.write_text(text.replace("balance roundrobin", "balance nonsense"))
    assert haproxy_check(good).returncode == 0
    assert haproxy_check(broken).returncode != 0


def test_keepalived_check_asks_the_haproxy_monitor_listener():
    """The check script keepalived runs must reach the loopback listener haproxy.cfg defines."""
    host = topology("prod").hosts_with_role("loadbalancer")[0]
    v = lb_vars("prod", host)
    check = render("loadbalancer", c.CHECK_SCRIPT, **v[c.CHECK_SCRIPT])
    cfg = render("loadbalancer", c.HAPROXY_CFG, **v[c.HAPROXY_CFG])
    assert check.startswith("#!/bin/sh\n")
    assert f'"http://127.0.0.1:{STATS_PORT}$path"' in check
    assert "path=/healthz" in check and "backends) path=/backends" in check
    assert f"bind 127.0.0.1:{STATS_PORT}" in cfg and "monitor-uri /healthz" in cfg
    assert "if { path /backends } { nbsrv(app) gt 0 }" in cfg


@pytest.mark.parametrize("stack,interval", [("prod", "30s"), ("staging", "30s")])
def test_reconcile_service_runs_one_process_at_the_role_interval(stack, interval):
    host = topology(stack).hosts_with_role("loadbalancer")[0]
    service = render("loadbalancer", c.RECONCILE_SERVICE, **lb_vars(stack, host)[c.RECONCILE_SERVICE]).splitlines()
    assert f"ExecStart={c.FAILOVER_COMMAND} watch --every 30" in service
    assert "Restart=always" in service and f"RestartSec={interval}" in service
    lab = lb_vars(stack, host, lb_reconcile_interval="1.5min")
    assert f"ExecStart={c.FAILOVER_COMMAND} watch --every 90" in render(
        "loadbalancer", c.RECONCILE_SERVICE, **lab[c.RECONCILE_SERVICE]).splitlines()


@pytest.mark.parametrize("span,seconds", [("500ms", 0.5), ("5s", 5), ("1.5min", 90), ("2h", 7200)])
def test_time_spans_in_seconds(span, seconds):
    assert c.timespan_seconds(span) == seconds


def test_a_time_span_systemd_would_not_take_is_refused_with_examples():
    with pytest.raises(ValueError, match="'5 s' is not a time span such as 500ms, 5s, 1min or 1h"):
        c.timespan_seconds("5 s")


NETNS = "hstest-keepalived"


@pytest.fixture(scope="module")
def keepalived_check():
    """keepalived --config-test wants the interfaces and scripts to exist: a namespace with
    eth0 and eth1, and root-owned scripts in a directory only root can write (script security)."""
    need("keepalived")
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    for ifname in (PUBLIC_IF, PRIVATE_IF):
        subprocess.run(["ip", "-n", NETNS, "link", "add", ifname, "type", "veth", "peer", "name", ifname + "p"], check=True)
    scripts = Path("/run/hastack-test-scripts")
    scripts.mkdir(mode=0o755, exist_ok=True)
    for name in (Path(c.CHECK_SCRIPT).name, Path(c.FAILOVER_COMMAND).name):
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
    topo = topology(stack)
    priorities = []
    for host in topo.hosts_with_role("loadbalancer"):
        cfg = tmp_path / f"{host.name}.conf"
        text = keepalived_cfg(stack, host, scripts)
        cfg.write_text(text)
        proc = check(cfg)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        peer = next(h for h in topo.hosts_with_role("loadbalancer") if h.name != host.name)
        assert f"unicast_src_ip {host.private_ip}\n    unicast_peer {{\n        {peer.private_ip}\n    }}" in text
        assert "state BACKUP\n    nopreempt\n" in text and "vrrp_version 3" in text
        assert f"interface {PRIVATE_IF}" in text and f"router_id {host.name}" in text
        assert "virtual_router_id 51" in text and "advert_int 0.2" in text
        assert f"{FLOATING_IP}/32 dev {PUBLIC_IF}" in text
        assert f'notify "{scripts}/hastack-failover notify"' in text
        priorities.append(int(re.search(r"^\s+priority (\d+)$", text, re.M).group(1)))
        # nopreempt: a failing HAProxy check must fault the instance (no weight), or the IP would never move
        assert not re.search(r"^\s*weight ", text.split("vrrp_script haproxy_alive")[1].split("}")[0], re.M)
        # reaching no app server costs more than the gap: after a partition the side cut off yields
        backends = text.split("vrrp_script backends_reachable")[1].split("}")[0]
        assert f'script "{scripts}/check-haproxy backends"' in backends and "weight -11" in backends
        assert "track_script {\n        haproxy_alive\n        backends_reachable\n    }" in text
    assert priorities == [100, 90]
    assert priorities[0] - 11 < priorities[1]


def test_keepalived_rejects_a_broken_config(tmp_path, keepalived_check):
    check, scripts = keepalived_check
    text = keepalived_cfg("prod", topology("prod").hosts_with_role("loadbalancer")[0], scripts)
    assert f"interface {PRIVATE_IF}" in text
    good, broken = tmp_path / "good.conf", tmp_path / "broken.conf"
    good.write_text(text)
    broken.write_text(text.replace(f"interface {PRIVATE_IF}", "interface eth9"))
    assert check(good).returncode == 0
    assert check(broken).returncode != 0


@pytest.mark.parametrize("stack", STACKS)
def test_failover_agent_configuration_passes_the_agents_own_checks(stack, tmp_path, monkeypatch):
    """What the deploy writes to /etc/hastack/failover.json, read by the agent's load_config:
    the peer by name and the witness (the monitoring host) where the tie-break asks it."""
    from types import SimpleNamespace

    from roles import hcloud_agent, witness
    from roles.loadbalancer import failover_agent

    topo = topology(stack)
    mon = topo.hosts_with_role("monitoring")[0]
    lbs = topo.hosts_with_role("loadbalancer")
    for host in lbs:
        data = host_data(stack, host, "loadbalancer")
        fake_host = SimpleNamespace(name=host.name, data=SimpleNamespace(**data))
        monkeypatch.setattr(witness, "host", fake_host)
        monkeypatch.setattr(hcloud_agent, "host", fake_host)
        config = c.failover_config(host.name, data, PUBLIC_IF, api=hcloud_agent.api_config(),
                                   witness=witness.client_config())
        path = tmp_path / f"{host.name}.json"
        path.write_text(json.dumps(config))
        cfg = failover_agent.load_config(str(path))
        peer = next(h for h in lbs if h.name != host.name)
        assert (cfg.server_name, cfg.peer_name) == (host.name, peer.name)
        assert cfg.peer_server_id != cfg.server_id
        assert (cfg.witness_name, cfg.witness_ip, cfg.witness_port) == (mon.name, mon.private_ip, witness.WITNESS_PORT)
        assert (cfg.witness_cert, cfg.witness_key, cfg.witness_ca) == tuple(
            f"{witness.TLS_DIR}/{name}" for name in witness.CLIENT_FILES)
        assert cfg.interface == PUBLIC_IF and cfg.metrics_file == c.FAILOVER_METRICS


def test_the_floating_ip_metrics_do_not_outlive_a_boot(tmp_path):
    """systemd-tmpfiles (run at every boot) removes the failover agent's metrics file with the rendered
    rule: a server back from a power cut does not report the floating IP as configured."""
    host = topology("prod").hosts_with_role("loadbalancer")[0]
    v = lb_vars("prod", host)[c.FAILOVER_METRICS_TMPFILES]
    assert v == {"metrics_file": c.FAILOVER_METRICS}
    stale = tmp_path / "hastack_floating_ip.prom"
    stale.write_text('hastack_floating_ip_configured{ip="198.51.100.1"} 1\n')
    conf = tmp_path / "hastack-floating-ip.conf"
    conf.write_text(render("loadbalancer", c.FAILOVER_METRICS_TMPFILES, metrics_file=str(stale)))
    proc = subprocess.run([need("systemd-tmpfiles"), "--remove", str(conf)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert not stale.exists()
