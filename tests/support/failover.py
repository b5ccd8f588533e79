"""The load balancers on the lab: keepalived's state on each, the floating IP's
owner as the lab's Hetzner API reports it, and a kill under a client's load."""

from __future__ import annotations

import json
import time

import requests

from hastack.lab import probe
from tests.support.lab import wait_for

STATE_FILE = "/run/hastack/failover-state.json"  # the failover agent's record of keepalived's last notify


def api(lab, path):
    """GET from the lab's Hetzner API, with the load balancers' token."""
    resp = requests.get(f"https://{lab.addr.host_public}:8443{path}", verify=str(lab.ca.cert_path), timeout=5,
                        headers={"Authorization": f"Bearer {lab.stack_outputs()['secrets']['failover_token']}"})
    resp.raise_for_status()
    return resp.json()


def owner(lab):
    """The load balancer the API says holds the floating IP (None: unassigned or another server)."""
    server = api(lab, "/v1/floating_ips/1")["floating_ip"]["server"]
    return next((h.name for h in lab.topo.hosts_with_role("loadbalancer") if lab.server_id(h.name) == server), None)


def assigns(lab):
    """Every assign of the floating IP the API has served, oldest first."""
    return [e for e in api(lab, "/lab/log")["log"] if e["path"].endswith("/actions/assign")]


def vrrp_state(lab, name):
    """keepalived's state on a load balancer (MASTER, BACKUP, FAULT, STOP), None when unknown."""
    proc = lab.exec(name, ["cat", STATE_FILE])
    return json.loads(proc.stdout).get("state") if proc.returncode == 0 else None


def states(lab) -> dict[str, str | None]:
    return {h.name: vrrp_state(lab, h.name) for h in lab.topo.hosts_with_role("loadbalancer")}


def other(lab, name):
    return next(h.name for h in lab.topo.hosts_with_role("loadbalancer") if h.name != name)


def current_master(lab):
    return next(h.name for h in lab.topo.hosts_with_role("loadbalancer") if vrrp_state(lab, h.name) == "MASTER")


def settle(lab, timeout: float = 30, owned: bool = True) -> str:
    """Wait for one MASTER and one BACKUP (and, if ``owned``, the API naming the master as the
    floating IP's owner); the master."""
    wait_for(lambda: sorted(s or "" for s in states(lab).values()) == ["BACKUP", "MASTER"], timeout,
             "one MASTER and one BACKUP")
    master = current_master(lab)
    if owned:
        wait_for(lambda: owner(lab) == master, timeout, f"the API to name the master {master} as owner")
    return master


def make_master(lab, name: str, timeout: float = 60) -> None:
    """Make ``name`` the MASTER that owns the floating IP, as an operator would: keepalived
    restarted on the current master hands over (STOP releases the IP; nopreempt keeps the
    restarted one BACKUP)."""
    master = settle(lab, timeout)
    if master == name:
        return
    lab.exec(master, ["systemctl", "restart", "keepalived.service"], check=True)
    wait_for(lambda: states(lab) == {name: "MASTER", master: "BACKUP"} and owner(lab) == name, timeout,
             f"{name} to become MASTER and own the floating IP")


def kill_under_load(lab, victim: str, seconds: float = 12, kill_at: float = 2) -> tuple[list[dict], dict]:
    """A client requests the site through the floating IP every 100 ms for ``seconds`` s; ``victim``
    dies like a power cut after ``kill_at`` s and stays off until the client is done. The client's
    records and its outage (hastack.lab.probe.outage)."""
    client = probe.start(lab, seconds)
    time.sleep(kill_at)
    lab.stop(victim, hard=True)
    records = probe.records(client, timeout=seconds + 60)
    return records, probe.outage(records)
