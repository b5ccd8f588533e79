"""`hastack ca store`: the stack CA into the stack's config, the secret hastack:ca.

A stack's CA must not live on one laptop only: a converge from another clone
or from CI would otherwise have none. This keeps it where the stack's other
secrets are (encrypted by the stack's secrets provider), once per stack. The
CA comes from ``pki/<stack>/`` when this machine converged the stack before
(its hosts trust that one), else it is made here. The value goes to
`pulumi config set` on its standard input: never on a command line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from hastack.pki import CertificateAuthority, check_pair
from hastack.stackfile import PROJECT_DIR, read_stack_file

KEY = "hastack:ca"


class CustodyError(Exception):
    pass


def store(stack: str, pki_root: Path, stacks_dir: Path | None = None, pulumi: str = "pulumi",
          cwd: Path = PROJECT_DIR) -> str:
    """Store the stack's CA as the secret hastack:ca; returns what was done (made or stored)."""
    flat, secret_keys = read_stack_file(stack, stacks_dir)
    if flat.get("hastack:provider", "hetzner") != "hetzner":
        raise CustodyError(f"stack {stack!r} runs on local machines (hastack:provider {flat['hastack:provider']!r}): "
                           "the lab keeps its own CA in .lab/pki")
    if KEY in secret_keys:
        raise CustodyError(f"stack {stack!r} already keeps its CA in {KEY}; a converge uses that one. Replacing it "
                           "replaces every certificate of the stack: that is a CA rotation, not a store")
    ca = CertificateAuthority(pki_root / stack, stack)
    made = not ca.exists()
    if made:
        ca.create()
    bundle = ca.ca_pem + ca.key_path.read_text()
    check_pair(ca.ca_pem, ca.key_path.read_text())
    try:
        proc = subprocess.run([pulumi, "config", "set", "--secret", "--stack", stack, KEY],
                              input=bundle, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError:
        raise CustodyError(f"the Pulumi CLI ({pulumi}) is not installed; {pki_root / stack} holds the CA: store it "
                           f"later with `hastack ca store --stack {stack}`") from None
    if proc.returncode != 0:
        raise CustodyError(f"`pulumi config set --secret {KEY}` failed: {proc.stderr.strip()}")
    return (f"made a new CA in {pki_root / stack}/ and stored it" if made
            else f"stored the CA of {pki_root / stack}/ (the one the stack's hosts trust)")
