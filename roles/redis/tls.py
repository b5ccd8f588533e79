"""TLS files shared by Redis and Sentinel on a host (certificate from the stack's CA)."""

from pyinfra import host

from roles.tls_files import issue, put_tls_files


def tls_files():
    issued = issue(f"redis-{host.name}", ["/etc/redis/tls/redis.crt", "/etc/redis/tls/redis.key"],
                   dns=[host.name], ips=[host.data.private_ip], client=True)
    # 2750: /etc/redis is setgid in Debian's package, and a subdirectory inherits it
    return put_tls_files("Redis", "/etc/redis/tls", "redis", issued, dir_mode="2750",
                         names=("redis.crt", "redis.key", "ca.crt"))
