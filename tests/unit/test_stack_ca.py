"""The stack's CA: kept as a stack secret, never made implicitly, constrained to the stack's names,
and every certificate the roles issue verifying under those constraints (by cryptography's X.509
verifier and by `openssl verify`, as the services' own TLS libraries check them)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store, VerificationError

from hastack import stack_ca
from hastack.inventory import host_entries, make_inventory
from hastack.lab import Lab
from hastack.lab.layout import Paths, lab_topology
from hastack.model import load
from hastack.pki import CAError, CertificateAuthority, CertSpec, Issued, make_ca
from hastack.stackfile import hastack_config, load_stack, read_stack_file
from roles import role
from tests.support.pki import TLSServer, forged

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime.now(dt.timezone.utc)
FLOATING_IP = "203.0.113.10"


def built_outputs(stack: str) -> dict:
    """A deployed stack's outputs, as the Pulumi program builds them (hastack.outputs)."""
    from hastack.outputs import Server, stack_outputs

    topo = load_stack(stack)
    servers = {h.name: Server(server_id=100 + i, public_ipv4=f"198.51.100.{i + 1}") for i, h in enumerate(topo.hosts)}
    return stack_outputs(topo, servers, floating_ip=FLOATING_IP, floating_ip_id=7,
                         secrets={"failover_token": "token", "seed": "seed"})


# ------------------------------------------------------------------ verification, as the clients do it


def verify_with_cryptography(issued: Issued, spec: CertSpec, ca_pem: str, at: dt.datetime = NOW) -> None:
    """Every name and address of ``spec`` as a server identity; a client certificate as a client."""
    leaf = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    builder = PolicyBuilder().store(Store([x509.load_pem_x509_certificate(ca_pem.encode())])).time(at)
    for name in spec.dns:
        builder.build_server_verifier(DNSName(name)).verify(leaf, [])
    for ip in spec.ips:
        builder.build_server_verifier(IPAddress(ipaddress.ip_address(ip))).verify(leaf, [])
    if spec.client:
        builder.build_client_verifier().verify(leaf, [])


def openssl_verify(tmp_path: Path, issued: Issued, ca_pem: str, *args: str) -> subprocess.CompletedProcess:
    ca, leaf = tmp_path / "verify-ca.crt", tmp_path / "verify-leaf.crt"
    ca.write_text(ca_pem)
    leaf.write_text(issued.cert_pem)
    openssl = shutil.which("openssl")
    assert openssl, "openssl is not installed (Debian's openssl package)"
    return subprocess.run([openssl, "verify", "-x509_strict", "-CAfile", str(ca), *args, str(leaf)],
                          capture_output=True, text=True)


def verify_with_openssl(tmp_path: Path, issued: Issued, spec: CertSpec, ca_pem: str) -> None:
    checks = [("-purpose", "sslserver", "-verify_hostname", n) for n in spec.dns]
    checks += [("-purpose", "sslserver", "-verify_ip", ip) for ip in spec.ips]
    checks += [("-purpose", "sslclient")] if spec.client else []
    for args in checks:
        proc = openssl_verify(tmp_path, issued, ca_pem, *args)
        assert proc.returncode == 0 and proc.stdout.strip().endswith(": OK"), (spec.name, args, proc.stdout + proc.stderr)


# ------------------------------------------------------------------ every role's certificate


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The lab as `lab up` sees it (its own CA, made once), in a directory of its own."""
    paths = Paths(tmp_path_factory.mktemp("lab"))
    return Lab("lab", paths=paths, topo=lab_topology("lab", paths), log=lambda _: None)


def role_certificates(entries: dict, ca: CertificateAuthority) -> list[tuple[str, str, CertSpec]]:
    """(host, role, spec) for every certificate every host's roles issue, from the host data pyinfra
    gives each role's deploy (the inventory's data over the role's DEFAULTS)."""
    out = []
    for name, data in entries.items():
        for role_name in data["roles"]:
            r = role(role_name)
            if r.certificates is not None:
                merged = {**r.defaults, **data}
                out += [(name, role_name, spec) for spec in r.certificates(name, merged, ca)]
    return out


def test_every_certificate_the_roles_issue_on_the_lab_verifies_under_the_lab_cas_constraints(lab, tmp_path):
    ca = lab.ca
    assert ca.certificate.extensions.get_extension_for_class(x509.NameConstraints).critical
    certs = role_certificates(host_entries(lab.stack_outputs()), ca)
    issuing = {r for _, r, _ in certs}
    assert issuing == {"loadbalancer", "app", "mariadb", "redis", "cassandra", "monitoring", "sentinel"}
    names = {spec.name for _, _, spec in certs}
    topo = lab.topo
    assert "site" in names and {f"witness-{h.name}" for h in topo.hosts_with_role("mariadb")} <= names
    assert {f"cassandra-{h.name}" for h in topo.hosts_with_role("cassandra")} <= names
    site = next(spec for _, _, spec in certs if spec.name == "site")
    assert site.dns == ("www.hastack.lab",) and site.ips == (lab.addr.floating_ip,)  # the lab's CA names its IP
    for host, role_name, spec in certs:
        issued = ca.issue_spec(spec)
        verify_with_cryptography(issued, spec, ca.ca_pem)
        verify_with_openssl(tmp_path, issued, spec, ca.ca_pem)
    # the lab's own services on the host, from the same CA
    for name, dns, ip in (("hcloud-api", "hcloud-api.lab", lab.addr.host_public), ("s3", "s3.lab", lab.addr.host_private)):
        spec = CertSpec(name, (dns,), (ip,))
        verify_with_openssl(tmp_path, ca.issue_spec(spec), spec, ca.ca_pem)


def test_a_cloud_stacks_ca_covers_its_certificates_and_the_site_is_verified_by_its_name(tmp_path):
    """`hastack ca init` cannot know the floating IP (`pulumi up` creates it later): the site's
    certificate carries the domain alone, which is what the monitoring probes verify."""
    topo = load_stack("prod")
    made = stack_ca.new_ca(topo)
    ca = CertificateAuthority(tmp_path / "pki", "prod").write(made.cert_pem, made.key_pem)
    outputs = built_outputs("prod")
    certs = role_certificates(host_entries(outputs), ca)
    site = next(spec for _, _, spec in certs if spec.name == "site")
    assert site.dns == ("www.example.com",) and site.ips == ()
    assert not ca.permits(ips=[outputs["floatingIp"]])
    for _, _, spec in certs:
        issued = ca.issue_spec(spec)
        verify_with_cryptography(issued, spec, ca.ca_pem)
        verify_with_openssl(tmp_path, issued, spec, ca.ca_pem)
    from roles.monitoring import config as mc

    mon = next(d for d in host_entries(outputs).values() if "monitoring" in d["roles"])
    assert mc.site_target({**role("monitoring").defaults, **mon})["name"] == "www.example.com"


def test_growing_a_role_to_its_largest_count_needs_no_new_ca(tmp_path):
    """The CA permits every name the naming scheme can give a role's hosts, up to its count rule."""
    ca = CertificateAuthority(tmp_path / "pki", "prod")
    made = stack_ca.new_ca(load_stack("prod"))
    ca.write(made.cert_pem, made.key_pem)
    config = hastack_config(read_stack_file("prod")[0])
    config["roles"]["app"]["count"], config["roles"]["cassandra"]["count"] = 40, 60
    big = load("prod", config, secret_keys=set(), require_secrets=False)
    assert stack_ca.topology_problems(made, big) == []
    spec = role("cassandra").certificates("prod-cass60", {"private_ip": big.host("prod-cass60").private_ip}, ca)[0]
    verify_with_openssl(tmp_path, ca.issue_spec(spec), spec, ca.ca_pem)


# ------------------------------------------------------------------ the constraints hold


@pytest.fixture
def constrained(tmp_path):
    return CertificateAuthority.create(tmp_path / "pki", "prod", dns=["prod-db1", "www.example.com"],
                                       networks=["10.20.0.0/16"])


def test_issue_refuses_a_name_outside_the_constraints_naming_it(constrained):
    with pytest.raises(CAError) as err:
        constrained.issue("app-prod-app9", dns=["prod-app9"], ips=["10.20.1.28"])
    assert str(err.value).startswith("certificate 'app-prod-app9': prod-app9 is outside the stack CA's name constraints "
                                     "(permitted: 2 DNS names (prod-db1, www.example.com), networks 10.20.0.0/16)")
    with pytest.raises(CAError, match="203.0.113.10 is outside"):
        constrained.issue("site", dns=["www.example.com"], ips=["203.0.113.10"])
    assert not (constrained.dir / "issued" / "app-prod-app9.crt").exists()
    # below a permitted name is permitted (RFC 5280), a name that merely ends alike is not
    assert constrained.permits(dns=["api.www.example.com"]) and not constrained.permits(dns=["evilwww.example.com"])


@pytest.mark.parametrize("dns, ips, why", [
    (["www.google.com"], [], "a public name"),
    (["prod-db1"], ["192.0.2.1"], "an address outside the private network"),
])
def test_a_certificate_forged_outside_the_constraints_is_rejected_by_clients(constrained, tmp_path, dns, ips, why):
    bad = forged(constrained, dns, ips)
    spec = CertSpec("forged", tuple(dns), tuple(ips))
    with pytest.raises(VerificationError):
        verify_with_cryptography(bad, spec, constrained.ca_pem)
    proc = openssl_verify(tmp_path, bad, constrained.ca_pem, "-purpose", "sslserver")
    assert proc.returncode != 0 and "permitted subtree violation" in proc.stdout + proc.stderr, why


def handshake(port: int, ca_pem: str, server_name: str) -> bytes:
    ctx = ssl.create_default_context(cadata=ca_pem)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            return tls.recv(2)


def test_a_tls_client_accepts_the_constrained_cas_certificate_and_refuses_a_forged_one(constrained, tmp_path):
    """Python's ssl (OpenSSL, as MariaDB, Redis, HAProxy, socat and curl use it) enforces the constraints."""
    good = TLSServer(constrained.issue("mariadb-prod-db1", dns=["prod-db1"], ips=["10.20.1.60"]), tmp_path / "good")
    bad = TLSServer(forged(constrained, ["www.google.com"]), tmp_path / "bad")
    try:
        assert handshake(good.port, constrained.ca_pem, "prod-db1") == b"ok"
        with pytest.raises(ssl.SSLCertVerificationError, match="permitted subtree violation"):
            handshake(bad.port, constrained.ca_pem, "www.google.com")
    finally:
        good.stop()
        bad.stop()


def test_a_ca_from_before_name_constraints_keeps_issuing_what_it_did(tmp_path):
    old = CertificateAuthority.create(tmp_path / "pki", "prod")  # no constraints, as CAs were made before
    assert old.permits(dns=["anything.example"], ips=["203.0.113.10"])
    spec = role("loadbalancer").certificates("prod-lb1", {"stack": "prod", "domain": "www.example.com",
                                                          "floating_ip": "203.0.113.10", "lb_certificate": "internal"},
                                             old)[0]
    assert spec.ips == ("203.0.113.10",)  # the site keeps its address where the CA permits it
    verify_with_openssl(tmp_path, old.issue_spec(spec), spec, old.ca_pem)


# ------------------------------------------------------------------ the same certificate on every machine


def test_two_machines_with_the_same_ca_issue_the_same_certificate(tmp_path):
    cert, key = make_ca("prod", dns=["prod-db1"], networks=["10.20.0.0/16"])
    laptop = CertificateAuthority(tmp_path / "laptop", "prod").write(cert, key)
    ci = CertificateAuthority(tmp_path / "ci", "prod").write(cert, key)
    a = laptop.issue("mariadb-prod-db1", dns=["prod-db1"], ips=["10.20.1.60"], client=True)
    b = ci.issue("mariadb-prod-db1", dns=["prod-db1"], ips=["10.20.1.60"], client=True)
    assert a == b  # certificate, key and CA: a converge from CI changes nothing on the hosts
    other = ci.issue("mariadb-prod-db1", dns=["prod-db1"], ips=["10.20.1.61"], client=True)
    assert other.cert_pem != a.cert_pem and other.key_pem != a.key_pem  # other names: another key
    assert (tmp_path / "ci" / "issued" / "mariadb-prod-db1.key").stat().st_mode & 0o777 == 0o600


def test_a_certificate_is_renewed_at_its_periods_end_while_the_old_one_is_still_valid(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "pki", "prod", dns=["prod-db1"], networks=["10.20.0.0/16"])
    start = ca.certificate.not_valid_before_utc + dt.timedelta(minutes=5)
    spec = CertSpec("redis-prod-db1", ("prod-db1",), ("10.20.1.60",), client=True)
    early, late = (ca.issue_spec(spec, now=start + dt.timedelta(days=d)) for d in (1, 364))
    assert early == late  # one certificate for the whole first year
    renewed = ca.issue_spec(spec, now=start + dt.timedelta(days=366))
    assert renewed.cert_pem != early.cert_pem
    old = x509.load_pem_x509_certificate(early.cert_pem.encode())
    new = x509.load_pem_x509_certificate(renewed.cert_pem.encode())
    # renewed with a month of the old one left: no converge finds a certificate about to expire
    assert old.not_valid_after_utc - new.not_valid_before_utc > dt.timedelta(days=30)
    verify_with_cryptography(renewed, spec, ca.ca_pem, at=start + dt.timedelta(days=366))


def test_an_issued_certificate_never_outlives_a_year_and_a_month(tmp_path):
    ca = CertificateAuthority.create(tmp_path / "pki", "prod")
    cert = x509.load_pem_x509_certificate(ca.issue("x", dns=["prod-db1"]).cert_pem.encode())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=397, minutes=5)


# ------------------------------------------------------------------ nothing makes a CA implicitly


def test_a_directory_without_a_ca_is_an_error_not_a_new_ca(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki", "prod")
    with pytest.raises(CAError, match=r"no CA in .*pki \(ca.crt and ca.key\).*`hastack ca init --stack prod`"):
        ca.issue("app-prod-app1", dns=["prod-app1"])
    with pytest.raises(CAError, match="no CA in"):
        _ = ca.ca_pem
    assert not (tmp_path / "pki").exists()


def test_create_never_replaces_a_ca(tmp_path):
    first = CertificateAuthority.create(tmp_path / "pki", "prod")
    before = first.ca_pem
    with pytest.raises(CAError, match="already holds a CA"):
        CertificateAuthority.create(tmp_path / "pki", "prod")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "ca.crt").write_text(before)  # a certificate without its key
    with pytest.raises(CAError, match="already holds a CA"):
        CertificateAuthority.create(tmp_path / "half", "prod")
    assert first.ca_pem == before


def test_the_lab_makes_its_ca_once_and_hands_it_over_as_a_stack_secret(lab):
    outputs = lab.stack_outputs()
    ca = outputs["secrets"]["ca"]
    assert ca == {"cert": lab.ca.ca_pem, "key": lab.ca.key_path.read_text()}
    assert outputs["caCert"] == lab.ca.ca_pem
    again = Lab("lab", paths=lab.paths, topo=lab.topo, log=lambda _: None)
    assert again.stack_outputs()["secrets"]["ca"] == ca  # made once, never replaced
    assert all("pki_dir" not in h["data"] for h in outputs["hosts"].values())  # no path: the secret itself
    assert stat.S_IMODE(lab.ca.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(lab.paths.pki.stat().st_mode) == 0o700


# ------------------------------------------------------------------ the converge: the secret, for its run only


def prod_outputs(with_ca: bool = True) -> dict:
    outputs = built_outputs("prod")
    if with_ca:
        made = stack_ca.new_ca(load_stack("prod"))
        outputs["secrets"]["ca"] = {"cert": made.cert_pem, "key": made.key_pem}
    return outputs


class Stop(Exception):
    pass


def test_a_converge_without_a_ca_stops_before_touching_any_host(monkeypatch):
    from hastack import converge as conv

    def connect_all(_state):
        raise AssertionError("the converge connected to hosts")

    monkeypatch.setattr(conv, "connect_all", connect_all)
    with pytest.raises(stack_ca.StackCAError) as err:
        conv.converge(host_entries(prod_outputs(with_ca=False)))
    assert str(err.value).startswith("stack prod has no CA in its outputs (secrets.ca): its CA is the stack secret "
                                     "hastack:caCert and hastack:caKey")
    assert "`hastack ca init --stack prod`" in str(err.value) and "Nothing was changed" in str(err.value)


def test_a_broken_ca_in_the_outputs_stops_the_converge_naming_the_keys(monkeypatch):
    from hastack import converge as conv

    monkeypatch.setattr(conv, "connect_all", lambda _s: pytest.fail("the converge connected to hosts"))
    outputs = prod_outputs()
    outputs["secrets"]["ca"]["key"] = make_ca("other")[1]
    with pytest.raises(stack_ca.StackCAError, match=r"stack prod's CA \(hastack:caCert, hastack:caKey\): the key does "
                                                    r"not belong to the certificate"):
        conv.converge(host_entries(outputs))


def test_the_converge_writes_the_ca_to_a_private_directory_for_its_run_only(monkeypatch):
    from hastack import converge as conv

    seen = {}

    def connect_all(state):
        hosts = list(state.inventory)
        seen["dirs"] = {h.data.pki_dir for h in hosts}
        d = Path(next(iter(seen["dirs"])))
        seen["modes"] = (stat.S_IMODE(d.stat().st_mode), stat.S_IMODE((d / "ca.key").stat().st_mode))
        seen["ca"] = (d / "ca.crt").read_text()
        seen["in_host_data"] = any(stack_ca.HOST_DATA_KEY in h.data.dict() for h in hosts)
        raise Stop()  # no hosts to reach here

    monkeypatch.setattr(conv, "connect_all", connect_all)
    outputs = prod_outputs()
    with pytest.raises(Stop):
        conv.converge(host_entries(outputs))
    assert len(seen["dirs"]) == 1 and seen["modes"] == (0o700, 0o600)
    assert seen["ca"] == outputs["secrets"]["ca"]["cert"]
    assert seen["in_host_data"] is False  # pyinfra holds a directory, never the key
    assert not Path(next(iter(seen["dirs"]))).exists()  # gone, also when the converge fails


def test_the_converge_at_the_end_of_pulumi_up_stops_the_same_way(monkeypatch):
    from hastack import converge as conv
    from hastack.cloud.converge_resource import run_converge

    monkeypatch.setattr(conv, "connect_all", lambda _s: pytest.fail("the converge connected to hosts"))
    with pytest.raises(stack_ca.StackCAError, match=r"stack prod has no CA in its outputs"):
        run_converge({"stack": "prod", "outputs": prod_outputs(with_ca=False), "ssh_user": ""})


def test_the_inventory_carries_the_ca_to_the_converge_and_never_into_pyinfra():
    outputs = prod_outputs()
    entries = host_entries(outputs)
    assert all(d[stack_ca.HOST_DATA_KEY] == outputs["secrets"]["ca"] for d in entries.values())
    inventory = make_inventory(entries)
    key_line = outputs["secrets"]["ca"]["key"].splitlines()[1]
    assert all(key_line not in json.dumps(h.data.dict(), default=str) for h in inventory)


def test_materialised_removes_the_ca_even_when_the_run_fails():
    ca = stack_ca.StackCA(*make_ca("prod"))
    with pytest.raises(Stop):
        with stack_ca.materialised(ca, "prod") as d:
            kept = d
            assert (d / "ca.key").read_text() == ca.key_pem
            raise Stop()
    assert not kept.exists()
    assert ca.key_pem not in repr(ca)


# ------------------------------------------------------------------ `hastack ca` and `hastack converge`


def hastack(*args, path: str = "/usr/bin:/bin"):
    return subprocess.run([sys.executable, "-m", "hastack.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={"COLUMNS": "250", "PATH": path})


def test_hastack_converge_without_a_ca_says_what_to_run(tmp_path):
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(prod_outputs(with_ca=False)))
    proc = hastack("converge", "--stack", "prod", "--outputs", str(outputs))
    assert proc.returncode == 2
    assert "stack prod has no CA in its outputs (secrets.ca)" in proc.stderr
    assert "hastack ca init --stack prod" in proc.stderr and "hastack ca import --stack prod" in proc.stderr
    assert "connecting" not in proc.stdout  # refused before any host


def test_ca_init_without_pulumi_leaves_the_ca_private_and_prints_the_commands(tmp_path):
    out = tmp_path / "new-ca"
    proc = hastack("ca", "init", "--stack", "prod", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700 and stat.S_IMODE((out / "ca.key").stat().st_mode) == 0o600
    assert f"pulumi config set --stack prod --secret hastack:caCert < {out}/ca.crt" in proc.stdout
    assert f"pulumi config set --stack prod --secret hastack:caKey < {out}/ca.key" in proc.stdout
    assert "PRIVATE KEY" not in proc.stdout + proc.stderr
    made = stack_ca.StackCA((out / "ca.crt").read_text(), (out / "ca.key").read_text())
    assert stack_ca.topology_problems(made, load_stack("prod")) == []
    nc = x509.load_pem_x509_certificate(made.cert_pem.encode()).extensions.get_extension_for_class(x509.NameConstraints)
    assert nc.critical
    permitted = {str(t.value) for t in nc.value.permitted_subtrees}
    assert {"prod-lb1", "prod-app40", "prod-cass60", "mariadb-writer", "www.example.com", "10.20.0.0/16"} <= permitted
    assert not any(n.startswith("staging-") for n in permitted)


def fake_pulumi(tmp_path: Path, exit_code: int = 0) -> Path:
    """A `pulumi` on PATH that records its arguments and standard input."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "pulumi-calls.jsonl"
    script = bindir / "pulumi"
    script.write_text(f"""#!{sys.executable}
import json, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "stdin": sys.stdin.read()}}) + "\\n")
if {exit_code}:
    sys.stderr.write("error: no stack named 'prod' found\\n")
sys.exit({exit_code})
""")
    script.chmod(0o755)
    return log


def test_ca_init_stores_the_ca_with_pulumi_on_standard_input(tmp_path):
    log = fake_pulumi(tmp_path)
    out = tmp_path / "never-written"
    proc = hastack("ca", "init", "--stack", "prod", "--out", str(out), path=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert proc.returncode == 0, proc.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["argv"] for c in calls] == [["config", "set", "--stack", "prod", "--secret", "hastack:caCert"],
                                          ["config", "set", "--stack", "prod", "--secret", "hastack:caKey"]]
    cert, key = calls[0]["stdin"], calls[1]["stdin"]
    assert stack_ca.topology_problems(stack_ca.StackCA(cert, key), load_stack("prod")) == []
    assert "stored as the stack's secrets hastack:caCert and hastack:caKey" in proc.stdout
    assert not out.exists()  # stored: no copy left on this machine


def test_a_failed_pulumi_leaves_the_new_ca_in_files_with_the_commands(tmp_path):
    fake_pulumi(tmp_path, exit_code=255)
    out = tmp_path / "kept"
    proc = hastack("ca", "init", "--stack", "prod", "--out", str(out), path=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert proc.returncode == 2
    assert "`pulumi config set --stack prod --secret hastack:caCert` failed: error: no stack named 'prod' found" \
        in proc.stderr
    assert (out / "ca.key").exists() and f"pulumi config set --stack prod --secret hastack:caKey < {out}/ca.key" \
        in proc.stderr.replace("\n", " ")


def test_ca_init_refuses_a_stack_that_has_a_ca(tmp_path):
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    text = (ROOT / "stacks" / "Pulumi.prod.yaml").read_text()
    (stacks / "Pulumi.prod.yaml").write_text(text + "  hastack:caKey:\n    secure: v1:abc\n")
    with pytest.raises(stack_ca.StackCAError) as err:
        stack_ca.init("prod", out=tmp_path / "out", stacks_dir=stacks)
    assert str(err.value).startswith("stack prod already has a CA (hastack:caKey in its stack file)")
    assert "Nothing was changed" in str(err.value) and not (tmp_path / "out").exists()


def test_ca_init_points_a_stack_with_a_ca_from_before_to_import(tmp_path, monkeypatch):
    monkeypatch.setattr(stack_ca, "PKI_DIR", tmp_path / "pki")
    CertificateAuthority.create(tmp_path / "pki" / "prod", "prod")
    before = (tmp_path / "pki" / "prod" / "ca.crt").read_text()
    with pytest.raises(stack_ca.StackCAError, match=r"holds the CA this stack was converged with before: store that "
                                                    r"one with `hastack ca import --stack prod`"):
        stack_ca.init("prod")
    assert (tmp_path / "pki" / "prod" / "ca.crt").read_text() == before


def test_ca_init_refuses_the_lab():
    proc = hastack("ca", "init", "--stack", "lab")
    assert proc.returncode == 2 and "the lab makes its own CA (in .lab/pki)" in proc.stderr


def test_ca_import_stores_a_ca_from_before_as_it_is(tmp_path):
    legacy = CertificateAuthority.create(tmp_path / "pki" / "prod", "prod")  # no constraints
    log = fake_pulumi(tmp_path)
    proc = hastack("ca", "import", "--stack", "prod", "--dir", str(legacy.dir), path=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert proc.returncode == 0, proc.stderr
    assert "no name constraints" in proc.stdout
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c["stdin"] for c in calls] == [legacy.ca_pem, legacy.key_path.read_text()]
    assert "still holds a copy" in proc.stdout


def test_ca_import_without_pulumi_prints_the_commands_for_its_files(tmp_path):
    legacy = CertificateAuthority.create(tmp_path / "pki" / "prod", "prod")
    proc = hastack("ca", "import", "--stack", "prod", "--dir", str(legacy.dir))
    assert proc.returncode == 0, proc.stderr
    assert f"pulumi config set --stack prod --secret hastack:caKey < {legacy.key_path}" in proc.stdout


def test_ca_import_refuses_a_broken_ca_and_changes_nothing(tmp_path):
    d = tmp_path / "pki" / "prod"
    CertificateAuthority.create(d, "prod")
    (d / "ca.key").write_text(make_ca("other")[1])
    log = fake_pulumi(tmp_path)
    proc = hastack("ca", "import", "--stack", "prod", "--dir", str(d), path=f"{tmp_path / 'bin'}:/usr/bin:/bin")
    assert proc.returncode == 2
    assert f"{d}: the key does not belong to the certificate" in proc.stderr and "nothing was changed" in proc.stderr
    assert not log.exists()
    proc = hastack("ca", "import", "--stack", "prod", "--dir", str(tmp_path / "empty"))
    assert proc.returncode == 2 and "no CA in" in proc.stderr and "hastack ca init --stack prod" in proc.stderr
