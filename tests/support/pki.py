"""Certificates the stack CA would never issue, for tests that show clients refuse them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hastack.pki import CertificateAuthority, Issued


def forged(ca: CertificateAuthority, dns: list[str], ips: list[str] = ()) -> Issued:
    """A certificate signed with the CA's key for names its constraints leave out (what a stolen
    key would try); issue() refuses to make one, so it is built here by hand."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = serialization.load_pem_private_key(ca.key_path.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
            .issuer_name(ca.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem, ca.ca_pem)


class TLSServer:
    """A TLS server on 127.0.0.1 presenting ``issued`` to every client, until stopped."""

    def __init__(self, issued: Issued, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        cert, key = directory / "server.crt", directory / "server.key"
        cert.write_text(issued.chain_pem)
        key.write_text(issued.key_pem)
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # stopped
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass  # the client refused the certificate

    def stop(self) -> None:
        self.listener.close()
        self.thread.join(5)
