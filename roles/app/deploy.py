"""The app role: the application behind the load balancers, run by systemd."""

from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files, systemd

from hastack.pki import CertificateAuthority
from hastack.templating import template_path
from roles.app import APP_PORT, DEFAULTS

REFERENCE_APP = Path(__file__).parent / "files" / "app.py"
UNIT = "/etc/systemd/system/hastack-app.service"


@deploy("app", data_defaults=DEFAULTS)
def app() -> None:
    # PyMySQL: the reference application's MariaDB driver
    apt.packages(name="Python for the reference application", packages=["python3", "python3-pymysql"],
                 no_recommends=True)
    code = None
    if host.data.app_install_reference:
        files.directory(name="Application directory", path="/opt/hastack-app", user="root", group="root", mode="0755")
        code = files.put(name="Reference application", src=str(REFERENCE_APP), dest="/opt/hastack-app/app.py",
                         user="root", group="root", mode="0644")
    tls_changed = False
    if host.data.app_tls:
        issued = CertificateAuthority(host.data.pki_dir, host.data.stack).issue(
            f"app-{host.name}", dns=[host.name], ips=[host.data.private_ip])
        files.directory(name="TLS directory", path="/etc/hastack-app", user="root", group="root", mode="0700")
        crt = files.put(name="TLS certificate", src=StringIO(issued.chain_pem), dest="/etc/hastack-app/tls.crt",
                        user="root", group="root", mode="0644")
        key = files.put(name="TLS key", src=StringIO(issued.key_pem), dest="/etc/hastack-app/tls.key",
                        user="root", group="root", mode="0600")
        tls_changed = crt.will_change or key.will_change
    unit = files.template(
        name="Application unit", src=template_path("app", UNIT), dest=UNIT, user="root", group="root", mode="0644",
        app_exec=host.data.app_exec, bind=host.data.private_ip, port=APP_PORT,
        dependencies=host.data.get("app_dependencies") or [], tls=host.data.app_tls,
    )
    changed = unit.will_change or tls_changed or (code is not None and code.will_change)
    systemd.service(name="Application running", service="hastack-app.service", running=True, enabled=True,
                    restarted=changed, daemon_reload=unit.will_change)
