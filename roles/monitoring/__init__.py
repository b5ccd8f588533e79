"""The monitoring role: Prometheus and Alertmanager, and the third Redis Sentinel."""

from hastack.ports import Port
from hastack.role import Placement, Role

# Prometheus and Alertmanager stay private: admins reach them through an SSH tunnel.
PORTS = (
    Port("prometheus", 9090, sources=("monitoring",), description="Prometheus"),
    Port("alertmanager", 9093, sources=("monitoring",), description="Alertmanager"),
)

ROLE = Role(
    name="monitoring",
    ports=PORTS,
    placement=Placement(short_name="mon", first_address=150, min_count=1, max_count=1, count_rule="exactly 1"),
)

DEFAULTS = ROLE.defaults
