"""The stack CA's rotation: its stages, the trust its services get at each, and what the new CA may sign."""

from __future__ import annotations

import json
import ssl
import subprocess

import pytest
from cryptography import x509

from hastack.ca_rotation import CAState, make_next, permitted_names
from hastack.pki import CAMismatch, CertificateAuthority, new_ca, not_permitted, split_pem
from hastack.seed_rotation import SeedState, rotate_together, rotation_steps
from hastack.stackfile import load_stack


def bundle(ca: CertificateAuthority) -> str:
    return ca.issuer_pem + ca.key_path.read_text()


def verifies(tmp_path, trusted_pem: str, chain_pem: str) -> bool:
    (tmp_path / "trust.pem").write_text(trusted_pem)
    (tmp_path / "chain.pem").write_text(chain_pem)
    proc = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "trust.pem"), str(tmp_path / "chain.pem")],
                          capture_output=True, text=True)
    return proc.returncode == 0


def test_each_stage_trusts_both_cas_until_done_and_signs_with_the_new_from_the_switch(tmp_path):
    old = CertificateAuthority.own(tmp_path / "old", "s")
    state = CAState(bundle(old))
    new = make_next("s", [], [])
    accept = state.advance(new)
    switch = accept.advance(new)
    done = switch.advance(new)
    assert [accept.stage, switch.stage, done.stage] == ["accept", "switch", "done"]
    old_cert, new_cert = split_pem(state.seed)["cert"], split_pem(accept.next)["cert"]
    assert accept.secrets() == {"ca": split_pem(state.seed), "ca_also": [new_cert]}
    assert switch.secrets() == {"ca": split_pem(accept.next), "ca_also": [old_cert]}
    assert done.secrets() == {"ca": split_pem(accept.next)}

    pki = tmp_path / "pki"
    before = CertificateAuthority(pki, "s", also=accept.secrets().get("ca_also", []))
    before.install(*state.secrets()["ca"].values())
    first = before.issue("db1", dns=["db1"], ips=["10.0.1.1"])
    assert first.ca_pem.count("BEGIN CERTIFICATE") == 2  # services trust both from the accept stage on
    assert before.issue("db1", dns=["db1"], ips=["10.0.1.1"]) == first  # and keep their certificates

    during = CertificateAuthority(pki, "s", also=switch.secrets()["ca_also"])
    assert during.install(*switch.secrets()["ca"].values())  # the switch replaces the CA this one replaces
    second = during.issue("db1", dns=["db1"], ips=["10.0.1.1"])
    assert second.cert_pem != first.cert_pem and second.issuer_pem == new_cert
    # a host on its new certificate and one still on the old both verify under the switch's trust
    assert verifies(tmp_path, second.ca_pem, first.chain_pem) and verifies(tmp_path, second.ca_pem, second.chain_pem)
    assert second.chain_pem.count("BEGIN CERTIFICATE") == 2  # the certificate and its own issuer, no more

    after = CertificateAuthority(pki, "s")
    assert after.ca_pem == new_cert
    assert not verifies(tmp_path, after.ca_pem, first.chain_pem)  # the old CA's certificates are refused


def test_a_ca_that_is_neither_the_stacks_nor_the_one_it_replaces_is_refused(tmp_path):
    CertificateAuthority.own(tmp_path / "pki", "s")
    stranger_cert, stranger_key = new_ca("s")
    with pytest.raises(CAMismatch):
        CertificateAuthority(tmp_path / "pki", "s").install(stranger_cert, stranger_key)


def test_the_seed_and_the_ca_rotate_in_the_same_three_converges_and_a_half_way_one_ends_alone():
    seed, ca, converged = [SeedState("s")], [CAState("ca0")], []
    stages = rotate_together([(lambda: seed[-1], seed.append, None), (lambda: ca[-1], ca.append, lambda: "ca1")],
                             converged.append, say=lambda m: None)
    assert stages == converged == ["accept", "switch", "done"]
    assert ca[-1] == CAState("ca1") and seed[-1].seed != "s" and seed[-1].stage == "done"

    ca.append(CAState("ca2", previous="ca1"))  # a CA rotation that stopped after its switch
    converged.clear()
    stages = rotate_together([(lambda: seed[-1], seed.append, None), (lambda: ca[-1], ca.append, lambda: "ca3")],
                             converged.append, say=lambda m: None)
    # the CA's is ended alone (its switch again, then done); the seed rotates anew
    assert stages == ["switch", "done", "accept", "switch", "done"] and ca[-1] == CAState("ca2")

    # both stopped at their accept stage (an offboarding whose first converge failed): ended in step
    seed.append(SeedState("s1", next="s2"))
    ca.append(CAState("ca2", next="ca3"))
    stages = rotate_together([(lambda: seed[-1], seed.append, None), (lambda: ca[-1], ca.append, lambda: "ca4")],
                             lambda stage: None, say=lambda m: None)
    assert stages == ["accept", "switch", "done"]
    assert (seed[-1], ca[-1]) == (SeedState("s2"), CAState("ca3"))


def test_the_new_ca_may_sign_the_stacks_names_only():
    topo = load_stack("prod")
    dns, networks = permitted_names(topo, "203.0.113.7")
    cert_pem, _ = new_ca("prod", dns, networks)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert cert.extensions.get_extension_for_class(x509.NameConstraints).critical
    names = [h.name for h in topo.hosts] + ["mariadb-writer", topo.domain or "prod.invalid"]
    assert not_permitted(cert, names, [h.private_ip for h in topo.hosts] + ["203.0.113.7"]) == []
    # a role grown to its largest count needs no new CA; names and addresses of anything else do
    assert "prod-app1" in dns or any(d.startswith("prod-app") for d in dns)
    assert not_permitted(cert, ["www.example.org", "db1.evil"], ["198.51.100.1"]) == ["www.example.org", "db1.evil",
                                                                                    "198.51.100.1"]


def test_openssl_refuses_a_certificate_outside_the_cas_name_constraints(tmp_path):
    """The constraints are enforced by the clients (OpenSSL), not only by the converge's own check."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    import datetime as dt

    cert_pem, key_pem = new_ca("s", ["db1"], ["10.0.0.0/16"])
    ca_cert = x509.load_pem_x509_certificate(cert_pem.encode())
    ca_key = serialization.load_pem_private_key(key_pem.encode(), password=None)

    def leaf(name: str) -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
                .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=True)
                .sign(ca_key, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    assert verifies(tmp_path, cert_pem, leaf("db1"))
    assert not verifies(tmp_path, cert_pem, leaf("www.example.org"))
    with pytest.raises(ValueError, match="may not sign www.example.org"):
        ca = CertificateAuthority(tmp_path / "pki", "s")
        ca.install(cert_pem, key_pem)
        ca.issue("site", dns=["www.example.org"])
    assert ssl  # the standard library's TLS builds on the same OpenSSL


FAKE_PULUMI = """#!/usr/bin/env python3
import json, sys
from pathlib import Path
store = Path(__file__).with_name("config.json")
config = json.loads(store.read_text()) if store.exists() else {}
with open(Path(__file__).with_name("argv.log"), "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
args = [a for a in sys.argv[1:] if a not in ("--secret",)]
verb, key = args[1], args[2]
if verb == "get":
    if key not in config:
        sys.exit(1)
    print(config[key])
elif verb == "set":
    config[key] = sys.stdin.read()
elif verb == "rm":
    config.pop(key, None)
store.write_text(json.dumps(config))
"""


def test_a_cloud_stack_keeps_each_stage_as_pulumi_secrets_and_no_ca_key_on_a_command_line(tmp_path):
    from hastack.seed_rotation import PulumiSeedStore

    script = tmp_path / "pulumi"
    script.write_text(FAKE_PULUMI)
    script.chmod(0o755)
    first_cert, first_key = new_ca("prod")
    (tmp_path / "config.json").write_text(json.dumps({"hastack:ca": first_cert + first_key}))
    store = PulumiSeedStore("prod", pulumi=str(script), state=CAState)
    state = store.load()
    assert state == CAState(first_cert + first_key) and state.stage == "done"
    new = make_next("prod", ["prod-db1"], ["10.0.0.0/16"])
    stages = []
    for step in rotation_steps(state, new):
        store.save(step)
        assert store.load() == step
        stages.append(sorted(json.loads((tmp_path / "config.json").read_text())))
    assert stages == [["hastack:ca", "hastack:caNext"], ["hastack:ca", "hastack:caPrevious"], ["hastack:ca"]]
    assert store.load().seed != state.seed
    assert "PRIVATE KEY" not in (tmp_path / "argv.log").read_text()
