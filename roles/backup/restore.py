"""What every restore shares: the bucket as the restore reader sees it, the operator's age
key, and each backup object downloaded, checked and decrypted on the operator's machine,
then streamed over SSH to the host that loads it.

Only the reader identity (list, get) and the operator's age key are needed; neither ever
reaches a server. What travels to a host is the decrypted, still zstd-compressed stream,
inside the SSH connection.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from roles.backup.agent import KINDS, checked_manifest

CHUNK = 1024 * 1024
AGE_KEY_ENV = "HASTACK_AGE_KEY"


class RestoreError(RuntimeError):
    """A restore that cannot go on; the message says why and what to do."""


# ---------------------------------------------------------------- the operator's age key


@dataclass(frozen=True)
class AgeIdentity:
    path: Path
    recipient: str  # its public key, age1...

    @classmethod
    def load(cls, path: Path | None, stack: str) -> "AgeIdentity":
        if path is None:
            path = default_age_key(stack)
        if path is None:
            raise RestoreError(
                "no age key to decrypt the backups: pass --age-key FILE (or set HASTACK_AGE_KEY), the private "
                "key whose public key is in hastack:backup.recipients (`age-keygen -y FILE` prints it)")
        if not path.is_file():
            raise RestoreError(f"--age-key {path}: no such file")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise RestoreError(f"--age-key {path}: readable by others (mode {mode:04o}); `chmod 600 {path}` first")
        proc = subprocess.run(["age-keygen", "-y", str(path)], capture_output=True, text=True)
        if proc.returncode != 0 or not proc.stdout.startswith("age1"):
            raise RestoreError(f"--age-key {path}: not an age identity file ({proc.stderr.strip() or 'no key in it'})")
        return cls(path=path, recipient=proc.stdout.split()[0])

    def check(self, manifest: dict) -> None:
        """Refuse before downloading anything when this key cannot open the backup."""
        recipients = manifest.get("encryption", {}).get("recipients", [])
        if self.recipient not in recipients:
            raise RestoreError(
                f"the age key {self.path} ({self.recipient[:16]}...) cannot decrypt {manifest['object']}: it was "
                f"encrypted to {', '.join(r[:16] + '...' for r in recipients)}")


def default_age_key(stack: str) -> Path | None:
    if os.environ.get(AGE_KEY_ENV):
        return Path(os.environ[AGE_KEY_ENV])
    from hastack.lab.layout import default_paths, is_lab_stack

    if is_lab_stack(stack):
        key = default_paths().secrets / "backup-age.key"
        return key if key.exists() else None
    return None


# ---------------------------------------------------------------- the bucket


@dataclass
class Source:
    """A stack's backups as its restore reader sees them."""

    stack: str
    outputs: dict
    _objects: dict[str, dict] | None = field(default=None, repr=False)
    _client: object = field(default=None, repr=False)

    @property
    def bucket(self) -> str:
        return self.outputs["backupBucket"]

    @property
    def s3(self):
        if self._client is None:
            from roles.backup.cli import reader_client

            self._client = reader_client(self.outputs)
        return self._client

    def objects(self) -> dict[str, dict]:
        if self._objects is None:
            self._objects = {}
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                for obj in page.get("Contents", []):
                    self._objects[obj["Key"]] = obj
        return self._objects

    def backups(self, kind: str | None = None, host: str | None = None) -> list[dict]:
        """Complete backups (their manifest exists), oldest first: kind, key, host, time, size."""
        objects = self.objects()
        found = []
        for key, obj in objects.items():
            if not key.endswith(".manifest.json"):
                continue
            data_key = key[: -len(".manifest.json")]
            parts = data_key.split("/")
            if len(parts) < 3 or parts[-2] not in KINDS or data_key not in objects:
                continue
            if kind in (None, parts[-2]) and host in (None, parts[-3]):
                found.append({"kind": parts[-2], "key": data_key, "host": parts[-3], "time": obj["LastModified"],
                              "size": objects[data_key]["Size"]})
        return sorted(found, key=lambda b: (b["time"], b["key"]))

    def manifest(self, key: str) -> dict:
        body = self.s3.get_object(Bucket=self.bucket, Key=key + ".manifest.json")["Body"].read()
        try:
            return checked_manifest(json.loads(body), key)
        except ValueError as e:  # ManifestError, or not JSON
            raise RestoreError(f"a manifest that cannot be trusted: {e}") from None

    def chunks(self, manifest: dict, identity: AgeIdentity, progress: "Progress") -> Iterator[bytes]:
        """The object's decrypted bytes (still zstd), as they arrive. The ciphertext's SHA-256 is
        checked against the manifest at the end: a mismatch raises before the caller commits."""
        key = manifest["object"]
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        age = subprocess.Popen(["age", "-d", "-i", str(identity.path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        digest = hashlib.sha256()
        failure: list[BaseException] = []
        stderr: list[bytes] = []

        def feed() -> None:
            try:
                for block in body.iter_chunks(CHUNK):
                    digest.update(block)
                    progress.advance(len(block))
                    age.stdin.write(block)
            except BaseException as e:  # noqa: BLE001 - reported after the stream ends
                failure.append(e)
            finally:
                try:
                    age.stdin.close()
                except OSError:
                    pass

        feeder = threading.Thread(target=feed, daemon=True)
        reader = threading.Thread(target=lambda: stderr.append(age.stderr.read()), daemon=True)
        feeder.start()
        reader.start()
        ended = False
        try:
            while True:
                block = age.stdout.read(CHUNK)
                if not block:
                    ended = True
                    break
                yield block
        finally:
            if not ended:  # the receiver gave up: stop downloading
                age.kill()
                body.close()
            feeder.join()
            age.wait()
            reader.join()
        if failure:
            raise RestoreError(f"downloading {key} failed: {failure[0]}")
        if age.returncode != 0:
            raise RestoreError(f"age could not decrypt {key}: {b''.join(stderr).decode(errors='replace').strip()}")
        if digest.hexdigest() != manifest["sha256"]:
            raise RestoreError(f"{key} is not what was uploaded (SHA-256 {digest.hexdigest()[:16]}... instead of "
                               f"{manifest['sha256'][:16]}... in its manifest); nothing was loaded from it")


def source_for(stack: str, outputs: dict, from_stack: str | None) -> Source:
    """Whose backups a restore reads: the stack's own, or (--from) another stack's. A stack whose
    config says hastack:restoreFrom carries that stack's bucket and reader in its outputs
    (restoreSource); any other stack's outputs are read as the operator can."""
    if from_stack in (None, stack):
        return Source(stack, outputs)
    linked = outputs.get("restoreSource") or {}
    if linked.get("stack") == from_stack:
        return Source(from_stack, {**linked, "hosts": outputs.get("hosts", {})})
    from hastack.console import stack_outputs_of

    return Source(from_stack, stack_outputs_of(from_stack, None))


# ---------------------------------------------------------------- progress and time


class Progress:
    """One line per object, then a line every few seconds: bytes so far, rate, time left."""

    def __init__(self, say: Callable[[str], None], total: int, what: str, every: float = 5.0):
        self.say, self.total, self.what, self.every = say, max(total, 1), what, every
        self.done = 0
        self.started = self.last = time.monotonic()
        say(f"downloading {what}: {_size(total)}")

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-6)
            left = (self.total - self.done) / rate if rate else 0
            self.say(f"  {self.what}: {_size(self.done)} of {_size(self.total)}, {_size(rate)}/s, {left:.0f} s left")

    def finish(self) -> float:
        seconds = time.monotonic() - self.started
        self.say(f"  {self.what}: {_size(self.done)} in {seconds:.1f} s")
        return seconds


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass
class Timeline:
    """The steps of a restore or rebuild and how long each took."""

    say: Callable[[str], None]
    steps: list[dict] = field(default_factory=list)

    def step(self, name: str):
        timeline = self

        class _Step:
            def __enter__(self):
                self.t0 = time.monotonic()
                self.at = datetime.now(timezone.utc)
                timeline.say(f"[{name}]")
                return self

            def __exit__(self, exc_type, exc, tb):
                seconds = round(time.monotonic() - self.t0, 1)
                timeline.steps.append({"step": name, "at": self.at.isoformat(timespec="seconds"),
                                       "seconds": seconds, "ok": exc_type is None})
                return False

        return _Step()

    def table(self) -> str:
        return "\n".join(f"{s['at']}  {s['seconds']:>7.1f} s  {'ok ' if s['ok'] else 'FAILED'} {s['step']}"
                         for s in self.steps)


def stream_to(run, host: str, command: str, source: Source, manifest: dict, identity: AgeIdentity,
              say: Callable[[str], None], label: str | None = None) -> float:
    """Download ``manifest``'s object, decrypt it here, and feed it to ``command`` on ``host``
    (which reads a zstd stream on its standard input); the seconds it took."""
    progress = Progress(say, manifest["size"], label or manifest["object"])
    ok, out, err = run.stream(host, command, source.chunks(manifest, identity, progress))
    if not ok:
        raise RestoreError(f"{host}: `{command}` failed: {(err or out).strip()[-600:]}")
    return progress.finish()


def shell(run, host: str, command: str, timeout: float = 600, clean: Callable[[str], str] = lambda t: t) -> str:
    """``command`` as root on ``host`` under bash with pipefail (a pipeline fails when any of its programs
    does: mariadb-binlog failing half-way must not feed half a replay); its output, or RestoreError
    with the end of what it said (``clean`` masks what must not be shown)."""
    ok, out, err = run(host, f"bash -o pipefail -c {shlex.quote(command)}", timeout)
    if not ok:
        raise RestoreError(f"{host}: `{command[:200]}` failed: {clean((err or out).strip()[-600:])}")
    return out


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> None:
    """Until ``condition()`` holds; a RestoreError meanwhile (still starting, loading) is a no."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except RestoreError:
            pass
        time.sleep(interval)
    raise RestoreError(f"timed out after {timeout:.0f} s waiting for {what}")


def parse_time(value: str | None) -> datetime | None:
    """--to: an ISO 8601 time; UTC unless it names its zone."""
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RestoreError(f"--to {value!r}: not a time; give ISO 8601, e.g. 2026-11-29T21:15:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------- one role's restore


@dataclass
class Restore:
    """What a role's restore step gets (Role.restore): its hosts, where the backups are, the key."""

    run: object  # hastack.converge.Remote: run(host, command, timeout), run.stream(host, command, chunks)
    source: Source
    identity: AgeIdentity
    entries: dict[str, dict]  # the role's hosts of the target stack, as host data
    say: Callable[[str], None]
    timeline: Timeline
    force: bool = False
    options: dict = field(default_factory=dict)  # the role's own: to (MariaDB), snapshot (Cassandra)


def role_entries(stack: str, outputs_path: Path | None, role_name: str) -> tuple[dict, dict]:
    """The stack's outputs and the host data of its hosts of ``role_name``."""
    from hastack.console import fail, stack_entries, stack_outputs_of

    outputs = stack_outputs_of(stack, outputs_path)
    entries = {n: d for n, d in stack_entries(stack, outputs_path).items() if role_name in d.get("groups", [])}
    if not entries:
        fail(f"stack {stack!r} has no {role_name} hosts")
    return outputs, entries


def run_cli(role_name: str, stack: str, outputs_path: Path | None, from_stack: str | None, age_key: Path | None,
            force: bool, options: dict) -> dict:
    """`hastack restore <role>`: resolve, connect, restore, print the timeline; errors end the command."""
    from hastack.console import console, fail, say
    from hastack.converge import connected
    from roles import role

    timeline = Timeline(say)
    try:
        identity = AgeIdentity.load(age_key, stack)
        outputs, entries = role_entries(stack, outputs_path, role_name)
        source = source_for(stack, outputs, from_stack)
        say(f"restoring {role_name} of {stack!r} from the backups of {source.stack!r} ({source.bucket})")
        with connected(entries) as run:
            report = role(role_name).restore_step()(Restore(
                run=run, source=source, identity=identity, entries=entries, say=say, timeline=timeline,
                force=force, options=options))
    except RestoreError as e:
        if timeline.steps:
            console.print(timeline.table(), highlight=False, markup=False)
        fail(str(e), code=1)
    console.print(timeline.table(), highlight=False, markup=False)
    console.print(f"{role_name} restored and verified: " + "; ".join(report.get("checks", [])),
                  highlight=False, markup=False)
    return report


def cli_options():
    """The options every `hastack restore <role>` takes."""
    import typer

    return {
        "from_stack": typer.Option(None, "--from", help="restore another stack's backups (default: the stack's own)"),
        "age_key": typer.Option(None, "--age-key", envvar=AGE_KEY_ENV,
                                help="age private key whose public key is in hastack:backup.recipients"),
        "force": typer.Option(False, "--force", help="replace data the target already holds"),
    }
