"""Monitoring templates: Prometheus, Alertmanager and blackbox configurations as rendered for
real topologies, checked by promtool, amtool and the blackbox exporter themselves."""

import shutil
import subprocess

import pytest
import yaml

from hastack.templating import render
from roles.monitoring import config as mc
from roles.monitoring import rules
from tests.templates.hostdata import host_data, topology

STACKS = ["prod", "staging"]


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: `make host-deps` installs it (Debian's prometheus packages)"
    return path


def mon_vars(stack, **overrides):
    host = topology(stack).hosts_with_role("monitoring")[0]
    return mc.template_vars(host_data(stack, host, "monitoring", **overrides), filesystem_bytes=38 * 1024 ** 3)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("stack", STACKS)
def test_prometheus_config_passes_promtool_and_scrapes_every_exporter_of_the_topology(stack, tmp_path):
    tvars = mon_vars(stack)
    rules_file = write(tmp_path, "hastack.rules.yml", render("monitoring", rules.RULES_FILE, **tvars[rules.RULES_FILE]))
    pvars = {**tvars[mc.PROMETHEUS_YML], "rule_files": [str(rules_file)]}
    cfg = write(tmp_path, "prometheus.yml", render("monitoring", mc.PROMETHEUS_YML, **pvars))
    proc = subprocess.run([tool("promtool"), "check", "config", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    parsed = yaml.safe_load(cfg.read_text())
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]] for j in parsed["scrape_configs"]}
    topo = topology(stack)
    ips = lambda role, port: sorted(f"{h.private_ip}:{port}" for h in topo.hosts_with_role(role))  # noqa: E731
    assert sorted(jobs["node"]) == sorted(f"{h.private_ip}:9100" for h in topo.hosts)
    assert sorted(jobs["haproxy"]) == ips("loadbalancer", 8404)
    assert sorted(jobs["mysqld"]) == ips("mariadb", 9104)
    assert sorted(jobs["redis"]) == ips("redis", 9121)
    assert sorted(jobs["cassandra"]) == ips("cassandra", 7070)
    sentinels = [topo.host(s).private_ip + ":26379" for s in topo.cluster("redis").sentinels]
    assert sorted(jobs["tls"]) == sorted(ips("redis", 6379) + ips("cassandra", 9042) + ips("app", 8080) + sentinels)
    assert jobs["site"] == ["https://203.0.113.10/", "http://203.0.113.10/"]
    # every target names its host, so an alert says which machine and inhibition can match it
    for job in parsed["scrape_configs"]:
        for sc in job["static_configs"]:
            assert sc["labels"].get("host") or job["job_name"] == "site", job["job_name"]


def test_a_host_added_to_the_topology_is_scraped_and_a_removed_one_is_not():
    tvars = mon_vars("prod")
    hosts = host_data("prod", topology("prod").hosts_with_role("monitoring")[0], "monitoring")["monitoring_hosts"]
    grown = mc.scrape_jobs(hosts + [{"name": "prod-app4", "role": "app", "ip": "10.0.1.33"}])
    assert {"address": "10.0.1.33:9100", "host": "prod-app4", "role": "app"} in grown[0]["targets"]
    shrunk = mc.scrape_jobs([h for h in hosts if h["name"] != "prod-cass3"])
    assert all(t["host"] != "prod-cass3" for job in shrunk for t in job["targets"])
    assert tvars[mc.PROMETHEUS_YML]["jobs"] == mc.scrape_jobs(hosts)


def test_prometheus_listens_on_the_private_address_only_with_retention_sized_to_the_disk():
    tvars = mon_vars("prod")
    args = render("monitoring", mc.PROMETHEUS_ARGS, **tvars[mc.PROMETHEUS_ARGS])
    ip = topology("prod").hosts_with_role("monitoring")[0].private_ip
    assert f"--web.listen-address={ip}:9090" in args
    assert "--storage.tsdb.retention.size=19GB" in args and "--storage.tsdb.retention.time=30d" in args
    fixed = mon_vars("prod", monitoring_retention_size="5GB")[mc.PROMETHEUS_ARGS]
    assert fixed["retention_size"] == "5GB"
    am = render("monitoring", mc.ALERTMANAGER_ARGS, **tvars[mc.ALERTMANAGER_ARGS])
    # no gossip port: the Debian default would listen on every address
    assert f"--web.listen-address={ip}:9093 --cluster.listen-address=\"" in am
    bb = render("monitoring", mc.BLACKBOX_ARGS, **tvars[mc.BLACKBOX_ARGS])
    assert "--web.listen-address=127.0.0.1:9115" in bb


@pytest.mark.parametrize("receivers", [
    {"monitoring_alert_webhooks": ["https://hooks.example.com/a?token=x"], "monitoring_alert_email": None},
    {"monitoring_alert_webhooks": [], "monitoring_alert_email": {
        "to": ["ops@example.com", "oncall@example.com"], "sender": "alerts@example.com",
        "smarthost": "smtp.example.com:587", "require_tls": True}},
])
def test_alertmanager_config_passes_amtool_with_grouping_and_host_down_inhibition(receivers, tmp_path):
    tvars = mon_vars("prod", **receivers)
    cfg = write(tmp_path, "alertmanager.yml", render("monitoring", mc.ALERTMANAGER_YML, **tvars[mc.ALERTMANAGER_YML]))
    proc = subprocess.run([tool("amtool"), "check-config", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parsed = yaml.safe_load(cfg.read_text())
    assert parsed["route"]["group_by"] == ["alertname", "host"]
    host_down = parsed["inhibit_rules"][0]
    assert host_down["source_matchers"] == ["alertname = HostDown"] and host_down["equal"] == ["host"]
    receiver = parsed["receivers"][0]
    if receivers["monitoring_alert_webhooks"]:
        assert [w["url"] for w in receiver["webhook_configs"]] == receivers["monitoring_alert_webhooks"]
    else:
        assert [e["to"] for e in receiver["email_configs"]] == ["ops@example.com", "oncall@example.com"]
        assert parsed["global"]["smtp_smarthost"] == "smtp.example.com:587"


@pytest.mark.parametrize("stack", STACKS)
def test_blackbox_config_passes_the_exporters_own_check(stack, tmp_path):
    tvars = mon_vars(stack)
    cfg = write(tmp_path, "blackbox.yml", render("monitoring", mc.BLACKBOX_YML, **tvars[mc.BLACKBOX_YML]))
    proc = subprocess.run([tool("prometheus-blackbox-exporter"), "--config.check", f"--config.file={cfg}"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    modules = yaml.safe_load(cfg.read_text())["modules"]
    site = modules["site_https"]["http"]
    assert site["fail_if_not_ssl"] and site["tls_config"]["server_name"] == topology(stack).domain
    assert modules["tls"]["tcp"]["tls_config"]["ca_file"] == f"/etc/ssl/hastack/{stack}-ca.crt"


def test_the_external_uptime_probe_config_passes_its_checks(tmp_path):
    from roles.monitoring import uptime

    ca = write(tmp_path, "ca.crt", "-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n")
    probe = uptime.for_stack("prod", "203.0.113.10", ca_file=ca)
    files = uptime.write_config(probe, tmp_path / "uptime")
    proc = subprocess.run([tool("promtool"), "check", "config", str(files["prometheus.yml"])], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = subprocess.run([tool("amtool"), "check-config", str(files["alertmanager.yml"])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parsed = yaml.safe_load(files["prometheus.yml"].read_text())
    assert parsed["global"]["scrape_interval"] == "15s"  # siteProbeInterval
    assert parsed["scrape_configs"][0]["static_configs"][0]["targets"] == ["https://203.0.113.10/"]
    blackbox = yaml.safe_load(files["blackbox.yml"].read_text())["modules"]["site_https"]["http"]["tls_config"]
    assert blackbox == {"server_name": "www.example.com", "ca_file": str(tmp_path / "uptime" / "stack-ca.crt")}
    assert all(p.stat().st_mode & 0o777 == 0o640 for p in files.values())
    argv = uptime.commands(probe, files, tmp_path / "data")
    assert "--web.listen-address=127.0.0.1:9090" in argv["uptime-prometheus"]
    assert "--cluster.listen-address=" in argv["uptime-alertmanager"]


def test_the_uptime_probe_refuses_a_missing_stack_ca_naming_it(tmp_path):
    from roles.monitoring import uptime

    with pytest.raises(ValueError, match=r"its CA .*missing.crt is not on this machine: copy it here and pass --ca-file"):
        uptime.for_stack("prod", "203.0.113.10", ca_file=tmp_path / "missing.crt")
