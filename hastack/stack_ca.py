"""Custody of the stack's CA: a stack secret, never a file on one laptop.

The CA (hastack.pki) lives where the stack's other secrets live: the Pulumi
secrets ``hastack:caCert`` and ``hastack:caKey``. The Pulumi program checks
them before it creates anything and hands them to the converge in the secret
output ``secrets.ca`` ({"cert": PEM, "key": PEM}), the way it hands over the
seed; `hastack converge` reads that output. The converge writes the CA to a
private temporary directory (0700, the key 0600) for as long as it runs and
removes it afterwards: a converge from a fresh clone or a CI runner uses the
very same CA. A stack without one stops the converge before any host is
touched; nothing makes a CA implicitly.

Only `hastack ca init` (a stack that has none) and the lab (its own, once,
in .lab/pki, handed over exactly like a stack secret) make CAs. `hastack ca
import` stores a CA kept in pki/<stack>/ from before.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from hastack.model import NAMESPACE, Topology
from hastack.pki import CAError, CertificateAuthority, describe_constraints, load_ca, make_ca, not_permitted
from hastack.stackfile import PROJECT_DIR, read_stack_file
from roles import all_roles

CERT_KEY = f"{NAMESPACE}:caCert"
KEY_KEY = f"{NAMESPACE}:caKey"
CA_KEYS = (CERT_KEY, KEY_KEY)
# where an operator's machine kept a stack's CA before it was a stack secret (gitignored)
PKI_DIR = PROJECT_DIR / "pki"
# the CA in host data, between the inventory and the converge (never pyinfra host data)
HOST_DATA_KEY = "stack_ca"


class StackCAError(ValueError):
    """The stack's CA is missing or unusable; the message names the key and the command that fixes it."""


def fix(stack: str) -> str:
    return (f"`hastack ca init --stack {stack}` makes a CA for a stack that has none; a CA kept in pki/{stack}/ "
            f"from before is stored with `hastack ca import --stack {stack}`")


@dataclass(frozen=True)
class StackCA:
    cert_pem: str
    key_pem: str = field(repr=False)  # never in a log or a traceback

    @property
    def digest(self) -> str:
        """Which CA, without its secret: the SHA-256 of the certificate's PEM."""
        return hashlib.sha256(self.cert_pem.encode()).hexdigest()


def missing_in_outputs(stack: str) -> str:
    return (f"stack {stack} has no CA in its outputs (secrets.ca): its CA is the stack secret {CERT_KEY} and "
            f"{KEY_KEY}, which `pulumi up` hands to the converge; {fix(stack)}, then run `pulumi up`. Nothing was "
            f"changed on any host, and no CA is made implicitly (a new CA would re-issue every certificate)")


def from_secrets(secrets: Mapping[str, Any], stack: str) -> StackCA:
    """The CA in a stack's ``secrets`` output, checked; a clear error when it is missing or broken."""
    ca = secrets.get("ca") if isinstance(secrets, Mapping) else None
    if not ca:
        raise StackCAError(missing_in_outputs(stack))
    missing = [key for key, part in ((CERT_KEY, "cert"), (KEY_KEY, "key")) if not (ca.get(part) or "").strip()]
    if missing:
        raise StackCAError(f"stack {stack}: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} empty in "
                           f"the outputs (secrets.ca); store the CA again: {fix(stack)}")
    try:
        load_ca(ca["cert"], ca["key"], where=f"stack {stack}'s CA ({CERT_KEY}, {KEY_KEY})")
    except CAError as e:
        raise StackCAError(str(e)) from None
    return StackCA(ca["cert"], ca["key"])


def from_entries(entries: Mapping[str, Mapping[str, Any]]) -> StackCA:
    """The CA the inventory passed along with a stack's hosts (hastack.inventory.host_entries)."""
    stacks = sorted({str(d.get("stack")) for d in entries.values()})
    stack = stacks[0] if len(stacks) == 1 else "/".join(stacks) or "?"
    cas = {id(d.get(HOST_DATA_KEY)): d.get(HOST_DATA_KEY) for d in entries.values()}
    if len(cas) != 1 or None in cas.values() or not entries:
        raise StackCAError(missing_in_outputs(stack))
    ca = next(iter(cas.values()))
    return ca if isinstance(ca, StackCA) else from_secrets({"ca": ca}, stack)


@contextmanager
def materialised(ca: StackCA, stack: str) -> Iterator[Path]:
    """The CA in a private temporary directory (0700; ca.key 0600), removed when the block ends,
    whatever happens in it. Certificates issued meanwhile land there too and go with it."""
    directory = Path(tempfile.mkdtemp(prefix=f"hastack-ca-{stack}-"))  # mkdtemp: 0700, only this user
    try:
        CertificateAuthority(directory, stack).write(ca.cert_pem, ca.key_pem)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------- what a stack's CA may sign


def possible_host_names(topo: Topology) -> list[str]:
    """Every name a host of this stack can have: the configured names, or <stack>-<short><n> up
    to the role's largest count, so growing a role never needs a new CA."""
    names = []
    for r in all_roles():
        if r.placement is None:
            continue
        configured = getattr(topo.config.roles, r.name).names
        names += configured or [f"{topo.stack}-{r.placement.short_name}{i}" for i in range(1, r.placement.max_count + 1)]
    return names


def role_names(topo: Topology) -> list[str]:
    """The names roles' certificates carry besides host names (the site's, the MariaDB writer's)."""
    return [n for r in all_roles() if r.certificate_names for n in r.certificate_names(topo)]


def permitted_names(topo: Topology, public_ips: Iterable[str] = (), extra_dns: Iterable[str] = ()
                    ) -> tuple[list[str], list[str]]:
    """(DNS names, networks) a new CA for ``topo`` may sign: every possible host name and the
    roles' own names; the private network and ``public_ips`` (addresses known when the CA is
    made: the lab's floating IP and operator address; a cloud stack has none yet)."""
    dns = sorted({*possible_host_names(topo), *role_names(topo), *extra_dns})
    networks = [topo.ip_range] + [f"{ip}/32" for ip in public_ips]
    return dns, networks


def new_ca(topo: Topology, public_ips: Iterable[str] = (), extra_dns: Iterable[str] = ()) -> StackCA:
    """A new CA for the stack, constrained to its names (in memory: the caller stores it)."""
    dns, networks = permitted_names(topo, public_ips, extra_dns)
    return StackCA(*make_ca(topo.stack, dns, networks))


def topology_problems(ca: StackCA, topo: Topology, where: str = f"{CERT_KEY}/{KEY_KEY}") -> list[str]:
    """Why ``ca`` cannot serve this topology: unreadable, expired, or a host name or address of
    the stack outside its name constraints. Empty: it can."""
    import datetime as dt

    try:
        cert, _ = load_ca(ca.cert_pem, ca.key_pem, where=where)
    except CAError as e:
        return [str(e)]
    problems = []
    if cert.not_valid_after_utc <= dt.datetime.now(dt.timezone.utc):
        problems.append(f"{where}: the CA expired on {cert.not_valid_after_utc:%Y-%m-%d}; the stack needs a new CA")
    names = [h.name for h in topo.hosts] + role_names(topo)
    outside = not_permitted(cert, names, [h.private_ip for h in topo.hosts])
    if outside:
        problems.append(f"{where}: the CA's name constraints do not permit {', '.join(outside)} "
                        f"({describe_constraints(cert)}); a CA's names are fixed when it is made, so these hosts "
                        f"need a CA made for them (a new CA for the stack)")
    return problems


# ---------------------------------------------------------------- storing it as a stack secret


def stored_keys(stack: str, stacks_dir: Path | None = None) -> list[str]:
    """Which of hastack:caCert and hastack:caKey the stack file holds (as Pulumi secrets or not)."""
    flat, _ = read_stack_file(stack, stacks_dir)
    return [k for k in CA_KEYS if k in flat]


def store_commands(stack: str, cert_file: Path, key_file: Path) -> list[str]:
    """What stores the CA as the stack's secrets (Pulumi reads a multi-line value from standard input)."""
    return [f"pulumi config set --stack {stack} --secret {CERT_KEY} < {cert_file}",
            f"pulumi config set --stack {stack} --secret {KEY_KEY} < {key_file}"]


def store_with_pulumi(stack: str, ca: StackCA, pulumi: str = "pulumi") -> None:
    """Store the CA as the stack's secrets with the Pulumi CLI, each value on standard input (never
    on a command line). Raises StackCAError with Pulumi's own words when a command fails."""
    for key, value in ((CERT_KEY, ca.cert_pem), (KEY_KEY, ca.key_pem)):
        proc = subprocess.run([pulumi, "config", "set", "--stack", stack, "--secret", key], input=value,
                              capture_output=True, text=True, cwd=PROJECT_DIR)
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip().replace(ca.key_pem.strip(), "<key>")
            raise StackCAError(f"`pulumi config set --stack {stack} --secret {key}` failed: {said}")


def write_files(directory: Path, ca: StackCA) -> CertificateAuthority:
    """The CA as files (ca.crt; ca.key 0600 in a 0700 directory), for the operator to store."""
    return CertificateAuthority(directory, directory.name).write(ca.cert_pem, ca.key_pem)


# ---------------------------------------------------------------- `hastack ca init` and `hastack ca import`


@dataclass
class Custody:
    """What `hastack ca init` or `import` did: the CA, whether Pulumi stored it, and the files
    and commands left to the operator when it did not."""

    stack: str
    ca: StackCA
    stored: bool
    directory: Path | None = None  # the CA as files (ca.crt, ca.key 0600), when written
    commands: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        from hastack.pki import fingerprint

        return fingerprint(self.ca.cert_pem)


def _cloud_topology(stack: str, stacks_dir: Path | None) -> Topology:
    from hastack.model import TopologyError
    from hastack.stackfile import StackFileError, load_stack

    try:
        flat, _ = read_stack_file(stack, stacks_dir)
        provider = flat.get(f"{NAMESPACE}:provider", "hetzner")
        if provider != "hetzner":
            raise StackCAError(f"stack {stack} is a {provider} stack: the lab makes its own CA (in .lab/pki) at "
                               "`hastack lab up` and hands it to the converge itself; nothing was changed")
        return load_stack(stack, stacks_dir=stacks_dir)
    except (StackFileError, TopologyError) as e:
        raise StackCAError(str(e)) from None


def _refuse_a_second_ca(stack: str, stacks_dir: Path | None) -> None:
    have = stored_keys(stack, stacks_dir)
    if have:
        raise StackCAError(
            f"stack {stack} already has a CA ({', '.join(have)} in its stack file); another would re-issue every "
            f"certificate of the stack at once and split it between two CAs. Nothing was changed")


def _store(stack: str, ca: StackCA, pulumi: str | None, directory: Path, write: bool) -> Custody:
    """Store with the Pulumi CLI when there is one; otherwise (or when it fails) leave the CA in
    ``directory`` and say which commands store it. ``write``: the files are not there yet."""
    commands = store_commands(stack, directory / "ca.crt", directory / "ca.key")
    if pulumi:
        try:
            store_with_pulumi(stack, ca, pulumi)
            return Custody(stack, ca, stored=True, directory=None if write else directory)
        except StackCAError as e:
            if write:
                write_files(directory, ca)
            raise StackCAError(f"{e}\nThe CA is kept in {directory} (ca.key 0600); store it with:\n  "
                               + "\n  ".join(commands)) from None
    if write:
        write_files(directory, ca)
    return Custody(stack, ca, stored=False, directory=directory, commands=commands)


def init(stack: str, out: Path | None = None, pulumi: str | None = None, stacks_dir: Path | None = None) -> Custody:
    """A new CA for a stack that has none, constrained to the stack's names and private network,
    stored as its secrets (``pulumi``: the CLI to do it) or written to ``out`` (default
    pki/<stack>/) with the commands that store it. Refused, changing nothing, when the stack has
    a CA (in its stack file, or in pki/<stack>/ from before)."""
    topo = _cloud_topology(stack, stacks_dir)
    _refuse_a_second_ca(stack, stacks_dir)
    legacy = CertificateAuthority(PKI_DIR / stack, stack)
    if legacy.key_path.exists() or legacy.cert_path.exists():
        raise StackCAError(f"{legacy.dir} holds the CA this stack was converged with before: store that one with "
                           f"`hastack ca import --stack {stack}` (a new CA would re-issue every certificate at once); "
                           "nothing was changed")
    directory = Path(out) if out else legacy.dir
    target = CertificateAuthority(directory, stack)
    if target.key_path.exists() or target.cert_path.exists():
        raise StackCAError(f"{directory} already holds a CA (ca.crt or ca.key); choose another --out; nothing was changed")
    return _store(stack, new_ca(topo), pulumi, directory, write=True)


def import_(stack: str, directory: Path | None = None, pulumi: str | None = None,
            stacks_dir: Path | None = None) -> Custody:
    """Store the CA a stack was converged with before (pki/<stack>/, or ``directory``) as its
    secrets. A CA without name constraints keeps working as it is. Refused, changing nothing,
    when it is unreadable, cannot serve the stack, or the stack file holds a CA already."""
    topo = _cloud_topology(stack, stacks_dir)
    directory = Path(directory) if directory else PKI_DIR / stack
    files = CertificateAuthority(directory, stack)
    if not files.exists():
        raise StackCAError(f"no CA in {directory} (ca.crt and ca.key); a stack that never had one gets it with "
                           f"`hastack ca init --stack {stack}`")
    ca = StackCA(files.cert_path.read_text(), files.key_path.read_text())
    problems = topology_problems(ca, topo, where=str(directory))
    if problems:
        raise StackCAError("\n".join(problems) + "\nnothing was changed")
    _refuse_a_second_ca(stack, stacks_dir)
    return _store(stack, ca, pulumi, directory, write=False)
