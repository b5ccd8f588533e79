"""What every host running a Hetzner-API agent needs: a virtualenv with the
Hetzner library, the root-only API token and, for a private API (the lab's),
its CA. Used by the load balancers (floating IP) and the MariaDB masters
(fencing)."""

from io import StringIO
from pathlib import Path

from pyinfra import host
from pyinfra.facts.server import Command
from pyinfra.operations import files, server

from roles import packages

VENV = "/opt/hastack/venv"
# the virtualenv's packages, each pinned to one wheel by its hash (scripts/lock_agent_requirements.py)
LOCK = Path(__file__).with_name("agent-requirements.txt")
LOCK_ON_HOST = "/opt/hastack/agent-requirements.txt"
TOKEN_FILE = "/etc/hastack/hcloud-token"  # nosec B105  # the path of the token's file
CA_FILE = "/etc/hastack/hcloud-api-ca.pem"


def install(system_site_packages: bool = False) -> list:
    """The agents' virtualenv; with the system's packages where an agent also uses Debian's (PyMySQL).
    Returns the operations that change what a running agent has loaded (its restart's reasons)."""
    d = host.data
    packages.install("Python virtualenvs", packages=["python3-venv"], no_recommends=True)
    files.directory(name="Agent directory", path="/opt/hastack", user="root", group="root", mode="0755")
    flag = " --system-site-packages" if system_site_packages else ""
    # pip is the last thing venv installs: its absence means no usable virtualenv yet
    venv = server.shell(name="Agent virtualenv", commands=[f"rm -rf {VENV} && python3 -m venv{flag} {VENV}"],
                        _if=lambda: not host.get_fact(Command, f"test -x {VENV}/bin/pip && echo yes || true"))
    lock = files.put(name="Agent requirements (hashed)", src=str(LOCK), dest=LOCK_ON_HOST,
                     user="root", group="root", mode="0644")
    # only the locked wheels, verified by hash: the host resolves nothing and builds nothing
    library = server.shell(
        name="Hetzner library for the agent",
        commands=[f"{VENV}/bin/pip install --quiet --disable-pip-version-check --require-hashes --no-deps "
                  f"--only-binary=:all: {' '.join(d.agent_pip_index)} -r {LOCK_ON_HOST}"],
        # the locked version's metadata in the virtualenv (cheaper than starting Python to import it)
        _if=lambda: venv.did_change() or lock.did_change() or not host.get_fact(
            Command, f"ls -d {VENV}/lib/python3*/site-packages/hcloud-{locked_version('hcloud')}.dist-info "
                     "2>/dev/null || true"),
    )
    files.directory(name="Agent config directory", path="/etc/hastack", user="root", group="root", mode="0700")
    files.put(name="Hetzner API token (root only)", src=StringIO(d.failover_token), dest=TOKEN_FILE,
              user="root", group="root", mode="0600")
    if d.hcloud_api_ca:
        files.put(name="Hetzner API CA", src=StringIO(d.hcloud_api_ca), dest=CA_FILE,
                  user="root", group="root", mode="0644")
    return [venv, library]


def locked_version(package: str) -> str:
    """The version of ``package`` in the lock."""
    for line in LOCK.read_text().splitlines():
        if line.startswith(f"{package}=="):
            return line.split("==", 1)[1].split()[0]
    raise KeyError(f"{package} is not in {LOCK}")


def api_config() -> dict:
    """The API part of an agent's configuration."""
    d = host.data
    return {"api_endpoint": d.hcloud_api_endpoint, "token_file": TOKEN_FILE,
            "ca_file": CA_FILE if d.hcloud_api_ca else None}
