from hastack.ports import Port

# Prometheus and Alertmanager stay private: admins reach them through an SSH tunnel.
PORTS = (
    Port("prometheus", 9090, sources=("monitoring",), description="Prometheus"),
    Port("alertmanager", 9093, sources=("monitoring",), description="Alertmanager"),
)
