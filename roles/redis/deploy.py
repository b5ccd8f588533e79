"""The redis role: Redis over TLS with ACL users, a replica, persistence, an exporter.

Who replicates whom is Sentinel's business once the group runs; the converge
asks the Sentinels for the current primary and writes that down, so it never
undoes a failover.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, systemd

from hastack.secrets import acl_hash
from hastack.templating import template_path
from roles.redis import DEFAULTS, REDIS_PORT
from roles.redis.tls import tls_files
from roles.sentinel import SENTINEL_PORT


def current_primary(sentinels: list[str]) -> str | None:
    """The primary's address by the first Sentinel that answers (None before any runs)."""
    for ip in sentinels:
        # the password goes through the environment, never the command line; `|| true`
        # keeps a failure from printing this command (and nothing secret is in it)
        out = host.get_fact(Command, (
            f"REDISCLI_AUTH=$(cat /etc/redis/.sentinel-auth 2>/dev/null) timeout 3 redis-cli --tls "
            f"--cacert /etc/redis/tls/ca.crt -h {ip} -p {SENTINEL_PORT} --no-auth-warning "
            f"SENTINEL get-master-addr-by-name hastack 2>/dev/null || true"))
        lines = (out or "").split()
        if len(lines) == 2 and lines[1].isdigit():
            return lines[0]
    return None


@deploy("redis", data_defaults=DEFAULTS)
def redis() -> None:
    d = host.data
    pw = d.redis_passwords
    apt.packages(name="Redis and its exporter", packages=["redis-server", "redis-tools", "prometheus-redis-exporter"],
                 no_recommends=True)
    tls = tls_files()
    # lets this host ask the Sentinels who the primary is, without the password on a command line
    files.put(name="Sentinel credential", src=StringIO(pw["sentinel"]), dest="/etc/redis/.sentinel-auth",
              user="root", group="root", mode="0600")
    acl = files.template(name="Redis users", src=template_path("redis", "/etc/redis/users.acl"),
                         dest="/etc/redis/users.acl", user="redis", group="redis", mode="0640",
                         hashes={user: acl_hash(p) for user, p in pw.items()})
    conf = files.template(
        name="Redis settings", src=template_path("redis", "/etc/redis/hastack.conf"), dest="/etc/redis/hastack.conf",
        user="redis", group="redis", mode="0640", hostname=host.name, private_ip=d.private_ip, port=REDIS_PORT,
        replica_password=pw["replica"], appendfsync=d.redis_appendfsync, maxmemory=d.redis_maxmemory,
        maxmemory_policy=d.redis_maxmemory_policy)
    primary = current_primary(d.redis_sentinels) or d.redis_primary_ip
    files.template(name="Redis configuration", src=template_path("redis", "/etc/redis/redis.conf"),
                   dest="/etc/redis/redis.conf", user="root", group="redis", mode="0640", hostname=host.name,
                   primary_ip=None if primary == d.private_ip else primary, port=REDIS_PORT)
    # a new replication line alone needs no restart: Sentinel already made it so at runtime
    changed = any(op.will_change for op in tls) or acl.will_change or conf.will_change
    systemd.service(name="Redis running", service="redis-server.service", running=True, enabled=True, restarted=changed)

    exporter = files.template(name="Redis exporter settings",
                              src=template_path("redis", "/etc/default/prometheus-redis-exporter"),
                              dest="/etc/default/prometheus-redis-exporter", user="root", group="root", mode="0600",
                              private_ip=d.private_ip, port=REDIS_PORT, password=pw["exporter"])
    systemd.service(name="Redis exporter running", service="prometheus-redis-exporter.service", running=True,
                    enabled=True, restarted=exporter.will_change)
