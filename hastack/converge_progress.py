"""What a converge is doing while its operations run: operations done and left per host, and, when a host
has been on one operation for a while, which host and which operation.

Each host runs its operations at its own pace (hastack.host_runs); a long one (a package install, a
download) used to leave the screen on "running N operations" for minutes.
"""

from __future__ import annotations

import time
from typing import Callable

import gevent
from pyinfra.api.state import BaseStateCallback


def operation_names(state, host_name: str, op_hash: str) -> list[str]:
    """One operation in the order may be a different one per role: the host's own name for it
    (hastack.converge.own_operation_names) where known, else pyinfra's names for it."""
    own = getattr(state, "hastack_own_names", {}).get((host_name, op_hash))
    return [own] if own else sorted(state.get_op_meta(op_hash).names)


class Progress(BaseStateCallback):
    """A pyinfra state callback (``state.add_callback_handler``); ``say`` gets a line every ``every`` seconds
    at most while operations run."""

    def __init__(self, state, say: Callable[[str], None], every: float = 10.0, now=time.monotonic):
        self.say, self.every, self.now = say, every, now
        self.state = state
        self.left = {h.name: len(ops) for h, ops in state.ops.items() if ops}
        self.total = {**self.left}
        self.running: dict[str, tuple[str, float]] = {}  # host -> (operation as shown, since when)
        self.started = self.said = now()
        self.seconds: dict[str, float] = {}  # operation (as shown) -> the longest any host ran it
        self._ticker = None

    def _shown(self, host_name: str, op_hash: str) -> str:
        names = sorted({n.removeprefix("hastack | ").replace(" | ", ": ", 1)
                        for n in operation_names(self.state, host_name, op_hash)})
        return ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "") or op_hash[:8]

    # -- pyinfra's callbacks (instance methods: pyinfra calls them with the state first)
    def operation_host_start(self, state, host, op_hash):
        if op_hash in state.ops.get(host, ()):
            self.running[host.name] = (self._shown(host.name, op_hash), self.now())

    def operation_host_success(self, state, host, op_hash, retry_count=0):
        self._host_done(host.name)

    def operation_host_error(self, state, host, op_hash, retry_count=0, max_retries=0):
        self._host_done(host.name)

    def _host_done(self, name: str) -> None:
        shown, since = self.running.pop(name, (None, None))
        if shown is not None:
            self.seconds[shown] = max(self.seconds.get(shown, 0.0), self.now() - since)
        if name in self.left:
            self.left[name] -= 1

    def slowest(self, n: int = 8) -> list[tuple[str, float]]:
        return sorted(self.seconds.items(), key=lambda item: -item[1])[:n]

    # -- the lines
    def line(self) -> str:
        done, total = sum(self.total.values()) - sum(self.left.values()), sum(self.total.values())
        text = f"operations done: {done} of {total}"
        # the host on the same operation for longest, when that is long
        now = self.now()
        longest = max(self.running.items(), key=lambda r: (now - r[1][1], r[0]), default=None)
        if longest and now - longest[1][1] >= self.every:
            name, (shown, since) = longest
            text += f"; {name} on {shown} for {now - since:.0f} s"
        # the hosts with most left first
        behind = sorted(((left, n) for n, left in self.left.items() if left > 0), key=lambda b: (-b[0], b[1]))
        per_host = ", ".join(f"{n} {self.total[n] - left}/{self.total[n]}" for left, n in behind[:4])
        more = f" and {len(behind) - 4} more" if len(behind) > 4 else ""
        return text + (f"; done per host: {per_host}{more}" if per_host else "")

    def _tick(self) -> None:
        while True:
            gevent.sleep(1.0)
            if self.now() - self.said >= self.every:
                self.said = self.now()
                self.say(self.line())

    def __enter__(self) -> "Progress":
        self._ticker = gevent.spawn(self._tick)
        return self

    def __exit__(self, *exc) -> None:
        if self._ticker is not None:
            self._ticker.kill()
