"""The lab started in the background while the tests that need no lab run.

`hastack lab up` runs in a process of its own, its output in a log file; the lab fixture
(tests/lab/conftest.py) waits for it. A start that failed fails the lab tests with the end of
its output: the fixture does not try again, which could hide a cold converge that fails once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 3600  # seconds: a cold start on a busy machine, with room

_started: dict = {}


def begin(stack: str = "lab") -> Path:
    """Starts `hastack lab up` in the background; returns its log file."""
    fd, name = tempfile.mkstemp(prefix="hastack-lab-up-", suffix=".log")
    log = Path(name)
    with os.fdopen(fd, "wb") as out:
        _started["proc"] = subprocess.Popen([sys.executable, "-m", "hastack.cli", "lab", "up", "--stack", stack],
                                            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    _started["log"] = log
    return log


def wait() -> str | None:
    """Waits for a background start: None when it ended well or none was started, else why it failed."""
    proc = _started.pop("proc", None)
    if proc is None:
        return None
    log = _started["log"]
    try:
        code = proc.wait(START_TIMEOUT)
    except subprocess.TimeoutExpired:
        stop(proc)
        return f"`hastack lab up` did not finish in {START_TIMEOUT} s (its output: {log})"
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        return f"`hastack lab up` exited with {code} (its output: {log}):\n{tail}"
    return None


def abandon() -> None:
    """The run ends: a start still going is stopped."""
    proc = _started.pop("proc", None)
    if proc is not None and proc.poll() is None:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
