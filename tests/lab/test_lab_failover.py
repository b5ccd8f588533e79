"""Load balancers, the floating IP and the app tier on the lab's real machines.

Traffic comes from the hsl-internet namespace, through the floating IP, as a
user's would; the lab's Hetzner API records what the failover agents did.
"""

import json
import subprocess
import time

import pytest

from roles.loadbalancer import STATS_PORT
from tests.support.failover import assigns, current_master, other, owner, settle, states, vrrp_state
from tests.support.lab import INTERNET, tcp, wait_for

CURL = INTERNET + ["curl", "-s", "--max-time", "5"]


@pytest.fixture(scope="module")
def settled(lab):
    """Both load balancers up, exactly one master, and it owns the floating IP."""
    for lb in lab.topo.hosts_with_role("loadbalancer"):
        if not lab.machine(lb.name).running():
            lab.start(lb.name)
    settle(lab)
    return lab


def test_https_through_the_floating_ip_verifies_against_the_lab_ca(settled):
    lab = settled
    url = f"https://{lab.addr.floating_ip}/"
    out = subprocess.run(CURL + ["--cacert", str(lab.stack_trust_file), "-D", "-", url], capture_output=True, text=True)
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
    old = subprocess.run(CURL + ["--cacert", str(lab.stack_trust_file), "--tls-max", "1.1", "--tlsv1.0", url], capture_output=True)
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
    """HAProxy's stats port serves the monitoring host over the private network. From anywhere
    else the host firewall drops the connection (policy drop): no answer at all, which is told
    apart from a refused connection (a closed port answers with a reset at once)."""
    lab = settled
    lb = lab.topo.hosts_with_role("loadbalancer")[0]
    mon = lab.topo.host(lab.topo.hosts_with_role("monitoring")[0].name)
    app = lab.topo.hosts_with_role("app")[0]
    public = lab.addr.public_ip(lb)
    # HAProxy listens on the private address and loopback only
    ss = lab.exec(lb.name, ["ss", "-Htln", f"sport = :{STATS_PORT}"], check=True).stdout
    listening = {line.split()[3] for line in ss.splitlines()}  # the local address of each listening socket
    assert listening == {f"{lb.private_ip}:{STATS_PORT}", f"127.0.0.1:{STATS_PORT}"}, ss
    # the port is up: the monitoring host, which the firewall admits, connects and reads metrics
    assert tcp(lab, mon.name, lb.private_ip, STATS_PORT) == "open"
    metrics = lab.exec(mon.name, ["curl", "-sf", f"http://{lb.private_ip}:{STATS_PORT}/metrics"], check=True).stdout
    assert "haproxy_backend_active_servers" in metrics
    # keepalived's checks (twice a second) and the scrapes leave no access log: the site's requests do
    logged = lab.exec(lb.name, ["journalctl", "-t", "haproxy", "--since", "-20s", "-o", "cat"], check=True).stdout
    assert " stats stats/" not in logged, logged[-1000:]
    # another private host (an app server) gets no answer: dropped by the load balancer's firewall
    assert tcp(lab, app.name, lb.private_ip, STATS_PORT) == "filtered"
    # from the internet the same address answers HTTPS, and drops the stats port
    assert tcp(lab, None, public, 443) == "open"
    assert tcp(lab, None, public, STATS_PORT) == "filtered"
    # as a client sees it: curl gives up at its connect timeout (28), not refused (7)
    curl = subprocess.run(CURL + ["--connect-timeout", "2", f"http://{public}:{STATS_PORT}/metrics"],
                          capture_output=True, text=True)
    assert curl.returncode == 28, (curl.returncode, curl.stderr)


def test_haproxy_dies_alone_and_the_ip_moves(settled):
    lab = settled
    master = current_master(lab)
    survivor = other(lab, master)
    lab.exec(master, ["systemctl", "stop", "haproxy"], check=True)
    try:
        wait_for(lambda: owner(lab) == survivor, 15, f"the floating IP to move to {survivor}")
        ok = subprocess.run(CURL + ["--cacert", str(lab.stack_trust_file), f"https://{lab.addr.floating_ip}/"],
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
    moves_before = len(assigns(lab))
    subprocess.run(["nft", "-f", "-"], input=cut, text=True, check=True)
    try:
        wait_for(lambda: all(vrrp_state(lab, h.name) == "MASTER" for h in lab.topo.hosts_with_role("loadbalancer")), 10,
                 "both sides to believe they are master")
        time.sleep(8)
        # the witness still reaches both: neither takes the IP from the other (no flapping), whatever
        # keepalived and the reconcile service (a round every 5 s here) say
        assert len(assigns(lab)) == moves_before, assigns(lab)[moves_before:]
    finally:
        subprocess.run(["nft", "delete", "table", "bridge", "hastack_test_cut"], check=True)

    # healed: keepalived settles to exactly one MASTER, the other BACKUP ...
    def one_master_one_backup():
        now = states(lab)
        return sorted(state or "" for state in now.values()) == ["BACKUP", "MASTER"] and now

    healed = wait_for(one_master_one_backup, 30, "exactly one MASTER and one BACKUP after the cut heals")
    master = next(name for name, state in healed.items() if state == "MASTER")
    backup = other(lab, master)
    # ... the API routes the floating IP to that master (the agent or its reconcile service assigns it) ...
    wait_for(lambda: owner(lab) == master, 20, f"the API to name the master {master} as the floating IP's owner")
    # ... and it holds: one MASTER, the API's owner; the other BACKUP, without the address
    assert states(lab) == {master: "MASTER", backup: "BACKUP"}
    assert owner(lab) == master
    wait_for(lambda: not _holds_floating_ip(lab, backup), 10, f"{backup} (BACKUP) to release the floating IP")
    assert _holds_floating_ip(lab, master), f"{master} (MASTER) does not hold the floating IP"
    # and the site answers through the floating IP
    ok = subprocess.run(CURL + ["--cacert", str(lab.stack_trust_file), f"https://{lab.addr.floating_ip}/"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["host"] in {h.name for h in lab.topo.hosts_with_role("app")}


def _holds_floating_ip(lab, name):
    """Whether the floating IP is configured on one of the machine's interfaces."""
    out = lab.exec(name, ["ip", "-4", "-o", "addr", "show"], check=True).stdout
    return any(f" {lab.addr.floating_ip}/" in line for line in out.splitlines())
