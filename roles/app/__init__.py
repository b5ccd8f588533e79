from hastack.ports import Port

APP_PORT = 8080

PORTS = (
    Port("app-http", APP_PORT, sources=("loadbalancer", "monitoring"), description="application, behind HAProxy"),
)

# Swap in your own application by overriding these (group or host data):
# the command systemd runs, the port it listens on (it gets HASTACK_BIND and
# HASTACK_PORT in its environment) and the path HAProxy health-checks.
DEFAULTS = {
    "app_exec": "/usr/bin/python3 /opt/hastack-app/app.py",
    "app_health_path": "/health",
    "app_install_reference": True,  # upload the reference application
    # TLS from the load balancers to the application (a certificate from the
    # stack's CA); set False for an application that cannot serve TLS.
    "app_tls": True,
    "mariadb_database": "hastack",
}
