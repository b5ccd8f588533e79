"""The stack's internal certificate authority.

One CA per stack signs the certificates for TLS inside the stack (and the
lab's public site). It lives on the operator's machine in a directory of its
own, keys 0600. Issued certificates are kept next to it and re-used while
they still fit (same names, more than 30 days left), so a converge over an
unchanged stack uploads nothing new.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
CERT_DAYS = 397
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class Issued:
    cert_pem: str
    key_pem: str
    ca_pem: str

    @property
    def chain_pem(self) -> str:
        return self.cert_pem + self.ca_pem


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class CertificateAuthority:
    def __init__(self, directory: Path, name: str):
        self.dir = Path(directory)
        self.name = name
        self.key_path = self.dir / "ca.key"
        self.cert_path = self.dir / "ca.crt"

    def ensure(self) -> None:
        if self.key_path.exists() and self.cert_path.exists():
            return
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hastack {self.name} internal CA")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_secret(self.key_path, _key_pem(key))
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_pem(self) -> str:
        return self.cert_path.read_text()

    def ca_pem_ensured(self) -> str:
        self.ensure()
        return self.ca_pem

    def issue(self, name: str, dns: list[str], ips: list[str] = (), client: bool = False) -> Issued:
        """A server (and optionally client) certificate for ``dns``/``ips``; re-used while it fits."""
        self.ensure()
        cert_path, key_path, meta_path = (self.dir / "issued" / f"{name}{ext}" for ext in (".crt", ".key", ".json"))
        wanted = {"dns": sorted(dns), "ips": sorted(ips), "client": client}
        if cert_path.exists() and key_path.exists() and meta_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if json.loads(meta_path.read_text()) == wanted and cert.not_valid_after_utc - _now() > RENEW_BEFORE:
                return Issued(cert_path.read_text(), key_path.read_text(), self.ca_pem)

        ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_secret(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        meta_path.write_text(json.dumps(wanted))
        return Issued(cert_path.read_text(), key_path.read_text(), self.ca_pem)
