"""A service's TLS files from the stack CA: certificate chain, key, CA (pyinfra operations)."""

from io import StringIO

from pyinfra.operations import files

from hastack.pki import Issued


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
