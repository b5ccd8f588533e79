"""The lab's Hetzner API stand-in, driven by the unmodified hcloud library."""

import datetime
import ipaddress
import json
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hcloud import APIException, Client
from hcloud.actions.domain import ActionFailedException

from hastack.lab.hcloud_api import (FakeHetznerAPI, command_hook, floating_ip_json, parse_state, server_json,
                                    start_in_thread)

TOKEN = "lab-token-3b9e"
LB1, LB2, FIP = 11, 12, 7
FIP_IP = "198.18.0.100"


def make_ca_and_cert(directory: Path, name: str = "ca") -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for 127.0.0.1 it signed: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hastack test {name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / f"{name}.pem", directory / f"{name}-server.pem", directory / f"{name}-server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def lab_servers() -> list[dict]:
    return [server_json(LB1, "lab-lb1", "198.18.0.11", "10.77.1.11", labels={"role": "loadbalancer"}),
            server_json(LB2, "lab-lb2", "198.18.0.12", "10.77.1.12", labels={"role": "loadbalancer"}),
            server_json(21, "lab-app1", "198.18.0.21", "10.77.1.21", location="fsn1")]


class Lab:
    def __init__(self, **kwargs):
        self.assigned, self.powered_off = [], []
        kwargs.setdefault("on_assign", lambda fip, server: self.assigned.append((fip["ip"], server["id"], server["name"])))
        kwargs.setdefault("on_poweroff", lambda server: self.powered_off.append(server["id"]))
        self.api = FakeHetznerAPI(TOKEN, lab_servers(), [floating_ip_json(FIP, FIP_IP, LB2)], **kwargs)

    def start(self, certfile=None, keyfile=None):
        self.httpd = start_in_thread(self.api, certfile=certfile, keyfile=keyfile)
        scheme = "https" if certfile else "http"
        self.root = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.url = self.root + "/v1"
        return self

    def client(self, token=TOKEN, retries=True):
        client = Client(token=token, api_endpoint=self.url, poll_interval=0.01)
        if not retries:
            client._client._retry_max_retries = 0
        return client

    def lab_log(self):
        r = requests.get(self.root + "/lab/log", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        r.raise_for_status()
        return r.json()["log"]


@pytest.fixture
def lab():
    lab = Lab().start()
    yield lab
    lab.httpd.shutdown()
    lab.httpd.server_close()


def test_missing_or_wrong_token_refused(lab):
    with pytest.raises(APIException) as e:
        lab.client(token="wrong").floating_ips.get_by_id(FIP)
    assert e.value.code == "unauthorized"
    r = requests.get(lab.url + "/servers", timeout=5)
    assert r.status_code == 401
    assert r.json() == {"error": {"code": "unauthorized", "message": "unable to authenticate", "details": {}}}
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(r.headers)
    assert requests.get(lab.root + "/lab/log", timeout=5).status_code == 401
    assert requests.get(lab.root + "/lab/health", timeout=5).json() == {"status": "ok"}


def test_get_and_list_parse_with_hcloud(lab):
    client = lab.client()
    fip = client.floating_ips.get_by_id(FIP)
    assert (fip.ip, fip.type, fip.server.id, fip.blocked) == (FIP_IP, "ipv4", LB2, False)
    assert fip.home_location.name == "nbg1" and fip.protection == {"delete": True}
    assert fip.dns_ptr[0]["ip"] == FIP_IP and fip.created.year == 2024
    server = client.servers.get_by_id(LB2)
    assert (server.name, server.status, server.public_net.ipv4.ip) == ("lab-lb2", "running", "198.18.0.12")
    assert server.private_net[0].ip == "10.77.1.12" and server.private_net[0].network.id == 1
    assert [f.id for f in server.public_net.floating_ips] == [FIP]
    assert server.server_type.name == "cx22" and server.location.name == "nbg1" and server.image.name == "debian-12"
    assert server.labels == {"role": "loadbalancer"}
    assert [s.name for s in client.servers.get_all()] == ["lab-lb1", "lab-lb2", "lab-app1"]
    assert client.servers.get_by_name("lab-app1").location.name == "fsn1"
    assert client.servers.get_by_name("nope") is None
    page, meta = client.servers.get_list(page=2, per_page=2)
    assert [s.id for s in page] == [21] and meta.pagination.previous_page == 1 and meta.pagination.next_page is None
    assert [f.ip for f in client.floating_ips.get_all()] == [FIP_IP]


def test_not_found_and_invalid_input(lab):
    with pytest.raises(APIException) as e:
        lab.client().floating_ips.get_by_id(99)
    assert e.value.code == "not_found"
    with pytest.raises(APIException) as e:
        lab.client().servers.get_by_id(98)
    assert e.value.code == "not_found"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = requests.post(f"{lab.url}/floating_ips/{FIP}/actions/assign", json={"server": 99}, headers=auth, timeout=5)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    assert r.json()["error"]["details"]["fields"][0]["name"] == "server"
    r = requests.post(f"{lab.url}/floating_ips/{FIP}/actions/assign", data="{", headers=auth, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "json_error"
    assert lab.assigned == [] and lab.api.floating_ips[FIP]["server"] == LB2


def test_assign_reroutes_before_success(lab):
    client = lab.client()
    action = client.floating_ips.assign(client.floating_ips.get_by_id(FIP), client.servers.get_by_id(LB1))
    assert (action.command, action.status, action.progress) == ("assign_floating_ip", "running", 0)
    assert {"id": LB1, "type": "server"} in action.resources
    assert lab.assigned == [(FIP_IP, LB1, "lab-lb1")]  # the lab re-routed before anyone saw success
    action.wait_until_finished()
    assert action.status == "success" and action.finished is not None and action.error is None
    assert client.floating_ips.get_by_id(FIP).server.id == LB1
    assert [f.id for f in client.servers.get_by_id(LB1).public_net.floating_ips] == [FIP]
    assert client.servers.get_by_id(LB2).public_net.floating_ips == []
    [entry] = lab.lab_log()
    assert entry["method"] == "POST" and entry["path"] == f"/v1/floating_ips/{FIP}/actions/assign"
    assert entry["body"] == {"server": LB1} and entry["status"] == 201 and entry["result"]["status"] == "success"


def test_unassign_and_poweroff(lab):
    client = lab.client()
    client.floating_ips.unassign(client.floating_ips.get_by_id(FIP)).wait_until_finished()
    assert client.floating_ips.get_by_id(FIP).server is None
    action = client.servers.power_off(client.servers.get_by_id(LB2))
    assert action.command == "stop_server"
    action.wait_until_finished()
    assert lab.powered_off == [LB2] and client.servers.get_by_id(LB2).status == "off"
    assert [e["path"].rsplit("/", 1)[1] for e in lab.lab_log()] == ["unassign", "poweroff"]
    assert lab.api.state()["floating_ips"][0]["server"] is None and lab.api.state()["servers"][1]["status"] == "off"


def test_failing_reroute_is_a_failed_action():
    def broken(fip, server):
        raise RuntimeError("no route to lab-lb1")

    lab = Lab(on_assign=broken).start()
    try:
        client = lab.client()
        action = client.floating_ips.assign(client.floating_ips.get_by_id(FIP), client.servers.get_by_id(LB1))
        with pytest.raises(ActionFailedException, match="no route to lab-lb1"):
            action.wait_until_finished()
        assert client.floating_ips.get_by_id(FIP).server.id == LB2
    finally:
        lab.httpd.shutdown()


def test_rate_limit_429_after_n_requests_and_gradual_refill():
    now = [1_000_000.0]
    lab = Lab(rate_limit=3, rate_window=30.0, clock=lambda: now[0]).start()
    try:
        client = lab.client(retries=False)  # hcloud would otherwise retry 429 itself, for up to a minute
        for _ in range(3):
            client.floating_ips.get_by_id(FIP)
        with pytest.raises(APIException) as e:
            client.floating_ips.get_by_id(FIP)
        assert e.value.code == "rate_limit_exceeded"
        r = requests.get(f"{lab.url}/floating_ips/{FIP}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
        assert r.headers["RateLimit-Limit"] == "3" and r.headers["RateLimit-Remaining"] == "0"
        assert int(r.headers["RateLimit-Reset"]) == 1_000_030  # full again after the whole window
        now[0] += 10  # a third of the window gives one request back
        assert client.floating_ips.get_by_id(FIP).ip == FIP_IP
        with pytest.raises(APIException):
            client.floating_ips.get_by_id(FIP)
        assert len(lab.lab_log()) == 0  # /lab/log is not rate limited, and GETs are not logged
    finally:
        lab.httpd.shutdown()


def test_https_tls12_and_untrusted_ca_fails(tmp_path):
    ca, cert, key = make_ca_and_cert(tmp_path)
    lab = Lab().start(certfile=str(cert), keyfile=str(key))
    try:
        client = lab.client()
        client._client._session.verify = str(ca)
        client._client._session.trust_env = False  # else REQUESTS_CA_BUNDLE, if set, wins over verify
        assert client.floating_ips.get_by_id(FIP).ip == FIP_IP
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(lab.root + "/lab/health", timeout=5)  # system CAs do not know the lab's CA
        assert lab.httpd.socket.context.minimum_version == ssl.TLSVersion.TLSv1_2
    finally:
        lab.httpd.shutdown()


def test_state_file_shape_and_command_hook(tmp_path):
    state = {"servers": [{"id": 1, "name": "lb1", "public_ip": "198.18.0.11", "private_ip": "10.77.1.11"},
                         {"id": 2, "name": "lb2", "public_ip": "198.18.0.12"}],
             "floating_ips": [{"id": 5, "ip": FIP_IP, "server": 2}]}
    servers, fips = parse_state(state)
    api = FakeHetznerAPI(TOKEN, servers, fips)
    assert api.state()["floating_ips"] == [{"id": 5, "ip": FIP_IP, "server": 2, "name": "floating-ip-5",
                                            "home_location": "nbg1", "labels": {}}]
    assert api.state()["servers"][0]["private_ip"] == "10.77.1.11" and "private_ip" not in api.state()["servers"][1]
    with pytest.raises(ValueError, match="server 9 is not in servers"):
        parse_state({"servers": [], "floating_ips": [{"id": 5, "ip": FIP_IP, "server": 9}]})
    with pytest.raises(ValueError, match="required key 'public_ip'"):
        parse_state({"servers": [{"id": 1, "name": "x"}], "floating_ips": []})

    out = tmp_path / "out"
    hook = command_hook(f"sh -c 'echo route {{ip}}/32 via {{server_public_ip}} for {{server_name}} > {out}'",
                        f"sh -c 'echo host route via {{server_public_ip}} >> {out}'")
    hook(fips[0], servers[0])
    assert out.read_text() == f"route {FIP_IP}/32 via 198.18.0.11 for lb1\nhost route via 198.18.0.11\n"
    # a command that fails stops the ones after it, and fails the action
    with pytest.raises(RuntimeError, match="exited 3"):
        command_hook("sh -c 'exit 3'", f"sh -c 'echo ran > {out}'")(servers[0])
    assert out.read_text().startswith("route ")


def test_cli_serves_applies_routes_and_writes_state_back(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"servers": [{"id": 1, "name": "lb1", "public_ip": "198.18.0.11"},
                                             {"id": 2, "name": "lb2", "public_ip": "198.18.0.12"}],
                                 "floating_ips": [{"id": 5, "ip": FIP_IP, "server": 2}]}))
    routes = tmp_path / "routes"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hastack.lab.hcloud_api", "--bind", "127.0.0.1", "--port", "0",
         "--token-file", str(tmp_path / "token"), "--state", str(state),
         "--on-assign-cmd", f"sh -c 'echo {{ip}} via {{server_public_ip}} >> {routes}'"],
        stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "stand-in on" not in line:
            line = proc.stderr.readline()
            assert line, "the API exited before listening"
        url = line.split("stand-in on ", 1)[1].strip()
        client = Client(token=TOKEN, api_endpoint=url)
        client.floating_ips.assign(client.floating_ips.get_by_id(5), client.servers.get_by_id(1)).wait_until_finished()
        assert routes.read_text() == f"{FIP_IP} via 198.18.0.12\n{FIP_IP} via 198.18.0.11\n"
        assert json.loads(state.read_text())["floating_ips"][0]["server"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        proc.stderr.close()


def test_power_state_is_the_machines_and_poweron_starts_it_again():
    # a server powered off through the API and started again by other means is running again:
    # a later fence must power it off, not find it "already off"
    machines = {LB2: "running"}
    started = []
    lab = Lab(power_state=lambda server: machines.get(server["id"]),
              on_poweron=lambda server: started.append(server["id"])).start()
    try:
        client = lab.client()
        client.servers.power_off(client.servers.get_by_id(LB2)).wait_until_finished()
        machines[LB2] = "off"
        assert client.servers.get_by_id(LB2).status == "off"
        machines[LB2] = "running"  # `hastack lab start`, a console, a Hetzner robot: not through this API
        assert client.servers.get_by_id(LB2).status == "running"
        machines[LB2] = "off"
        action = client.servers.power_on(client.servers.get_by_id(LB2))
        assert action.command == "start_server"
        action.wait_until_finished()
        assert started == [LB2] and lab.api.state()["servers"][1]["status"] == "running"
    finally:
        lab.httpd.shutdown()


def test_machine_power_reads_the_nspawn_pid_file(tmp_path):
    import os

    from hastack.lab.hcloud_api import machine_power

    state = machine_power(str(tmp_path))
    (tmp_path / "lab-lb1").mkdir()
    (tmp_path / "lab-lb1" / "nspawn.pid").write_text(str(os.getpid()))
    (tmp_path / "lab-lb2").mkdir()
    (tmp_path / "lab-lb2" / "nspawn.pid").write_text("999999999")
    assert state({"name": "lab-lb1"}) == "running"
    assert state({"name": "lab-lb2"}) == "off" and state({"name": "lab-app1"}) == "off"


def test_a_power_off_answers_at_once_and_finishes_when_the_machine_is_off():
    """As on Hetzner: the request returns a running action; the machine goes off beside it."""
    release = threading.Event()
    lab = Lab(on_poweroff=lambda server: release.wait(5)).start()
    try:
        client = lab.client()
        t0 = time.monotonic()
        action = client.servers.power_off(client.servers.get_by_id(LB2))
        assert time.monotonic() - t0 < 1.0 and action.status == "running"
        assert client.actions.get_by_id(action.id).status == "running"
        assert client.floating_ips.get_by_id(FIP).server.id == LB2  # the API still answers meanwhile
        release.set()
        action.wait_until_finished()
        assert client.servers.get_by_id(LB2).status == "off"
    finally:
        lab.httpd.shutdown()
        lab.httpd.server_close()


def test_a_token_added_to_the_project_works_at_once_and_a_deleted_one_is_refused(tmp_path):
    """The lab API's tokens file is its console: a token rotation adds the new token, the agents move to it,
    then the old one is deleted and refused from the next request (hastack rotate failover-token)."""
    from hastack.lab.hcloud_api import token_file
    from hastack.token_rotation import TokenError, check_token

    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n")
    lab = Lab()
    lab.api = FakeHetznerAPI(token_file(str(tokens)), lab_servers(), [floating_ip_json(FIP, FIP_IP, LB2)])
    lab.start()
    try:
        check_token("old-token", lab.url, FIP)
        with pytest.raises(TokenError, match="refuses the token"):
            check_token("new-token", lab.url, FIP)
        tokens.write_text("old-token\nnew-token\n")
        check_token("new-token", lab.url, FIP)
        check_token("old-token", lab.url, FIP)
        time.sleep(0.01)  # a new mtime, even on a coarse clock
        tokens.write_text("new-token\n")
        check_token("new-token", lab.url, FIP)
        with pytest.raises(TokenError, match="unable_to_authenticate|refuses the token"):
            check_token("old-token", lab.url, FIP)
    finally:
        lab.httpd.shutdown()
        lab.httpd.server_close()


def test_agent_hosts_are_checked_by_the_tokens_fingerprint_never_the_token():
    from hastack.token_rotation import agent_hosts, fingerprint, holders

    entries = {"lb1": {"failover_token": "t"}, "db1": {"failover_token": "t"}, "app1": {}}
    assert agent_hosts(entries) == ["db1", "lb1"]
    files = {"lb1": fingerprint("new"), "db1": fingerprint("old")}
    seen = []

    def run(name, command, timeout):
        seen.append(command)
        return True, f"{files[name]}  /etc/hastack/hcloud-token\n", ""

    assert holders(run, ["db1", "lb1"], "new") == {"db1": "other", "lb1": "new"}
    assert all("new" not in c and "old" not in c for c in seen)
    gone = holders(lambda n, c, t: (False, "", "sha256sum: /etc/hastack/hcloud-token: No such file"), ["lb1"], "new")
    assert gone["lb1"].startswith("unreadable (sha256sum: /etc/hastack/hcloud-token: No such file")
