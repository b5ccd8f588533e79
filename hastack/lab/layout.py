"""Where the lab keeps things, what it names them, and which addresses it uses.

One lab per machine at a time. Every name the lab creates on the host starts
with ``hsl`` so `lab down` (and a human) can find all of it.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hastack.stackfile import PROJECT_DIR, hastack_config, read_stack_file
from hastack.model import Host, Topology, load

PREFIX = "hsl"
PRIVATE_BRIDGE = f"{PREFIX}-priv"
PUBLIC_BRIDGE = f"{PREFIX}-pub"
INTERNET_NS = f"{PREFIX}-internet"
HCLOUD_API_PORT = 8443
S3_PORT = 9000  # the lab's S3 (moto), TLS, on the host's private address
APT_CACHE_PORT = 3150  # not 3142: a system apt-cacher-ng may hold that one
ARTIFACT_PORT = 8700
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
# What a fresh Hetzner Debian 12 server has that minbase lacks (cloud-init
# applies the same first-boot user-data as in the cloud).
BASE_PACKAGES = ("systemd,systemd-sysv,dbus,iproute2,openssh-server,python3,sudo,cloud-init,python3-cffi-backend,"
                 "ca-certificates,netbase,iputils-ping,curl,less")


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def base_marker(self) -> Path:
        return self.root / "base.complete"

    @property
    def machines(self) -> Path:
        return self.root / "machines"

    def machine(self, name: str) -> Path:
        return self.machines / name

    @property
    def ssh(self) -> Path:
        return self.root / "ssh"

    def admin_key(self, admin: str) -> Path:
        return self.ssh / admin

    @property
    def known_hosts(self) -> Path:
        return self.ssh / "known_hosts"

    @property
    def apt_cache(self) -> Path:
        return self.root / "apt-cache"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def wheels(self) -> Path:
        return self.artifacts / "wheels"


def default_paths() -> Paths:
    return Paths(Path(os.environ.get("HASTACK_LAB_DIR", PROJECT_DIR / ".lab")))


def netns(host: str) -> str:
    return f"{PREFIX}-{host}"


def veth(number: int, side: str) -> str:
    """Host-side veth names (15 characters at most): hsl<host number><p|u>. By the host's number
    (Addresses.host_number), never its place in the host list: a host added to a role must not
    take the name of another's link (which setting up its own would then delete)."""
    return f"{PREFIX}{number}{side}"


@dataclass(frozen=True)
class Addresses:
    topo: Topology

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(self.topo.subnet)

    @property
    def public(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(self.topo.lab.public_range)

    @property
    def host_private(self) -> str:
        """The host's address on the private network: the gateway, as on Hetzner."""
        return str(self.subnet.network_address + 1)

    @property
    def host_public(self) -> str:
        """The operator's address on the public network (the lab's admin CIDR)."""
        return str(self.public.network_address + 1)

    @property
    def internet(self) -> str:
        return str(self.public.broadcast_address - 5)

    @property
    def floating_ip(self) -> str:
        return self.topo.lab.floating_ip

    def host_number(self, host: Host) -> int:
        """The host's number in the private subnet. Role blocks fix it, so adding a host to
        one role never renumbers another: the lab's public addresses and server ids use it."""
        return int(ipaddress.ip_address(host.private_ip)) - int(self.subnet.network_address)

    def public_ip(self, host: Host) -> str:
        ip = self.public.network_address + self.host_number(host)
        if str(ip) in (self.floating_ip, self.internet, self.host_public) or ip not in self.public:
            raise ValueError(f"{host.name}: its lab public address {ip} collides with the floating IP, the "
                             f"internet client or the operator, or is outside {self.public}; use fewer nodes")
        return str(ip)


def lab_seed_state(paths: Paths):
    """The lab's secret seed and, while it rotates, the next or previous one (hastack.seed_rotation)."""
    from hastack.seed_rotation import SeedState

    other = {name: (paths.secrets / f"seed.{name}") for name in ("next", "previous")}
    return SeedState.stored(lab_secret(paths, "seed"),
                            **{k: p.read_text().strip() for k, p in other.items() if p.exists()})


def save_lab_seed_state(paths: Paths, state) -> None:
    _save_staged(paths, "seed", state)


def _save_staged(paths: Paths, name: str, state) -> None:
    """Writes each file (the other value first) before removing any, so an interruption never loses one."""
    staged = ((f"{name}.next", state.next), (f"{name}.previous", state.previous))
    for file, value in (*staged, (name, state.seed)):
        if value:
            write_private(paths.secrets / file, value)
    for file, value in staged:
        if not value:
            (paths.secrets / file).unlink(missing_ok=True)


def lab_stack_pki(paths: Paths) -> Path:
    """Where the converge keeps the lab stack's CA and what it issued (the inventory's pki_dir): apart from
    the lab's own CA in .lab/pki, which signs the lab's clouds (its Hetzner API, its S3) and never rotates."""
    return paths.pki / "stack"


def lab_stack_trust(paths: Paths) -> Path:
    """What a client of the lab stack trusts (the site, the services): its CA, and while it rotates the other."""
    return paths.pki / "stack-trust.crt"


def lab_ca_state(paths: Paths, lab_ca):
    """The lab stack's CA (hastack.ca_rotation): at first the lab's own CA, ``lab_ca``; once rotated, the one
    in .lab/secrets/ca; while it rotates, the next or previous one."""
    from hastack.ca_rotation import CAState

    current = paths.secrets / "ca"
    other = {name: (paths.secrets / f"ca.{name}") for name in ("next", "previous")}
    return CAState.stored(current.read_text() if current.exists() else lab_ca.issuer_pem + lab_ca.key_path.read_text(),
                          **{k: p.read_text() for k, p in other.items() if p.exists()})


def save_lab_ca_state(paths: Paths, state) -> None:
    _save_staged(paths, "ca", state)
    write_lab_stack_trust(paths, state)


def write_lab_stack_trust(paths: Paths, state) -> Path:
    """The trust file of the lab stack's clients, and the lab's uptime probe's copy (read at every probe)."""
    ca = state.secrets()
    text = ca["ca"]["cert"] + "".join(ca.get("ca_also", []))
    path = lab_stack_trust(paths)
    uptime_copy = paths.run / "uptime" / "stack-ca.crt"  # there once the lab's monitoring started
    for target in [path] + ([uptime_copy] if uptime_copy.exists() else []):
        if not target.exists() or target.read_text() != text:
            # whole or not at all: the probes read it while it changes
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, target)
    return path


API_TOKENS = "hcloud-api-tokens"


def lab_api_tokens(paths: Paths) -> Path:
    """The lab Hetzner project's API tokens, one a line (what Hetzner's console keeps): at first the stack's
    failover token only. A token rotation adds the new one here and deletes the old (hastack.token_rotation)."""
    path = paths.secrets / API_TOKENS
    if not path.exists():
        token = lab_secret(paths, "hcloud-token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    return path


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path`` (0600), whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def lab_secret(paths: Paths, name: str) -> str:
    """A random secret of the lab, made once, kept 0600 in .lab/secrets."""
    import secrets

    path = paths.secrets / name
    if not path.exists():
        paths.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def generate_admin_key(paths: Paths, admin: str) -> str:
    key = paths.admin_key(admin)
    if not key.exists():
        paths.ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{admin}@hastack-lab", "-f", str(key)],
                       check=True)
    return key.with_suffix(".pub").read_text().strip()


def is_lab_stack(stack: str) -> bool:
    flat, _ = read_stack_file(stack)
    return flat.get("hastack:provider") == "lab"


def lab_topology(stack: str = "lab", paths: Paths | None = None, drop_admins: tuple[str, ...] = (),
                 counts: dict[str, int] | None = None) -> Topology:
    """The lab stack's topology; admins without a key get one generated in .lab/ssh.

    ``drop_admins`` leaves admins out and ``counts`` sets roles' node counts,
    as if the config said so.
    """
    paths = paths or default_paths()
    flat, secrets = read_stack_file(stack)
    config = hastack_config(flat)
    for role, count in (counts or {}).items():
        config["roles"][role] = {**config["roles"][role], "count": count}
    admins = []
    for admin in config.get("admins") or []:
        if admin.get("name") in drop_admins:
            continue
        if isinstance(admin, dict) and "sshKey" not in admin and "name" in admin:
            admin = {**admin, "sshKey": generate_admin_key(paths, admin["name"])}
        admins.append(admin)
    config["admins"] = admins
    topo = load(stack, config, secret_keys=secrets)
    if topo.provider != "lab":
        raise ValueError(f"stack {stack!r} is a {topo.provider} stack, not a lab (hastack:provider must be 'lab')")
    return topo
