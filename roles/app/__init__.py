from hastack.ports import Port

PORTS = (
    Port("app-http", 8080, sources=("loadbalancer", "monitoring"), description="application, behind HAProxy"),
)
