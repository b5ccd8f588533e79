"""The sentinel role: a Redis Sentinel vote (Redis hosts and the monitoring host).

Sentinel owns its configuration once running (it records the group and every
failover in it), so the converge writes it only when setting Sentinel up.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FindInFile
from pyinfra.operations import files, server

from hastack.templating import template_path
from roles import rolling_restart
from roles.redis.config import SENTINEL_AUTH
from roles.redis.tls import tls_files
from roles.sentinel.restart import RESTART_MARK
from roles.sentinel import DEFAULTS, SENTINEL_PORT
from roles.sentinel import config as c
from roles import packages


@deploy("sentinel", data_defaults=DEFAULTS)
def sentinel() -> None:
    d = host.data
    packages.install("Redis Sentinel", packages=["redis-sentinel", "redis-tools"], no_recommends=True)
    tls = tls_files()
    managed = host.get_fact(FindInFile, path=c.SENTINEL_CONF, pattern=c.BOOTSTRAP_MARKER)
    conf = None
    if not managed:
        conf = files.template(
            name="Sentinel bootstrap configuration", src=template_path("sentinel", c.SENTINEL_CONF),
            dest=c.SENTINEL_CONF, user="redis", group="redis", mode="0640", **c.template_vars(d.dict())[c.SENTINEL_CONF])
    # the rolling restart's health checks ask this Sentinel, with its password from a root-only file
    files.put(name="Sentinel credential for its health checks", src=StringIO(d.redis_passwords["sentinel"]), dest=SENTINEL_AUTH,
              user="root", group="root", mode="0600")
    # a running Sentinel is restarted by the rolling restart (roles/sentinel/restart.py), one at a time
    rolling_restart.running("Sentinel", "redis-sentinel.service", RESTART_MARK, [*tls, *([conf] if conf else [])])

    # A new seed reaches a Sentinel already set up at runtime (its file is its own): while the seed rotates
    # it accepts both passwords, then gives its peers and Redis the new one, then accepts only that.
    accepted = files.put(name="Sentinel passwords it may be reached with (root only)",
                         src=StringIO("".join(f"{pw}\n" for pw in c.accepted(d.dict()))), dest=c.AUTH_ACCEPTED,
                         user="root", group="root", mode="0600")
    commands = files.put(name="Sentinel password commands (root only)", src=StringIO(c.auth_commands(d.dict())),
                         dest=c.AUTH_COMMANDS, user="root", group="root", mode="0600")
    server.shell(name="Sentinel passwords applied", commands=[c.apply_auth_command(SENTINEL_PORT)],
                 _if=lambda: conf is None and (commands.did_change() or accepted.did_change()))
