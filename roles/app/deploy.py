"""The app role: the application behind the load balancers, run by systemd."""

from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from hastack.pki import CertificateAuthority
from hastack.templating import template_path
from roles.app import APP_PORT, DEFAULTS
from roles.mariadb import MARIADB_PORT, WRITER_AGENT_PORT
from roles.redis import REDIS_PORT

REFERENCE_APP = Path(__file__).parent / "files" / "app.py"
UNIT = "/etc/systemd/system/hastack-app.service"


@deploy("app", data_defaults=DEFAULTS)
def app() -> None:
    d = host.data
    # PyMySQL and redis-py: the reference application's drivers
    apt.packages(name="Python for the reference application",
                 packages=["python3", "python3-pymysql", "python3-redis", "haproxy"], no_recommends=True)

    # -- the local proxy to the MariaDB writer
    proxy = files.template(name="Local MariaDB proxy", src=template_path("app", "/etc/haproxy/haproxy.cfg"),
                           dest="/etc/haproxy/haproxy.cfg", user="root", group="root", mode="0644",
                           hostname=host.name, port=MARIADB_PORT, agent_port=WRITER_AGENT_PORT,
                           masters=d.mariadb_masters)
    server.shell(name="Check the local proxy configuration", commands=["haproxy -c -q -f /etc/haproxy/haproxy.cfg"],
                 _if=proxy.did_change)
    systemd.service(name="Local MariaDB proxy running", service="haproxy.service", running=True, enabled=True,
                    reloaded=proxy.will_change)
    code = None
    if host.data.app_install_reference:
        files.directory(name="Application directory", path="/opt/hastack-app", user="root", group="root", mode="0755")
        code = files.put(name="Reference application", src=str(REFERENCE_APP), dest="/opt/hastack-app/app.py",
                         user="root", group="root", mode="0644")
    files.directory(name="Application settings directory", path="/etc/hastack-app", user="root", group="root",
                    mode="0700")
    # passwords reach the throwaway service user as systemd credentials, never in its environment
    secrets = [
        files.put(name="MariaDB password", src=StringIO(d.mariadb_passwords["app"]), dest="/etc/hastack-app/mariadb.password",
                  user="root", group="root", mode="0600"),
        files.put(name="Redis password", src=StringIO(d.redis_passwords["app"]), dest="/etc/hastack-app/redis.password",
                  user="root", group="root", mode="0600"),
    ]
    tls_changed = False
    if host.data.app_tls:
        issued = CertificateAuthority(host.data.pki_dir, host.data.stack).issue(
            f"app-{host.name}", dns=[host.name], ips=[host.data.private_ip])
        crt = files.put(name="TLS certificate", src=StringIO(issued.chain_pem), dest="/etc/hastack-app/tls.crt",
                        user="root", group="root", mode="0644")
        key = files.put(name="TLS key", src=StringIO(issued.key_pem), dest="/etc/hastack-app/tls.key",
                        user="root", group="root", mode="0600")
        tls_changed = crt.will_change or key.will_change
    unit = files.template(
        name="Application unit", src=template_path("app", UNIT), dest=UNIT, user="root", group="root", mode="0644",
        app_exec=host.data.app_exec, bind=host.data.private_ip, port=APP_PORT,
        dependencies=host.data.app_dependencies, tls=host.data.app_tls,
        database=d.mariadb_database, ca_file=f"/usr/local/share/ca-certificates/hastack-{d.stack}.crt",
        redis_hosts=[f"{ip}:{REDIS_PORT}" for ip in d.redis_hosts.values()],
    )
    changed = (unit.will_change or tls_changed or (code is not None and code.will_change)
               or any(op.will_change for op in secrets))
    systemd.service(name="Application running", service="hastack-app.service", running=True, enabled=True,
                    restarted=changed, daemon_reload=unit.will_change)
