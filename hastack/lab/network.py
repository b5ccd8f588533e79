"""The lab's networks, shaped like Hetzner's.

- a private bridge: every machine's eth1, the host as the gateway (.1);
- a public bridge: every machine's eth0 with a public address, the host as
  the operator (the lab's admin CIDR), and an "internet" client namespace;
- the floating IP is routed (a /32 via the owning load balancer) the way
  Hetzner routes it; nothing else is routed, and the host does not forward.
"""

from __future__ import annotations

from hastack.lab.layout import INTERNET_NS, PREFIX, PRIVATE_BRIDGE, PUBLIC_BRIDGE, Addresses, netns, veth
from hastack.lab.system import ok, run

PUBLIC_IF = "eth0"
PRIVATE_IF = "eth1"


def ensure_bridge(name: str, address: str) -> None:
    if not ok("ip", "link", "show", name):
        run("ip", "link", "add", name, "type", "bridge", "forward_delay", "0")
    if address not in run("ip", "-br", "addr", "show", name).stdout:
        run("ip", "addr", "add", address, "dev", name)
    run("ip", "link", "set", name, "up")


def ensure_netns(name: str) -> None:
    if name not in netns_list():
        run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "set", "lo", "up")


def netns_list() -> list[str]:
    return [line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line.strip()]


def ensure_veth(ns: str, host_side: str, inner: str, bridge: str, address: str) -> None:
    if not ok("ip", "-n", ns, "link", "show", inner):
        if ok("ip", "link", "show", host_side):
            run("ip", "link", "del", host_side)  # left over from a crashed run
        run("ip", "link", "add", host_side, "type", "veth", "peer", "name", inner, "netns", ns)
    run("ip", "link", "set", host_side, "master", bridge, "up")
    if address.split("/")[0] + "/" not in run("ip", "-n", ns, "-br", "addr", "show", inner).stdout:
        run("ip", "-n", ns, "addr", "add", address, "dev", inner)
    run("ip", "-n", ns, "link", "set", inner, "up")


def setup(addr: Addresses) -> None:
    """Bridges, one namespace per machine, the internet namespace. Idempotent."""
    ensure_bridge(PRIVATE_BRIDGE, f"{addr.host_private}/{addr.subnet.prefixlen}")
    ensure_bridge(PUBLIC_BRIDGE, f"{addr.host_public}/{addr.public.prefixlen}")
    for host in addr.topo.hosts:
        ns, number = netns(host.name), addr.host_number(host)
        ensure_netns(ns)
        ensure_veth(ns, veth(number, "u"), PUBLIC_IF, PUBLIC_BRIDGE, f"{addr.public_ip(host)}/{addr.public.prefixlen}")
        ensure_veth(ns, veth(number, "p"), PRIVATE_IF, PRIVATE_BRIDGE, f"{host.private_ip}/{addr.subnet.prefixlen}")
    ensure_netns(INTERNET_NS)
    ensure_veth(INTERNET_NS, f"{PREFIX}-inet", "eth0", PUBLIC_BRIDGE, f"{addr.internet}/{addr.public.prefixlen}")


def floating_ip_route_commands(floating_ip: str, target_public_ip: str) -> list[list[str]]:
    """The commands that send the floating IP to one machine, as Hetzner's routers do after an assign:
    from the internet namespace and from the host."""
    return [["ip", "-n", INTERNET_NS, "route", "replace", f"{floating_ip}/32", "via", target_public_ip],
            ["ip", "route", "replace", f"{floating_ip}/32", "via", target_public_ip, "dev", PUBLIC_BRIDGE]]


def teardown() -> list[str]:
    """Remove every namespace and bridge of the lab; returns what was removed."""
    removed = []
    for ns in netns_list():
        if ns.startswith(f"{PREFIX}-"):
            run("ip", "netns", "del", ns)
            removed.append(f"netns {ns}")
    for line in run("ip", "-br", "link", "show").stdout.splitlines():
        name = line.split()[0].split("@")[0]
        if name.startswith(PREFIX):
            run("ip", "link", "del", name, check=False)
            removed.append(f"link {name}")
    return removed


def leftovers() -> list[str]:
    found = [f"netns {ns}" for ns in netns_list() if ns.startswith(f"{PREFIX}-")]
    for line in run("ip", "-br", "link", "show").stdout.splitlines():
        name = line.split()[0].split("@")[0]
        if name.startswith(PREFIX):
            found.append(f"link {name}")
    return found
