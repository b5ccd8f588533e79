"""The app role: the application behind the load balancers, run by systemd."""

from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files, server, systemd

from roles.template_file import template_file
from roles.tls_files import issue, stack_ca
from roles.app import DEFAULTS
from roles.app import config as c
from roles import packages, rolling_restart
from roles.app import restart

REFERENCE_APP = Path(__file__).parent / "files" / "app.py"


@deploy("app", data_defaults=DEFAULTS)
def app() -> None:
    d = host.data
    tvars = c.template_vars(host.name, d.dict())
    # PyMySQL and redis-py: the reference application's drivers
    packages.install("Python for the reference application",
                 packages=["python3", "python3-pymysql", "python3-redis", "haproxy"], no_recommends=True)

    # -- the local proxy to the MariaDB writer
    proxy = template_file("app", c.PROXY_CFG, tvars, name="Local MariaDB proxy")
    server.shell(name="Check the local proxy configuration", commands=[f"haproxy -c -q -f {c.PROXY_CFG}"],
                 _if=proxy.did_change)
    systemd.service(name="Local MariaDB proxy running", service="haproxy.service", running=True, enabled=True,
                    reloaded=proxy.will_change)
    code = None
    if host.data.app_install_reference:
        files.directory(name="Application directory", path="/opt/hastack-app", user="root", group="root", mode="0755")
        code = files.put(name="Reference application", src=str(REFERENCE_APP), dest="/opt/hastack-app/app.py",
                         user="root", group="root", mode="0644")
    files.directory(name="Application settings directory", path=c.SETTINGS_DIR, user="root", group="root",
                    mode="0700")
    # passwords reach the throwaway service user as systemd credentials, never in its environment
    secrets = [
        files.put(name="MariaDB password", src=StringIO(d.mariadb_passwords["app"]), dest="/etc/hastack-app/mariadb.password",
                  user="root", group="root", mode="0600"),
        files.put(name="Redis password", src=StringIO(d.redis_passwords["app"]), dest="/etc/hastack-app/redis.password",
                  user="root", group="root", mode="0600"),
    ]
    # the CA the app verifies MariaDB, Redis and Cassandra with: its own copy, so that a new trust (the stack
    # CA rotating) restarts it before the services it talks to change their certificates
    trust = files.put(name="Stack CA (the app's trust)", src=StringIO(stack_ca().ca_pem_ensured()),
                      dest=c.CA_FILE, user="root", group="root", mode="0644")
    tls_ops = [trust]
    if host.data.app_tls:
        issued = issue(f"app-{host.name}", ["/etc/hastack-app/tls.crt", "/etc/hastack-app/tls.key"],
                       dns=[host.name], ips=[host.data.private_ip])
        crt = files.put(name="TLS certificate", src=StringIO(issued.chain_pem), dest="/etc/hastack-app/tls.crt",
                        user="root", group="root", mode="0644")
        key = files.put(name="TLS key", src=StringIO(issued.key_pem), dest="/etc/hastack-app/tls.key",
                        user="root", group="root", mode="0600")
        tls_ops += [crt, key]
    unit = template_file("app", c.UNIT, tvars, name="Application unit")
    # a running application is restarted by the rolling restart (roles/app/restart.py), one server at a time
    rolling_restart.running("Application", restart.SERVICE, restart.RESTART_MARK,
                            [unit, *tls_ops, *([code] if code is not None else []), *secrets],
                            daemon_reload=unit.will_change)
