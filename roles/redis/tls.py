"""TLS files shared by Redis and Sentinel on a host (certificate from the stack's CA)."""

from pyinfra import host

from roles.redis import certificate
from roles.tls_files import put_tls_files, stack_ca


def tls_files():
    issued = stack_ca().issue_spec(certificate(host.name, host.data.dict()))
    # 2750: /etc/redis is setgid in Debian's package, and a subdirectory inherits it
    return put_tls_files("Redis", "/etc/redis/tls", "redis", issued, dir_mode="2750",
                         names=("redis.crt", "redis.key", "ca.crt"))
