"""The sentinel role: a Redis Sentinel vote (Redis hosts and the monitoring host).

Sentinel owns its configuration once running (it records the group and every
failover in it), so the converge writes it only when setting Sentinel up.
"""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import FindInFile
from pyinfra.operations import apt, files, systemd

from hastack.templating import template_path
from roles.redis import REDIS_PORT
from roles.redis.tls import tls_files
from roles.sentinel import DEFAULTS, SENTINEL_PORT


@deploy("sentinel", data_defaults=DEFAULTS)
def sentinel() -> None:
    d = host.data
    apt.packages(name="Redis Sentinel", packages=["redis-sentinel", "redis-tools"], no_recommends=True)
    tls = tls_files()
    managed = host.get_fact(FindInFile, path="/etc/redis/sentinel.conf", pattern="hastack-sentinel-bootstrap")
    conf = None
    if not managed:
        conf = files.template(
            name="Sentinel bootstrap configuration", src=template_path("sentinel", "/etc/redis/sentinel.conf"),
            dest="/etc/redis/sentinel.conf", user="redis", group="redis", mode="0640",
            private_ip=d.private_ip, port=SENTINEL_PORT, redis_port=REDIS_PORT, primary_ip=d.redis_primary_ip,
            quorum=d.sentinel_quorum, sentinel_password=d.redis_passwords["sentinel"],
            down_after_ms=d.sentinel_down_after_ms, failover_timeout_ms=d.sentinel_failover_timeout_ms)
    changed = any(op.will_change for op in tls) or (conf is not None and conf.will_change)
    systemd.service(name="Sentinel running", service="redis-sentinel.service", running=True, enabled=True,
                    restarted=changed)
