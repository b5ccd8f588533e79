"""The stack CA's custody: kept in the stack's config, never made by a converge, adopted certificates."""

import datetime as dt
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from cryptography import x509

from hastack import ca_custody
from hastack.inventory import InventoryError, host_entries
from hastack.pki import CAMismatch, CertificateAuthority, MissingCA, split_pem

FIXTURE = Path(__file__).parent.parent / "fixtures" / "prod-stack-outputs.json"


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority.own(tmp_path / "pki", "prod")


# ------------------------------------------------------------------ no CA is ever made by a converge


def test_a_directory_without_a_ca_is_an_error_not_a_new_ca(tmp_path):
    ca = CertificateAuthority(tmp_path / "pki" / "prod", "prod")
    with pytest.raises(MissingCA, match=r"no CA for stack 'prod'.*hastack ca store --stack prod"):
        ca.issue("mariadb-db1", dns=["db1"])
    assert not (tmp_path / "pki").exists()


def test_install_writes_the_stacks_ca_0600_and_refuses_another(ca, tmp_path):
    target = CertificateAuthority(tmp_path / "checkout" / "prod", "prod")
    assert target.install(ca.ca_pem, ca.key_path.read_text()) is True
    assert stat.S_IMODE(target.key_path.stat().st_mode) == 0o600
    assert target.install(ca.ca_pem, ca.key_path.read_text()) is False  # the same again: nothing to do
    other = CertificateAuthority.own(tmp_path / "other", "prod")
    with pytest.raises(CAMismatch, match="holds a CA other than the stack's"):
        target.install(other.ca_pem, other.key_path.read_text())
    assert target.ca_pem == ca.ca_pem


def test_install_refuses_a_key_that_is_not_the_certificates(ca, tmp_path):
    other = CertificateAuthority.own(tmp_path / "other", "prod")
    target = CertificateAuthority(tmp_path / "checkout", "prod")
    with pytest.raises(ValueError, match="not the certificate's key"):
        target.install(ca.ca_pem, other.key_path.read_text())
    with pytest.raises(ValueError, match="cannot be read"):
        target.install(ca.ca_pem, "not a key")
    assert not target.exists()


def test_the_secret_is_the_certificate_then_the_key(ca):
    parts = split_pem(ca.ca_pem + ca.key_path.read_text())
    assert parts == {"cert": ca.ca_pem, "key": ca.key_path.read_text()}
    assert split_pem("junk") == {"cert": "", "key": ""}


# ------------------------------------------------------------------ the converge: CA from the outputs


def outputs(ca_output):
    data = json.loads(FIXTURE.read_text())
    data["secrets"]["ca"] = ca_output
    return data


def test_the_converge_takes_the_ca_from_the_stack_outputs(monkeypatch, tmp_path, ca):
    monkeypatch.setenv("HASTACK_PKI_ROOT", str(tmp_path / "root"))
    entries = host_entries(outputs({"cert": ca.ca_pem, "key": ca.key_path.read_text()}))
    pki_dir = Path(entries["prod-db1"]["pki_dir"])
    assert pki_dir == tmp_path / "root" / "prod"
    assert CertificateAuthority(pki_dir, "prod").ca_pem == ca.ca_pem


@pytest.mark.parametrize("ca_output", [None, {}, {"cert": "x"}])
def test_outputs_without_a_ca_stop_the_converge_and_write_nothing(monkeypatch, tmp_path, ca_output):
    monkeypatch.setenv("HASTACK_PKI_ROOT", str(tmp_path / "root"))
    with pytest.raises(InventoryError, match=r"no CA \(secrets.ca\).*hastack ca store --stack prod.*never makes"):
        host_entries(outputs(ca_output))
    assert not (tmp_path / "root").exists()


def test_a_checkout_holding_another_ca_is_refused(monkeypatch, tmp_path, ca):
    monkeypatch.setenv("HASTACK_PKI_ROOT", str(tmp_path / "root"))
    CertificateAuthority.own(tmp_path / "root" / "prod", "prod")
    with pytest.raises(InventoryError, match="holds a CA other than the stack's"):
        host_entries(outputs({"cert": ca.ca_pem, "key": ca.key_path.read_text()}))


# ------------------------------------------------------------------ a fresh clone adopts what hosts have


def test_a_fresh_clone_adopts_the_hosts_certificate_when_it_fits(ca, tmp_path):
    issued = ca.issue("mariadb-db1", dns=["db1", "writer"], ips=["10.0.1.2"], client=True)
    on_host = (issued.chain_pem, issued.key_pem)  # what /etc/mysql/tls holds
    clone = CertificateAuthority(tmp_path / "clone", "prod")
    clone.install(ca.ca_pem, ca.key_path.read_text())
    asked = []
    again = clone.issue("mariadb-db1", dns=["writer", "db1"], ips=["10.0.1.2"], client=True,
                        current=lambda: asked.append(1) or on_host)
    assert again.cert_pem == issued.cert_pem and again.key_pem == issued.key_pem
    # and it is cached: the host is not asked again
    clone.issue("mariadb-db1", dns=["db1", "writer"], ips=["10.0.1.2"], client=True, current=lambda: 1 / 0)
    assert asked == [1]


@pytest.mark.parametrize("change", ["names", "client", "other_ca", "key", "expiring"])
def test_a_host_certificate_that_does_not_fit_is_replaced(ca, tmp_path, change, monkeypatch):
    issued = ca.issue("redis-r1", dns=["r1"], ips=["10.0.1.5"], client=True)
    cert_pem, key_pem = issued.chain_pem, issued.key_pem
    dns, client = ["r1"], True
    if change == "names":
        dns = ["r1", "r2"]
    elif change == "client":
        client = False
    elif change == "other_ca":
        other = CertificateAuthority.own(tmp_path / "other", "prod").issue("redis-r1", dns=["r1"], ips=["10.0.1.5"],
                                                                          client=True)
        cert_pem, key_pem = other.chain_pem, other.key_pem
    elif change == "key":
        key_pem = ca.issue("redis-r9", dns=["r9"]).key_pem
    clone = CertificateAuthority(tmp_path / "clone", "prod")
    clone.install(ca.ca_pem, ca.key_path.read_text())
    if change == "expiring":
        import hastack.pki as pki
        monkeypatch.setattr(pki, "_now", lambda: dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=380))
    new = clone.issue("redis-r1", dns=dns, ips=["10.0.1.5"], client=client, current=lambda: (cert_pem, key_pem))
    assert new.cert_pem != issued.cert_pem
    cert = x509.load_pem_x509_certificate(new.cert_pem.encode())
    assert sorted(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                  .get_values_for_type(x509.DNSName)) == sorted(dns)


# ------------------------------------------------------------------ `hastack ca store`


@pytest.fixture
def fake_pulumi(tmp_path):
    """A stand-in for the Pulumi CLI that records its arguments and standard input."""
    script = tmp_path / "pulumi"
    record = tmp_path / "record.json"
    script.write_text(f"""#!{sys.executable}
import json, sys
json.dump({{"args": sys.argv[1:], "stdin": sys.stdin.read()}}, open({str(record)!r}, "w"))
""")
    script.chmod(0o755)
    return script, record


def stack_file(tmp_path, extra=""):
    d = tmp_path / "stacks"
    d.mkdir(exist_ok=True)
    src = Path(__file__).parents[2] / "stacks" / "Pulumi.prod.yaml"
    (d / "Pulumi.prod.yaml").write_text(src.read_text() + extra)
    return d


def test_ca_store_makes_a_ca_and_hands_it_to_pulumi_on_stdin(tmp_path, fake_pulumi):
    script, record = fake_pulumi
    said = ca_custody.store("prod", tmp_path / "pki", stacks_dir=stack_file(tmp_path), pulumi=str(script))
    assert said.startswith("made a new CA")
    got = json.loads(record.read_text())
    assert got["args"] == ["config", "set", "--secret", "--stack", "prod", "hastack:ca"]  # the value is not an argument
    ca = CertificateAuthority(tmp_path / "pki" / "prod", "prod")
    assert got["stdin"] == ca.ca_pem + ca.key_path.read_text()
    assert stat.S_IMODE(ca.key_path.stat().st_mode) == 0o600


def test_ca_store_keeps_the_ca_this_machine_already_has(tmp_path, fake_pulumi):
    script, record = fake_pulumi
    existing = CertificateAuthority.own(tmp_path / "pki" / "prod", "prod")
    said = ca_custody.store("prod", tmp_path / "pki", stacks_dir=stack_file(tmp_path), pulumi=str(script))
    assert said.startswith("stored the CA of")
    assert json.loads(record.read_text())["stdin"].startswith(existing.ca_pem)


def test_ca_store_refuses_a_stack_that_keeps_one_already(tmp_path, fake_pulumi):
    script, record = fake_pulumi
    stacks = stack_file(tmp_path, "  hastack:ca:\n    secure: AAABAHh5eg==\n")
    with pytest.raises(ca_custody.CustodyError, match="already keeps its CA in hastack:ca.*rotation"):
        ca_custody.store("prod", tmp_path / "pki", stacks_dir=stacks, pulumi=str(script))
    assert not record.exists() and not (tmp_path / "pki").exists()


def test_ca_store_without_the_cli_says_where_the_ca_is(tmp_path):
    with pytest.raises(ca_custody.CustodyError, match=r"Pulumi CLI .* is not installed.*pki/prod"):
        ca_custody.store("prod", tmp_path / "pki", stacks_dir=stack_file(tmp_path),
                         pulumi=str(tmp_path / "no-such-pulumi"))


def test_a_failing_cli_is_reported(tmp_path):
    script = tmp_path / "pulumi"
    script.write_text("#!/bin/sh\necho 'error: no stack named prod' >&2\nexit 255\n")
    script.chmod(0o755)
    with pytest.raises(ca_custody.CustodyError, match="failed: error: no stack named prod"):
        ca_custody.store("prod", tmp_path / "pki", stacks_dir=stack_file(tmp_path), pulumi=str(script))
    assert os.path.exists(tmp_path / "pki" / "prod" / "ca.crt")  # kept: the next try stores this one


def test_a_certificate_two_hosts_share_is_issued_once_while_both_read_their_hosts(ca):
    """The load balancers share the site's certificate; their preparations run side by side, and
    reading one host lets the other issue it: the first issued is the one both get."""
    other_host = {}

    def lb1_reads_its_host():
        other_host["lb2"] = ca.issue("site", dns=["example.org"], ips=["203.0.113.10"], current=lambda: None)
        return None  # lb1 has no certificate yet

    lb1 = ca.issue("site", dns=["example.org"], ips=["203.0.113.10"], current=lb1_reads_its_host)
    assert lb1 == other_host["lb2"]


def test_ca_store_refuses_a_lab_stack(tmp_path, fake_pulumi):
    script, record = fake_pulumi
    with pytest.raises(ca_custody.CustodyError, match="runs on local machines.*keeps its own CA"):
        ca_custody.store("lab", tmp_path / "pki", pulumi=str(script))
    assert not record.exists() and not (tmp_path / "pki").exists()
