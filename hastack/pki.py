"""The stack's internal certificate authority.

One CA per stack signs the certificates for TLS inside the stack (and the
lab's public site). Its custody is the stack's config: `hastack ca store`
makes it once and keeps it as the Pulumi secret `hastack:ca` (certificate
and key); the stack exports it (secret) and every converge, from any
clone, writes it into ``pki/<stack>/`` (keys 0600) before it issues anything.
Nothing makes a CA silently: a directory without one is an error.

Issued certificates are kept next to it and re-used while they still fit
(same names, signed by this CA, more than 30 days left). A clone that has
never issued them (a fresh checkout, a CI runner) adopts the certificate a
host already has when it fits, so it re-issues nothing and restarts no service.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
CERT_DAYS = 397
RENEW_BEFORE = dt.timedelta(days=30)


class MissingCA(Exception):
    """No CA where one must be: a converge never makes one on its own."""


class CAMismatch(Exception):
    """The stack's CA and the one already in pki/<stack>/ differ."""


@dataclass(frozen=True)
class Issued:
    cert_pem: str
    key_pem: str
    ca_pem: str              # what a service trusts: the stack CA, and while it rotates the other one too
    issuer_pem: str = ""     # the CA that signed cert_pem (ca_pem when empty)

    @property
    def chain_pem(self) -> str:
        return self.cert_pem + (self.issuer_pem or self.ca_pem)


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


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_pair(cert_pem: str, key_pem: str) -> None:
    """ValueError unless ``key_pem`` is the private key of the CA certificate ``cert_pem``."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"cannot be read as a PEM certificate and an unencrypted PEM key: {e}") from None
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise ValueError("the key is not the certificate's key")
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not constraints.ca:
        raise ValueError("the certificate is not a CA certificate")


def split_pem(bundle: str) -> dict[str, str]:
    """The secret hastack:ca (the CA certificate, then its key, PEM) as {"cert", "key"}; what is not a
    certificate is the key (checked where it is used: check_pair)."""
    end = "-----END CERTIFICATE-----"
    cert, sep, key = (bundle or "").partition(end)
    return {"cert": (cert + sep).strip() + "\n" if sep else "", "key": key.strip() + "\n" if key.strip() else ""}


def new_ca(name: str, dns: list[str] | tuple = (), networks: list[str] | tuple = ()) -> tuple[str, str]:
    """A new CA, in memory: (certificate PEM, key PEM). With ``dns`` or ``networks`` it carries critical
    name constraints: it may sign only those names (and the names below them) and addresses."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hastack {name} internal CA"),
                         x509.NameAttribute(NameOID.SERIAL_NUMBER, f"{x509.random_serial_number():x}"[:16])])
    builder = (
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
    )
    permitted = [x509.DNSName(d.lower()) for d in sorted(set(dns))]
    permitted += [x509.IPAddress(ipaddress.ip_network(n, strict=False)) for n in sorted(set(networks))]
    if permitted:
        builder = builder.add_extension(x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=None),
                                        critical=True)
    cert = builder.sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key).decode()


def not_permitted(ca_cert: x509.Certificate, dns: list[str], ips: list[str]) -> list[str]:
    """The names and addresses among ``dns`` and ``ips`` that ``ca_cert``'s name constraints forbid (a name
    type without permitted subtrees is free). Empty: all permitted, or the CA has no constraints."""
    try:
        nc = ca_cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    subtrees = nc.permitted_subtrees or []
    names = [t.value.lower() for t in subtrees if isinstance(t, x509.DNSName)]
    nets = [t.value for t in subtrees if isinstance(t, x509.IPAddress)]
    bad = [d for d in dns if names and not any(d.lower() == n or d.lower().endswith("." + n) for n in names)]
    bad += [i for i in ips if nets and not any(ipaddress.ip_address(i) in n for n in nets)]
    return bad


class CertificateAuthority:
    def __init__(self, directory: Path, name: str, also: tuple[str, ...] | list[str] = ()):
        """``also``: the certificates of other CAs the stack's services trust meanwhile: the next CA, or
        the previous one, while the stack's CA rotates (hastack.ca_rotation)."""
        self.dir = Path(directory)
        self.name = name
        self.also = [first_certificate(pem) for pem in also if pem and pem.strip()]
        self.key_path = self.dir / "ca.key"
        self.cert_path = self.dir / "ca.crt"

    @classmethod
    def own(cls, directory: Path, name: str) -> "CertificateAuthority":
        """A CA its caller keeps itself (the lab's in .lab/pki, a test's): made when missing."""
        ca = cls(directory, name)
        if not ca.exists():
            ca.create()
        return ca

    def exists(self) -> bool:
        return self.key_path.exists() and self.cert_path.exists()

    def ensure(self) -> None:
        if not self.exists():
            raise MissingCA(f"no CA for stack {self.name!r} in {self.dir}: a stack's CA comes from its config "
                            f"(`hastack ca store --stack {self.name}` makes and stores it once); "
                            "a converge never makes a new one")

    def install(self, cert_pem: str, key_pem: str) -> bool:
        """Write the stack's CA (from its custody) here; True if written. An existing, different CA is
        refused: it signed what the hosts have, and replacing it is a rotation, not a converge; unless it
        is the CA this one replaces (in ``also``: the rotation's switch)."""
        check_pair(cert_pem, key_pem)
        if self.exists():
            here = self.cert_path.read_text().strip()
            if here == cert_pem.strip():
                return False
            if here not in (pem.strip() for pem in self.also):
                raise CAMismatch(f"{self.dir} holds a CA other than the stack's (the secret hastack:ca); move it away "
                                 "if the stack's config is right, or store this one with `hastack ca store`")
        _write_secret(self.key_path, key_pem.encode())
        self.cert_path.write_text(cert_pem)
        return True

    def create(self) -> None:
        """A new CA here (`hastack ca store` and the lab only); refused over an existing one."""
        if self.key_path.exists() or self.cert_path.exists():
            raise FileExistsError(f"{self.dir} already holds a CA")
        cert_pem, key_pem = new_ca(self.name)
        _write_secret(self.key_path, key_pem.encode())
        self.cert_path.write_text(cert_pem)

    @property
    def ca_pem(self) -> str:
        """What the stack's services trust: this CA, and while it rotates the other one."""
        own = self.cert_path.read_text()
        return own + "".join(pem for pem in self.also if pem.strip() != own.strip())

    @property
    def issuer_pem(self) -> str:
        return self.cert_path.read_text()

    def ca_pem_ensured(self) -> str:
        self.ensure()
        return self.ca_pem

    def fits(self, cert_pem: str, key_pem: str, wanted: dict) -> bool:
        """Whether a certificate (and its key) is one this CA would issue for ``wanted`` now."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem.encode())
            key = serialization.load_pem_private_key(key_pem.encode(), password=None)
            ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            cert.verify_directly_issued_by(ca_cert)
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
            return False
        has = {"dns": sorted(sans.get_values_for_type(x509.DNSName)),
               "ips": sorted(str(i) for i in sans.get_values_for_type(x509.IPAddress)),
               "client": ExtendedKeyUsageOID.CLIENT_AUTH in usages}
        return (has == wanted and _public_der(cert.public_key()) == _public_der(key.public_key())
                and cert.not_valid_after_utc - _now() > RENEW_BEFORE)

    def issue(self, name: str, dns: list[str], ips: list[str] = (), client: bool = False,
              current: Callable[[], tuple[str, str] | None] | None = None) -> Issued:
        """A server (and optionally client) certificate for ``dns``/``ips``; re-used while it fits.

        ``current``: the certificate and key the host has now, read only when this directory has
        none that fits (a fresh clone): adopted when it fits, so nothing is re-issued."""
        self.ensure()
        cert_path, key_path, meta_path = (self.dir / "issued" / f"{name}{ext}" for ext in (".crt", ".key", ".json"))
        wanted = {"dns": sorted(dns), "ips": sorted(str(ipaddress.ip_address(i)) for i in ips), "client": client}

        def cached() -> Issued | None:
            if cert_path.exists() and key_path.exists() and meta_path.exists():
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                if (json.loads(meta_path.read_text()) == wanted and cert.not_valid_after_utc - _now() > RENEW_BEFORE
                        and self._signed(cert)):
                    return self._issued(cert_path.read_text(), key_path.read_text())
            return None

        if (found := cached()) is not None:
            return found
        on_host = current() if current is not None else None
        if on_host is not None:
            cert_pem, key_pem = first_certificate(on_host[0]), on_host[1]
            if self.fits(cert_pem, key_pem, wanted):
                _write_secret(key_path, key_pem.encode())
                cert_path.write_text(cert_pem)
                meta_path.write_text(json.dumps(wanted))
                return self._issued(cert_pem, key_pem)
        # Reading the host let the other hosts' preparations run: one that shares this
        # certificate (the load balancers' site) may have issued it meanwhile.
        if (found := cached()) is not None:
            return found

        ca_key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        outside = not_permitted(ca_cert, list(dns), [str(i) for i in ips])
        if outside:
            raise ValueError(f"the stack CA may not sign {', '.join(outside)} for {name} (its name constraints were "
                             f"fixed when it was made); `hastack rotate ca --stack {self.name}` makes a CA for the "
                             "stack as it is now")
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
        return self._issued(cert_path.read_text(), key_path.read_text())

    def _issued(self, cert_pem: str, key_pem: str) -> Issued:
        return Issued(cert_pem, key_pem, self.ca_pem, self.issuer_pem)

    def _signed(self, cert: x509.Certificate) -> bool:
        """Whether this CA signed ``cert`` (one kept from before a rotation's switch was not)."""
        try:
            cert.verify_directly_issued_by(x509.load_pem_x509_certificate(self.cert_path.read_bytes()))
            return True
        except (ValueError, TypeError, InvalidSignature):
            return False


PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
PEM_KEY = re.compile(r"-----BEGIN (?:EC |RSA )?PRIVATE KEY-----.+?-----END (?:EC |RSA )?PRIVATE KEY-----", re.S)


def first_certificate(pem: str) -> str:
    """The first certificate in a PEM text (a host's file: its certificate then the CA, or a key too)."""
    found = PEM_CERT.search(pem)
    return found.group(0) + "\n" if found else pem


def first_key(pem: str) -> str | None:
    """The first private key in a PEM text, or None."""
    found = PEM_KEY.search(pem)
    return found.group(0) + "\n" if found else None
