"""The stack's internal certificate authority.

One CA per stack signs the certificates for TLS inside the stack (and the
lab's public site). The CA is a stack secret (hastack.stack_ca): `hastack ca
init` makes it, and a converge writes it to a private directory for as long
as it runs. Nothing here makes a CA on its own: a directory without one is an
error, never a reason to start a new CA (which would re-issue every
certificate and split the stack between two CAs).

A CA carries critical name constraints: the DNS names and addresses its
certificates may hold, so that its key cannot vouch for any other name. A CA
made before the constraints existed has none and keeps working until it is
replaced.

Certificates are derived, not stored. A certificate's key, serial number and
signature (deterministic ECDSA, RFC 6979) follow from the CA key, the
certificate's names and the validity period it falls in (a year counted from
the CA's start; each certificate is valid for its year and a month more, so
the first converge of a new year renews it while the old one is still good).
Any machine holding the CA therefore issues byte for byte the same
certificate within a period: a converge from a fresh clone or a CI runner
changes nothing on the hosts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
PERIOD = dt.timedelta(days=365)
CERT_DAYS = 397  # the period and 32 days of overlap
BACKDATE = dt.timedelta(minutes=5)  # for clocks a little behind
# the order of P-256: derived leaf keys are scalars in [1, n-1]
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class CAError(ValueError):
    """The CA is missing, unreadable, or cannot issue what was asked; the message says which and why."""


@dataclass(frozen=True)
class Issued:
    cert_pem: str
    key_pem: str
    ca_pem: str

    @property
    def chain_pem(self) -> str:
        return self.cert_pem + self.ca_pem


@dataclass(frozen=True)
class CertSpec:
    """A certificate a role issues: its name in the CA's directory, and the names it carries."""

    name: str
    dns: tuple[str, ...]
    ips: tuple[str, ...] = ()
    client: bool = False


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


def name_constraints(dns: Iterable[str], networks: Iterable[str]) -> x509.NameConstraints:
    """Permitted subtrees: each DNS name (and the names below it) and each network."""
    permitted: list[x509.GeneralName] = [x509.DNSName(d.lower()) for d in sorted(set(dns))]
    permitted += [x509.IPAddress(ipaddress.ip_network(n)) for n in sorted(set(networks))]
    if not permitted:
        raise CAError("a CA with name constraints needs at least one permitted name or network")
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None)


def make_ca(name: str, dns: Iterable[str] = (), networks: Iterable[str] = (),
            now: dt.datetime | None = None) -> tuple[str, str]:
    """A new CA, in memory: (certificate PEM, key PEM). With ``dns`` or ``networks`` it may
    sign only for those (critical name constraints); the caller keeps the key safe."""
    dns, networks = list(dns), list(networks)
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hastack {name} internal CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if dns or networks:
        builder = builder.add_extension(name_constraints(dns, networks), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key).decode()


def load_ca(cert_pem: str, key_pem: str, where: str = "the CA") -> tuple[x509.Certificate, object]:
    """Parse and check a CA: a certificate of a CA, and the private key that belongs to it.
    ``where`` names their source in errors (never their content)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        raise CAError(f"{where}: the certificate is not a PEM X.509 certificate "
                      "(expected a '-----BEGIN CERTIFICATE-----' block)") from None
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        raise CAError(f"{where}: the key is not an unencrypted PEM private key "
                      "(expected a '-----BEGIN PRIVATE KEY-----' block)") from None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise CAError(f"{where}: the key is a {type(key).__name__}; a stack CA's key is EC (P-256) or RSA")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise CAError(f"{where}: the key does not belong to the certificate (another CA's key?)")
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is None or not basic.ca:
        raise CAError(f"{where}: the certificate is not a CA certificate (basicConstraints CA:TRUE is missing)")
    return cert, key


def constraints_of(cert: x509.Certificate) -> x509.NameConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return None


def not_permitted(cert: x509.Certificate, dns: Iterable[str] = (), ips: Iterable[str] = ()) -> list[str]:
    """The names and addresses a certificate from ``cert`` could not carry under its name
    constraints (RFC 5280 4.2.1.10: a DNS constraint covers the name and every name below it;
    a name type without permitted subtrees is not constrained). Empty: all permitted."""
    nc = constraints_of(cert)
    if nc is None:
        return []
    permitted, excluded = nc.permitted_subtrees or [], nc.excluded_subtrees or []

    def dns_in(name: str, trees) -> bool:
        n = name.lower().rstrip(".")
        subtrees = [t.value.lower().lstrip(".") for t in trees if isinstance(t, x509.DNSName)]
        return any(n == s or n.endswith("." + s) for s in subtrees)

    def ip_in(address: str, trees) -> bool:
        ip = ipaddress.ip_address(address)
        return any(ip in t.value for t in trees if isinstance(t, x509.IPAddress))

    dns_constrained = any(isinstance(t, x509.DNSName) for t in permitted)
    ip_constrained = any(isinstance(t, x509.IPAddress) for t in permitted)
    bad = [d for d in dns if dns_in(d, excluded) or (dns_constrained and not dns_in(d, permitted))]
    bad += [i for i in ips if ip_in(i, excluded) or (ip_constrained and not ip_in(i, permitted))]
    return bad


def describe_constraints(cert: x509.Certificate) -> str:
    nc = constraints_of(cert)
    if nc is None:
        return "no name constraints (a CA made before hastack added them: it may sign any name)"
    dns = [t.value for t in nc.permitted_subtrees or [] if isinstance(t, x509.DNSName)]
    nets = [str(t.value) for t in nc.permitted_subtrees or [] if isinstance(t, x509.IPAddress)]
    return f"permitted: {len(dns)} DNS names ({', '.join(dns[:4])}{', ...' if len(dns) > 4 else ''}), " \
           f"networks {', '.join(nets) or 'any'}"


def fingerprint(cert_pem: str) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return cert.fingerprint(hashes.SHA256()).hex(":")


class CertificateAuthority:
    """A CA kept in ``directory`` (ca.crt, ca.key 0600); certificates it issues are written
    below it, in issued/, for tools and tests to read."""

    def __init__(self, directory: Path, name: str):
        self.dir = Path(directory)
        self.name = name
        self.key_path = self.dir / "ca.key"
        self.cert_path = self.dir / "ca.crt"
        self._loaded: tuple[x509.Certificate, object] | None = None

    def exists(self) -> bool:
        return self.key_path.exists() and self.cert_path.exists()

    @classmethod
    def create(cls, directory: Path, name: str, dns: Iterable[str] = (), networks: Iterable[str] = ()
               ) -> "CertificateAuthority":
        """Make a new CA in ``directory``; refused where one exists (it is never replaced silently)."""
        ca = cls(directory, name)
        if ca.key_path.exists() or ca.cert_path.exists():
            raise CAError(f"{ca.dir} already holds a CA (ca.crt or ca.key); it is not replaced")
        return ca.write(*make_ca(name, dns, networks))

    def write(self, cert_pem: str, key_pem: str) -> "CertificateAuthority":
        """Put a CA (PEM) into this directory: the key 0600, the directory 0700."""
        load_ca(cert_pem, key_pem)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        _write_secret(self.key_path, key_pem.encode())
        self.cert_path.write_text(cert_pem)
        self._loaded = None
        return self

    def _load(self) -> tuple[x509.Certificate, object]:
        if self._loaded is None:
            if not self.exists():
                raise CAError(f"no CA in {self.dir} (ca.crt and ca.key): the stack's CA is a stack secret "
                              f"(hastack:caCert, hastack:caKey) that the converge writes there; nothing makes one "
                              f"implicitly: `hastack ca init --stack {self.name}` makes a CA for a stack that has none")
            self._loaded = load_ca(self.cert_path.read_text(), self.key_path.read_text(), where=str(self.dir))
        return self._loaded

    @property
    def certificate(self) -> x509.Certificate:
        return self._load()[0]

    @property
    def ca_pem(self) -> str:
        self._load()
        return self.cert_path.read_text()

    def not_permitted(self, dns: Iterable[str] = (), ips: Iterable[str] = ()) -> list[str]:
        return not_permitted(self.certificate, dns, ips)

    def permits(self, dns: Iterable[str] = (), ips: Iterable[str] = ()) -> bool:
        return not self.not_permitted(dns, ips)

    def issue_spec(self, spec: CertSpec, now: dt.datetime | None = None) -> Issued:
        return self.issue(spec.name, list(spec.dns), list(spec.ips), client=spec.client, now=now)

    def issue(self, name: str, dns: list[str], ips: list[str] = (), client: bool = False,
              now: dt.datetime | None = None) -> Issued:
        """A server (and optionally client) certificate for ``dns``/``ips``: the same one for the
        same names within a validity period, on any machine holding this CA."""
        ca_cert, ca_key = self._load()
        outside = not_permitted(ca_cert, dns, ips)
        if outside:
            raise CAError(
                f"certificate {name!r}: {', '.join(outside)} is outside the stack CA's name constraints "
                f"({describe_constraints(ca_cert)}), so no client would accept it. A CA's constraints are fixed "
                f"when it is made: this name needs a CA made for it (a new CA for the stack)")
        now = now or _now()
        start = ca_cert.not_valid_before_utc + BACKDATE
        period = max(0, (now - start) // PERIOD)
        begins = start + period * PERIOD
        wanted = {"name": name, "dns": list(dns), "ips": list(ips), "client": client, "period": period}
        secret = hmac.new(_key_der(ca_key), b"hastack certificate derivation v1", hashlib.sha256).digest()

        def derive(purpose: bytes) -> bytes:
            message = purpose + b"\0" + json.dumps(wanted, sort_keys=True).encode()
            return hmac.new(secret, message, hashlib.sha512).digest()

        key = ec.derive_private_key(int.from_bytes(derive(b"key"), "big") % (_P256_ORDER - 1) + 1, ec.SECP256R1())
        serial = (int.from_bytes(derive(b"serial")[:20], "big") >> 1) or 1  # positive, at most 159 bits
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(begins - BACKDATE)
            .not_valid_after(begins + dt.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if isinstance(ca_key, ec.EllipticCurvePrivateKey):
            cert = builder.sign(ca_key, hashes.SHA256(), ecdsa_deterministic=True)
        else:  # RSA PKCS#1 v1.5 signatures are deterministic already
            cert = builder.sign(ca_key, hashes.SHA256())
        cert_pem, key_pem = cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
        issued_dir = self.dir / "issued"
        _write_secret(issued_dir / f"{name}.key", key_pem)
        (issued_dir / f"{name}.crt").write_bytes(cert_pem)
        return Issued(cert_pem.decode(), key_pem.decode(), self.ca_pem)


def _key_der(key) -> bytes:
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
