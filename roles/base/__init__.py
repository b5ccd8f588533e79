from hastack.ports import ADMINS, Port

PORTS = (
    Port("ssh", 22, sources=(ADMINS,), description="SSH, keys only"),
    Port("node-exporter", 9100, sources=("monitoring",), description="Prometheus node exporter"),
    Port("icmp", None, protocol="icmp", sources=("private",), description="ping inside the private network"),
)
