"""The redis role: Redis over TLS with ACL users, a replica, persistence, an exporter.

Who replicates whom is Sentinel's business once the group runs; the converge
asks the Sentinels for the current primary and writes that down, so it never
undoes a failover.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import files, systemd

from roles.redis import DEFAULTS
from roles.redis import config as c
from roles import rolling_restart
from roles.redis.restart import RESTART_MARK
from roles.redis.tls import tls_files
from roles.sentinel import SENTINEL_PORT
from roles import packages
from roles.template_file import template_file


def current_primary(sentinels: list[str]) -> str | None:
    """The primary's address by the first Sentinel that answers (None before any runs)."""
    for ip in sentinels:
        # the password goes through the environment, never the command line; `|| true`
        # keeps a failure from printing this command (and nothing secret is in it)
        out = host.get_fact(Command, (
            f"REDISCLI_AUTH=$(cat {c.SENTINEL_AUTH} 2>/dev/null) timeout 3 redis-cli --tls "
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
    packages.install("Redis and its exporter", packages=["redis-server", "redis-tools", "prometheus-redis-exporter"],
                 no_recommends=True)
    tvars = c.template_vars(host.name, d.dict(), current_primary=current_primary(d.redis_sentinels))

    def template(name, target, user, group, mode):
        return template_file("redis", target, tvars, name=name, user=user, group=group, mode=mode)

    tls = tls_files()
    # lets this host ask the Sentinels who the primary is, without the password on a command line
    files.put(name="Sentinel credential", src=StringIO(pw["sentinel"]), dest=c.SENTINEL_AUTH,
              user="root", group="root", mode="0600")
    acl = template("Redis users", c.USERS_ACL, "redis", "redis", "0640")
    files.directory(name="Redis settings directory", path=c.SETTINGS_DIR, user="root", group="redis",
                    mode="2750")  # set-group-ID, as /etc/redis has it: chmod keeps it on directories
    conf = template("Redis settings", c.SETTINGS, "root", "redis", "0640")
    template("Redis configuration", c.REDIS_CONF, "root", "redis", "0640")
    files.file(name="Redis settings: none left where earlier versions put them", path=c.FORMER_SETTINGS,
               present=False)
    # a new replication line alone needs no restart: Sentinel already made it so at runtime
    # a running Redis is restarted by the rolling restart (roles/redis/restart.py), one host at a time
    rolling_restart.running("Redis", "redis-server.service", RESTART_MARK, [*tls, acl, conf])

    exporter = template("Redis exporter settings", c.EXPORTER_ARGS, "root", "root", "0600")
    systemd.service(name="Redis exporter running", service="prometheus-redis-exporter.service", running=True,
                    # the stack CA it verifies Redis with changed: it reads it at start only
                    enabled=True, restarted=exporter.will_change or any(op.will_change for op in tls))
