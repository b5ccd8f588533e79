"""Rotating the secret seed without downtime: three converges.

Every service password derives from the seed (hastack.secrets), and no
service may refuse a client that is still on the old password. So:

1. accept: the seed stays, the next seed is added. Every service accepts both
   passwords (Redis ACL, MariaDB, Sentinel); clients keep the old one.
2. switch: the next seed becomes the seed, the old one stays as the previous.
   Clients move to the new passwords (the app, replication, Sentinel, the
   exporters, backups); services still accept both. The Cassandra admin's
   password changes here (only the converge logs in with it).
3. finish: the previous seed is dropped. Services accept the new passwords
   only; the old ones stop working.

The stage is kept with the stack's secrets (the Pulumi secrets
hastack:secretSeedNext / hastack:secretSeedPrevious, or the lab's
.lab/secrets/seed.next / seed.previous), so a rotation that stops half way
is picked up again where it stopped.
"""

from __future__ import annotations

import secrets as random
from dataclasses import dataclass

SEED, NEXT, PREVIOUS = "secretSeed", "secretSeedNext", "secretSeedPrevious"


class RotationError(Exception):
    pass


@dataclass(frozen=True)
class SeedState:
    seed: str
    next: str | None = None
    previous: str | None = None

    def __post_init__(self):
        if not self.seed:
            raise RotationError(f"no secret seed (hastack:{SEED})")
        if self.next and self.previous:
            raise RotationError(f"hastack:{NEXT} and hastack:{PREVIOUS} are both set: a rotation is either "
                                f"before its switch (next) or after it (previous); remove the one that is stale")

    @classmethod
    def stored(cls, seed: str, next: str | None = None, previous: str | None = None) -> "SeedState":
        """From stored values; a store interrupted in the middle of a save (both others kept, one of them
        equal to the seed) reads as the state it was leaving or reaching."""
        if next and previous:
            if previous == seed:
                return cls(seed=seed, next=next)
            if next == seed:
                return cls(seed=seed, previous=previous)
        return cls(seed=seed, next=next, previous=previous)

    @property
    def stage(self) -> str:
        return "accept" if self.next else "switch" if self.previous else "done"

    def secrets(self) -> dict[str, str]:
        """For the converge: the seed clients use, and the other one services also accept."""
        also = self.next or self.previous
        return {"seed": self.seed, **({"seed_also": also} if also else {})}

    def advance(self) -> "SeedState":
        """The state of the rotation's next converge (a finished one starts a new rotation)."""
        if self.next:
            return SeedState(seed=self.next, previous=self.seed)
        if self.previous:
            return SeedState(seed=self.seed)
        return SeedState(seed=self.seed, next=random.token_hex(32))


def rotation_steps(state: SeedState) -> list[SeedState]:
    """Every state still to converge until the rotation is done, from ``state`` (which has converged)."""
    steps = [state.advance()]
    while steps[-1].stage != "done":
        steps.append(steps[-1].advance())
    return steps


def rotate(load, save, converge, say=print) -> list[str]:
    """Runs a rotation to its end: ``load()`` -> the stored SeedState, ``save(state)`` stores one,
    ``converge(stage)`` converges the stack on the stored state (raises when it fails). A rotation
    found half way is converged where it stopped first, then carried on. Returns the stages run."""
    state = load()
    done = []
    if state.stage != "done":
        say(f"a seed rotation stopped at its {state.stage} stage: converging that again first")
        converge(state.stage)
        done.append(state.stage)
    for step in rotation_steps(state):
        save(step)
        say(f"seed rotation, {step.stage}: " + STAGE_TEXT[step.stage])
        converge(step.stage)
        done.append(step.stage)
    return done


STAGE_TEXT = {
    "accept": "every service accepts the old and the new passwords; clients keep the old",
    "switch": "clients move to the new passwords; services still accept both",
    "done": "services accept only the new passwords; the old ones stop working",
}


class PulumiSeedStore:
    """The seed and its rotation stage in a Pulumi stack's secrets, through the Pulumi CLI; values travel
    on standard input and output, never on a command line."""

    def __init__(self, stack: str, pulumi: str = "pulumi", cwd=None):
        self.stack, self.pulumi, self.cwd = stack, pulumi, cwd

    def _run(self, *args: str, input: str | None = None, check: bool = True):
        import subprocess

        try:
            proc = subprocess.run([self.pulumi, *args, "--stack", self.stack], input=input, capture_output=True,
                                  text=True, cwd=self.cwd)
        except FileNotFoundError:
            raise RotationError(f"the Pulumi CLI ({self.pulumi}) is not installed") from None
        if check and proc.returncode != 0:
            raise RotationError(f"`pulumi {' '.join(args[:3])}` failed: {proc.stderr.strip()}")
        return proc

    def _get(self, key: str) -> str | None:
        proc = self._run("config", "get", f"hastack:{key}", check=False)
        return (proc.stdout.strip() or None) if proc.returncode == 0 else None

    def load(self) -> SeedState:
        return SeedState.stored(self._get(SEED) or "", self._get(NEXT), self._get(PREVIOUS))

    def save(self, state: SeedState) -> None:
        # the other seed first: an interruption leaves both seeds stored, never one lost
        for key, value in ((NEXT, state.next), (PREVIOUS, state.previous), (SEED, state.seed)):
            if value:
                self._run("config", "set", "--secret", f"hastack:{key}", input=value)
        for key, value in ((NEXT, state.next), (PREVIOUS, state.previous)):
            if not value:
                self._run("config", "rm", f"hastack:{key}", check=False)
