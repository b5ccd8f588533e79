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

    KEYS = (SEED, NEXT, PREVIOUS)  # where a Pulumi stack keeps the three
    WHAT = "seed"
    STAGE_TEXT = {
        "accept": "every service accepts the old and the new passwords; clients keep the old",
        "switch": "clients move to the new passwords; services still accept both",
        "done": "services accept only the new passwords; the old ones stop working",
    }

    def __post_init__(self):
        key, next_key, previous_key = self.KEYS
        if not self.seed:
            raise RotationError(f"no {self.WHAT} (hastack:{key})")
        if self.next and self.previous:
            raise RotationError(f"hastack:{next_key} and hastack:{previous_key} are both set: a rotation is either "
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

    def new_value(self) -> str:
        return random.token_hex(32)

    def advance(self, new=None) -> "SeedState":
        """The state of the rotation's next converge (a finished one starts a new rotation, with ``new()``
        as the next value when given)."""
        cls = type(self)
        if self.next:
            return cls(seed=self.next, previous=self.seed)
        if self.previous:
            return cls(seed=self.seed)
        return cls(seed=self.seed, next=(new or self.new_value)())


def rotation_steps(state: SeedState, new=None) -> list[SeedState]:
    """Every state still to converge until the rotation is done, from ``state`` (which has converged)."""
    steps = [state.advance(new)]
    while steps[-1].stage != "done":
        steps.append(steps[-1].advance(new))
    return steps


def rotate(load, save, converge, say=print, new=None) -> list[str]:
    """Runs a rotation to its end: ``load()`` -> the stored state (SeedState, or hastack.ca_rotation.CAState),
    ``save(state)`` stores one, ``converge(stage)`` converges the stack on the stored state (raises when it
    fails); ``new()``: the next value, when the state cannot make one itself. A rotation found half way is
    converged where it stopped first, then carried on. Returns the stages run."""
    return rotate_together([(load, save, new)], converge, say)


def rotate_together(rotations, converge, say=print) -> list[str]:
    """Several rotations (``(load, save, new)`` each) in step: one converge per stage for all of them (the
    accept stage of each, then the switch of each, then the end of each). Those found half way are brought
    to their end first (that ends their rotation): in step when they stopped at the same stage, else one
    after the other."""
    done = []
    loaded = [(load(), save, new) for load, save, new in rotations]
    halfway = [r for r in loaded if r[0].stage != "done"]
    fresh = [r for r in loaded if r[0].stage == "done"]
    groups = [halfway] if len({r[0].stage for r in halfway}) == 1 else [[r] for r in halfway]
    for group in groups:
        stage = group[0][0].stage
        say(f"a {' and '.join(r[0].WHAT for r in group)} rotation stopped at its {stage} stage: converging that "
            "again first")
        converge(stage)
        done.append(stage)
        done += _in_step([(rotation_steps(state, new), save) for state, save, new in group], converge, say)
    done += _in_step([(rotation_steps(state, new), save) for state, save, new in fresh], converge, say)
    return done


def _in_step(plans, converge, say) -> list[str]:
    """Converges ``plans`` ((steps, save) each, steps of one length) stage by stage, every state saved first."""
    done = []
    for steps in zip(*(steps for steps, _ in plans), strict=True):
        for step, (_, save) in zip(steps, plans, strict=True):
            save(step)
            say(f"{step.WHAT} rotation, {step.stage}: " + step.STAGE_TEXT[step.stage])
        converge(steps[0].stage)
        done.append(steps[0].stage)
    return done


class PulumiSeedStore:
    """The seed (or another staged secret: ``state``, hastack.ca_rotation.CAState) and its rotation stage in a
    Pulumi stack's secrets, through the Pulumi CLI; values travel on standard input and output, never on a
    command line."""

    def __init__(self, stack: str, pulumi: str = "pulumi", cwd=None, state=SeedState):
        self.stack, self.pulumi, self.cwd, self.state = stack, pulumi, cwd, state

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
        key, next_key, previous_key = self.state.KEYS
        return self.state.stored(self._get(key) or "", self._get(next_key), self._get(previous_key))

    def save(self, state: SeedState) -> None:
        key, next_key, previous_key = self.state.KEYS
        # the other value first: an interruption leaves both stored, never one lost
        for k, value in ((next_key, state.next), (previous_key, state.previous), (key, state.seed)):
            if value:
                self._run("config", "set", "--secret", f"hastack:{k}", input=value)
        for k, value in ((next_key, state.next), (previous_key, state.previous)):
            if not value:
                self._run("config", "rm", f"hastack:{k}", check=False)
