"""Load balancers, the floating IP and the app tier on the lab's real machines.

Traffic comes from the hsl-internet namespace, through the floating IP, as a
user's would; the lab's Hetzner API records what the failover agents did.
"""

import json
import subprocess
import sys
import time

import pytest
import requests

from hastack.lab.probe import outage
from tests.lab.helpers import wait_for

CURL = ["ip", "netns", "exec", "hsl-internet", "curl", "-s", "--max-time", "5"]


def api(lab, path):
    resp = requests.get(f"https://{lab.addr.host_public}:8443{path}", verify=str(lab.ca.cert_path), timeout=5,
                        headers={"Authorization": f"Bearer {lab.stack_outputs()['secrets']['failover_token']}"})
    resp.raise_for_status()
    return resp.json()


def owner(lab):
    """The load balancer the API says holds the floating IP."""
    server = api(lab, "/v1/floating_ips/1")["floating_ip"]["server"]
    return next(h.name for h in lab.topo.hosts_with_role("loadbalancer") if lab.server_id(h.name) == server)


def assigns(lab):
    return [e for e in api(lab, "/lab/log")["log"] if e["path"].endswith("/actions/assign")]


def vrrp_state(lab, name):
    proc = lab.exec(name, ["cat", "/run/hastack/failover-state.json"])
    return json.loads(proc.stdout).get("state") if proc.returncode == 0 else None


def other(lab, name):
    return next(h.name for h in lab.topo.hosts_with_role("loadbalancer") if h.name != name)


class Probe:
    """Requests every 100 ms from the internet namespace while something breaks."""

    def __init__(self, lab, seconds):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", "hsl-internet", sys.executable, "-m", "hastack.lab.probe",
             f"https://{lab.addr.floating_ip}/", "--ca", str(lab.ca.cert_path), "--interval", "0.1",
             "--duration", str(seconds), "--timeout", "3"],
            stdout=subprocess.PIPE, text=True)

    def result(self):
        out, _ = self.proc.communicate(timeout=120)
        records = [json.loads(line) for line in out.splitlines() if line.strip()]
        return records, outage(records)


@pytest.fixture(scope="module")
def settled(lab):
    """Both load balancers up, exactly one master, and it owns the floating IP."""
    for lb in lab.topo.hosts_with_role("loadbalancer"):
        if not lab.machine(lb.name).running():
            lab.start(lb.name)
    wait_for(lambda: sorted(vrrp_state(lab, h.name) or "" for h in lab.topo.hosts_with_role("loadbalancer")) == ["BACKUP", "MASTER"],
             30, "one MASTER and one BACKUP")
    master = next(h.name for h in lab.topo.hosts_with_role("loadbalancer") if vrrp_state(lab, h.name) == "MASTER")
    wait_for(lambda: owner(lab) == master, 30, "the API to name the master as owner")
    return lab


def current_master(lab):
    return next(h.name for h in lab.topo.hosts_with_role("loadbalancer") if vrrp_state(lab, h.name) == "MASTER")


def test_https_through_the_floating_ip_verifies_against_the_lab_ca(settled):
    lab = settled
    url = f"https://{lab.addr.floating_ip}/"
    out = subprocess.run(CURL + ["--cacert", str(lab.ca.cert_path), "-D", "-", url], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    headers, body = out.stdout.split("\n\n", 1)  # text mode turned \r\n into \n
    assert json.loads(body)["host"] in {h.name for h in lab.topo.hosts_with_role("app")}
    assert "strict-transport-security: max-age=" in headers.lower()
    # without the lab CA the chain does not verify
    assert subprocess.run(CURL + [url], capture_output=True).returncode == 60
    # plain HTTP is redirected, old TLS refused
    redirect = subprocess.run(CURL + ["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", f"http://{lab.addr.floating_ip}/"],
                              capture_output=True, text=True)
    assert redirect.stdout == f"301 https://{lab.addr.floating_ip}/"
    old = subprocess.run(CURL + ["--cacert", str(lab.ca.cert_path), "--tls-max", "1.1", "--tlsv1.0", url], capture_output=True)
    assert old.returncode != 0


def test_load_balancer_to_app_traffic_is_tls_verified(settled):
    lab = settled
    lb = lab.topo.hosts_with_role("loadbalancer")[0].name
    app = lab.topo.hosts_with_role("app")[0]
    tls = lab.exec(lb, ["curl", "-sf", "--cacert", "/etc/haproxy/certs/stack-ca.pem", "--resolve",
                        f"{app.name}:8080:{app.private_ip}", f"https://{app.name}:8080/health"])
    assert tls.returncode == 0 and json.loads(tls.stdout)["status"] == "ok", tls.stderr
    plain = lab.exec(lb, ["curl", "-s", "--max-time", "3", f"http://{app.private_ip}:8080/health"])
    assert plain.returncode != 0 or "hastack-app" not in plain.stdout


def test_stats_and_metrics_only_on_the_private_network(settled):
    lab = settled
    lb = lab.topo.hosts_with_role("loadbalancer")[0]
    mon = lab.topo.host(lab.topo.hosts_with_role("monitoring")[0].name)
    metrics = lab.exec(mon.name, ["curl", "-sf", f"http://{lb.private_ip}:8404/metrics"], check=True).stdout
    assert "haproxy_backend_active_servers" in metrics
    public = subprocess.run(CURL + ["--connect-timeout", "2", f"http://{lab.addr.public_ip(lb)}:8404/metrics"],
                            capture_output=True)
    assert public.returncode != 0


def test_active_load_balancer_dies_and_the_ip_moves(settled):
    lab = settled
    master = current_master(lab)
    survivor = other(lab, master)
    before = len(assigns(lab))
    probe = Probe(lab, 12)
    time.sleep(2)
    lab.stop(master, hard=True)
    wait_for(lambda: owner(lab) == survivor, 15, f"the API to assign the floating IP to {survivor}")
    records, result = probe.result()
    assert result["recovered"], result
    assert result["outage_s"] < 10, result
    assert records[-1]["ok"] and records[-1]["host"]
    new = assigns(lab)[before:]
    assert [e["body"]["server"] for e in new] == [lab.server_id(survivor)], new

    # it comes back: no flapping, no second move
    lab.start(master)
    time.sleep(8)
    assert owner(lab) == survivor
    assert vrrp_state(lab, survivor) == "MASTER" and vrrp_state(lab, master) == "BACKUP"
    assert len(assigns(lab)) == before + 1


def test_haproxy_dies_alone_and_the_ip_moves(settled):
    lab = settled
    master = current_master(lab)
    survivor = other(lab, master)
    lab.exec(master, ["systemctl", "stop", "haproxy"], check=True)
    try:
        wait_for(lambda: owner(lab) == survivor, 15, f"the floating IP to move to {survivor}")
        ok = subprocess.run(CURL + ["--cacert", str(lab.ca.cert_path), f"https://{lab.addr.floating_ip}/"],
                            capture_output=True, text=True)
        assert ok.returncode == 0 and json.loads(ok.stdout)["host"]
    finally:
        lab.exec(master, ["systemctl", "start", "haproxy"], check=True)
    time.sleep(5)
    assert owner(lab) == survivor  # nopreempt: the healed one stays backup


def test_split_brain_heals_to_one_master_that_owns_the_ip(settled):
    lab = settled
    # cut the private network between the two load balancers for about 10 s: the
    # lab's private bridge drops their traffic to each other (links stay up, app traffic flows)
    ips = ", ".join(h.private_ip for h in lab.topo.hosts_with_role("loadbalancer"))
    cut = ("table bridge hastack_test_cut {\n chain cut {\n  type filter hook forward priority 0; policy accept;\n"
           f"  ip saddr {{ {ips} }} ip daddr {{ {ips} }} drop\n }}\n}}\n")
    subprocess.run(["nft", "-f", "-"], input=cut, text=True, check=True)
    try:
        wait_for(lambda: all(vrrp_state(lab, h.name) == "MASTER" for h in lab.topo.hosts_with_role("loadbalancer")), 10,
                 "both sides to believe they are master")
        time.sleep(8)
    finally:
        subprocess.run(["nft", "delete", "table", "bridge", "hastack_test_cut"], check=True)

    def healed():
        states = {h.name: vrrp_state(lab, h.name) for h in lab.topo.hosts_with_role("loadbalancer")}
        masters = [n for n, s in states.items() if s == "MASTER"]
        return len(masters) == 1 and owner(lab) == masters[0] and masters[0]

    master = wait_for(healed, 30, "exactly one master that owns the floating IP")
    ok = subprocess.run(CURL + ["--cacert", str(lab.ca.cert_path), f"https://{lab.addr.floating_ip}/"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert master in {h.name for h in lab.topo.hosts_with_role("loadbalancer")}


def test_an_app_server_dies_and_requests_keep_succeeding(settled):
    lab = settled
    victim = lab.topo.hosts_with_role("app")[0].name
    probe = Probe(lab, 8)
    time.sleep(1.5)
    lab.stop(victim, hard=True)
    try:
        records, result = probe.result()
        assert result["failed"] == 0, [r for r in records if not r["ok"]][:5]
        assert {r["host"] for r in records[-10:]} == {other_app.name for other_app in lab.topo.hosts_with_role("app")
                                                       if other_app.name != victim}
    finally:
        lab.start(victim)
    # back in rotation once healthy again
    wait_for(lambda: victim in {json.loads(subprocess.run(
        CURL + ["--cacert", str(lab.ca.cert_path), f"https://{lab.addr.floating_ip}/"], capture_output=True,
        text=True).stdout or "{}").get("host") for _ in range(6)}, 30, f"{victim} back in rotation")
