"""A service's TLS files from the stack CA: certificate chain, key, CA (pyinfra operations)."""

import shlex
from io import StringIO

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import files

from hastack.pki import CertificateAuthority, Issued, first_key


def stack_ca() -> CertificateAuthority:
    """The stack CA on this converge, with the other CA the services trust while it rotates
    (hastack.ca_rotation)."""
    return CertificateAuthority(host.data.pki_dir, host.data.stack, also=host.data.get("ca_also") or [])


def issue(name: str, on_host: list[str], dns: list[str], ips: list[str] = (), client: bool = False) -> Issued:
    """The certificate ``name`` from the stack CA for this host. ``on_host``: the files that hold it and
    its key there; read only when pki/<stack>/ has none that fits (a fresh clone, CI), and adopted
    when they fit, so such a converge re-issues nothing and restarts nothing."""
    def current() -> tuple[str, str] | None:
        paths = " ".join(shlex.quote(p) for p in on_host)
        text = host.get_fact(Command, f"cat {paths} 2>/dev/null || true") or ""
        key = first_key(text)
        return (text, key) if key and "BEGIN CERTIFICATE" in text else None

    return stack_ca().issue(name, dns=dns, ips=ips, client=client, current=current)


def put_tls_files(service: str, directory: str, owner: str, issued: Issued, dir_mode: str = "0750",
                  names: tuple[str, str, str] = ("server.crt", "server.key", "ca.crt")) -> list:
    """Returns the file operations, so the caller restarts its service when one changed."""
    crt, key, ca = names
    files.directory(name=f"{service} TLS directory", path=directory, user=owner, group=owner, mode=dir_mode)
    return [
        files.put(name=f"{service} TLS certificate", src=StringIO(issued.chain_pem), dest=f"{directory}/{crt}",
                  user=owner, group=owner, mode="0644"),
        files.put(name=f"{service} TLS key", src=StringIO(issued.key_pem), dest=f"{directory}/{key}",
                  user=owner, group=owner, mode="0600"),
        files.put(name=f"{service} CA", src=StringIO(issued.ca_pem), dest=f"{directory}/{ca}",
                  user=owner, group=owner, mode="0644"),
    ]
