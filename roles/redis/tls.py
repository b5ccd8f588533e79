"""TLS files shared by Redis and Sentinel on a host (certificate from the stack's CA)."""

from pyinfra import host

from roles.tls_files import issue, put_tls_files


def tls_files():
    """The operations that put the files; the same ones for Redis and Sentinel on one host, so that a change
    restarts both (a second set of operations would find the files already changed by the first)."""
    ops = getattr(host, "_hastack_redis_tls", None)
    if ops is None:
        issued = issue(f"redis-{host.name}", ["/etc/redis/tls/redis.crt", "/etc/redis/tls/redis.key"],
                       dns=[host.name], ips=[host.data.private_ip], client=True)
        # 2750: /etc/redis is setgid in Debian's package, and a subdirectory inherits it
        ops = put_tls_files("Redis", "/etc/redis/tls", "redis", issued, dir_mode="2750",
                            names=("redis.crt", "redis.key", "ca.crt"))
        host._hastack_redis_tls = ops
    return ops
