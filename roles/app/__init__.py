"""The app role: the application behind the load balancers (the reference
application unless you bring your own), with a local proxy to the MariaDB writer."""

from pydantic import Field, field_validator

from hastack.ports import Port
from hastack.role import Placement, Role, Settings

APP_PORT = 8080

PORTS = (
    Port("app-http", APP_PORT, sources=("loadbalancer", "monitoring"), description="application, behind HAProxy"),
)


class AppSettings(Settings):
    """hastack:settings.app -> host data app_<key>. Swap in your own application here:
    the command systemd runs (it gets HASTACK_BIND and HASTACK_PORT in its
    environment) and the path HAProxy health-checks."""

    exec: str = Field("/usr/bin/python3 /opt/hastack-app/app.py", min_length=1)
    health_path: str = Field("/health", pattern=r"^/[A-Za-z0-9._~/-]*$")
    install_reference: bool = True  # upload the reference application
    # TLS from the load balancers to the application (a certificate from the
    # stack's CA); false for an application that cannot serve TLS.
    tls: bool = True
    # host:port endpoints the reference application's /health checks (TCP connect)
    dependencies: list[str] = []

    @field_validator("exec")
    @classmethod
    def _one_line(cls, value: str) -> str:
        if "\n" in value or not value.startswith("/"):
            raise ValueError("one line starting with the program's absolute path, e.g. /usr/bin/python3 /opt/app/main.py")
        return value

    @field_validator("dependencies")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        import re

        for target in value:
            if not re.match(r"^[A-Za-z0-9.-]+:\d{1,5}$", target):
                raise ValueError(f"{target!r} is not host:port, e.g. 10.20.1.70:6379")
        return value


def _host_data(topo, host):
    from roles.mariadb import client_data
    from roles.redis import client_data as redis_client_data

    return {**client_data(topo), **redis_client_data(topo),
            # the local proxy to the writer; both masters' certificates carry this name
            "etc_hosts": {"mariadb-writer": "127.0.0.1"}}


def _from_outputs(outputs, secrets, data):
    from roles.mariadb import passwords as mariadb_passwords
    from roles.redis import passwords as redis_passwords

    if not secrets.get("seed"):
        return {}
    # only its own accounts
    return {"mariadb_passwords": {"app": mariadb_passwords(secrets["seed"])["app"]},
            "redis_passwords": {"app": redis_passwords(secrets["seed"])["app"]}}


ROLE = Role(
    name="app",
    ports=PORTS,
    settings=AppSettings,
    settings_prefix="app_",
    placement=Placement(short_name="app", first_address=20, min_count=1, max_count=40, count_rule="between 1 and 40"),
    host_data=_host_data,
    from_outputs=_from_outputs,
    after_roles="roles.app.restart:after_roles",  # one app server at a time
)

DEFAULTS = ROLE.defaults
