"""TLS files shared by Redis and Sentinel on a host (certificate from the stack's CA)."""

from io import StringIO

from pyinfra import host
from pyinfra.operations import files

from hastack.pki import CertificateAuthority


def tls_files():
    """Put the host's certificate, key and the CA under /etc/redis/tls; returns the operations."""
    issued = CertificateAuthority(host.data.pki_dir, host.data.stack).issue(
        f"redis-{host.name}", dns=[host.name], ips=[host.data.private_ip], client=True)
    # 2750: /etc/redis is setgid in Debian's package, and a subdirectory inherits it
    files.directory(name="Redis TLS directory", path="/etc/redis/tls", user="redis", group="redis", mode="2750")
    return [
        files.put(name="Redis TLS certificate", src=StringIO(issued.chain_pem), dest="/etc/redis/tls/redis.crt",
                  user="redis", group="redis", mode="0644"),
        files.put(name="Redis TLS key", src=StringIO(issued.key_pem), dest="/etc/redis/tls/redis.key",
                  user="redis", group="redis", mode="0600"),
        files.put(name="Stack CA", src=StringIO(issued.ca_pem), dest="/etc/redis/tls/ca.crt",
                  user="redis", group="redis", mode="0644"),
    ]
