"""Where a stack keeps its secrets, and how it applies them: the two kinds of stack a rotation runs on.

A cloud stack keeps them as Pulumi secrets and applies them with `pulumi up`
(which ends with the converge); the lab keeps them in .lab/secrets and applies
them with a converge of its machines. Every rotation (hastack.seed_rotation,
the backup keys, the failover token) and the offboarding run through one of
these two, so they read the same on both.
"""

from __future__ import annotations

import secrets as random
import subprocess
from pathlib import Path
from typing import Callable

from hastack.ca_rotation import CAState
from hastack.seed_rotation import PulumiSeedStore, RotationError, SeedState
from hastack.token_rotation import TokenError, check_token


class LabSecrets:
    """The lab: its secrets in .lab/secrets; its Hetzner project's tokens in a file the lab API reads (its
    console); its S3 keys made by the lab S3's admin."""

    def __init__(self, lab, converge: Callable[[str], None]):
        from hastack.lab import FLOATING_IP_ID

        self.lab, self.converge = lab, converge
        self.floating_ip_id, self.ca_file = FLOATING_IP_ID, str(lab.ca.cert_path)
        self._replaced_keys: dict[str, str] = {}
        self._old_token: str | None = None

    def preflight(self) -> None:
        """What a rotation needs, checked before anything changes."""
        from hastack.lab import LabError, s3

        if s3.load_credentials(self.lab.paths) is None:
            raise LabError("the lab's S3 is not set up: run `hastack lab up`")
        stopped = [row["name"] for row in self.lab.status() if row["state"] != "running"]
        if stopped:
            raise LabError(f"machines not running: {', '.join(stopped)}; start them (`hastack lab up`) first")

    # -- the seed
    def load_seed(self) -> SeedState:
        from hastack.lab.layout import lab_seed_state

        return lab_seed_state(self.lab.paths)

    def save_seed(self, state: SeedState) -> None:
        from hastack.lab.layout import save_lab_seed_state

        save_lab_seed_state(self.lab.paths, state)

    # -- the stack CA
    def load_ca(self):
        return self.lab.ca_state()

    def save_ca(self, state) -> None:
        from hastack.lab.layout import save_lab_ca_state

        save_lab_ca_state(self.lab.paths, state)

    def new_ca(self) -> Callable[[], str]:
        from hastack.ca_rotation import make_next, permitted_names

        return make_next(self.lab.stack, *permitted_names(self.lab.topo, self.lab.addr.floating_ip))

    # -- the backup keys
    def new_backup_keys(self) -> str:
        from hastack.lab import LabError, s3

        creds = s3.load_credentials(self.lab.paths)
        if creds is None:
            raise LabError("the lab's S3 is not set up: run `hastack lab up`")
        self._replaced_keys = s3.new_keys(creds)
        s3.save_credentials(self.lab.paths, creds)
        return f"made {len(self._replaced_keys)} new access keys (every writer and the reader)"

    def retire_backup_keys(self) -> str:
        from hastack.lab import s3

        s3.retire_keys(s3.load_credentials(self.lab.paths), self._replaced_keys)
        return f"deactivated and deleted the {len(self._replaced_keys)} old access keys"

    # -- the failover token
    @property
    def _token_file(self) -> Path:
        return self.lab.paths.secrets / "hcloud-token"

    def new_token(self, endpoint: str, ask: Callable[[], str] | None = None) -> str:
        """The lab is its own console: the new token is made in its project here."""
        from hastack.lab.layout import lab_api_tokens, write_private

        tokens = lab_api_tokens(self.lab.paths)
        self._old_token = self._token_file.read_text().strip()
        new = random.token_hex(32)
        write_private(tokens, tokens.read_text() + new + "\n")
        check_token(new, endpoint, self.floating_ip_id, self.ca_file)
        write_private(self._token_file, new)
        return new

    def retire_token(self, endpoint: str) -> str:
        from hastack.lab.layout import lab_api_tokens, write_private

        tokens = lab_api_tokens(self.lab.paths)
        write_private(tokens, "".join(f"{t}\n" for t in tokens.read_text().split() if t != self._old_token))
        try:
            check_token(self._old_token, endpoint, self.floating_ip_id, self.ca_file)
        except TokenError:
            return "deleted the old token in the lab's Hetzner project: its API refuses it"
        raise TokenError("the lab's Hetzner API still takes the old token after its deletion")


class PulumiSecrets:
    """A cloud stack: Pulumi secrets, set through the Pulumi CLI (values on standard input), applied by
    `pulumi up`."""

    def __init__(self, stack: str, cwd: Path, floating_ip_id: Callable[[], int], pulumi: str = "pulumi",
                 up: Callable[[str], None] | None = None, floating_ip: Callable[[], str] | None = None):
        self.stack, self.cwd, self.pulumi = stack, cwd, pulumi
        self.seed_store = PulumiSeedStore(stack, pulumi=pulumi, cwd=cwd)
        self.ca_store = PulumiSeedStore(stack, pulumi=pulumi, cwd=cwd, state=CAState)
        self.floating_ip_id = floating_ip_id
        self.floating_ip = floating_ip or (lambda: None)
        self.converge = up or self._up

    def _cli(self, *args: str, input: str | None = None) -> None:
        self.seed_store._run(*args, input=input)  # the same Pulumi CLI call, its errors named the same way

    def _up(self, what: str) -> None:
        try:
            proc = subprocess.run([self.pulumi, "up", "--yes", "--skip-preview", "--stack", self.stack], cwd=self.cwd)
        except FileNotFoundError:
            raise RotationError(f"the Pulumi CLI ({self.pulumi}) is not installed") from None
        if proc.returncode != 0:
            raise RotationError(f"`pulumi up` for {what} failed")

    def preflight(self) -> None:
        """What a rotation needs, checked before anything changes: the Pulumi CLI, the stack's secrets and
        outputs readable."""
        self.load_seed()
        self.floating_ip_id()

    def load_seed(self) -> SeedState:
        return self.seed_store.load()

    def save_seed(self, state: SeedState) -> None:
        self.seed_store.save(state)

    def load_ca(self) -> CAState:
        return self.ca_store.load()

    def save_ca(self, state: CAState) -> None:
        self.ca_store.save(state)

    def new_ca(self) -> Callable[[], str]:
        from hastack.ca_rotation import make_next, permitted_names
        from hastack.stackfile import load_stack

        return make_next(self.stack, *permitted_names(load_stack(self.stack), self.floating_ip()))

    def new_backup_keys(self) -> str:
        from hastack.stackfile import read_stack_file

        flat, _ = read_stack_file(self.stack)
        generation = int((flat.get("hastack:backup") or {}).get("keyGeneration", 1)) + 1
        self._cli("config", "set", "--path", "hastack:backup.keyGeneration", str(generation))
        return (f"hastack:backup.keyGeneration = {generation}: the next `pulumi up` makes new keys, converges the "
                "hosts onto them, and deletes the old keys last")

    def retire_backup_keys(self) -> str:
        return "the old access keys were deleted at the end of that `pulumi up`"

    def new_token(self, endpoint: str, ask: Callable[[], str] | None = None) -> str:
        new = ask().strip()
        check_token(new, endpoint, self.floating_ip_id())
        self._cli("config", "set", "--secret", "hastack:failoverToken", input=new)
        return new

    def retire_token(self, endpoint: str) -> str:
        return ("still to do by hand: delete the old token in the Hetzner console (Security -> API tokens); until "
                "then it works for anyone who kept a copy, though nothing of the stack uses it")
