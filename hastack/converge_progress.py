"""What a converge is doing while its operations run: operations done and left per host, and, when one
operation takes long, which hosts it is waiting on.

pyinfra runs the operations in order, each on all its hosts in parallel; a long one (a package install, a
Cassandra node joining) used to leave the screen on "running N operations" for minutes.
"""

from __future__ import annotations

import time
from typing import Callable

import gevent
from pyinfra.api.state import BaseStateCallback


class Progress(BaseStateCallback):
    """A pyinfra state callback (``state.add_callback_handler``); ``say`` gets a line every ``every`` seconds
    at most, and one whenever an operation has been running for ``every`` seconds."""

    def __init__(self, state, say: Callable[[str], None], every: float = 10.0, now=time.monotonic):
        self.say, self.every, self.now = say, every, now
        self.order = state.get_op_order()
        self.left = {h.name: len(ops) for h, ops in state.ops.items() if ops}
        self.total = {**self.left}
        self.current: tuple[int, str] | None = None
        self.waiting: set[str] = set()
        self.started = self.said = now()
        self.op_started = self.started
        self.seconds: dict[str, float] = {}  # operation (as shown) -> how long it ran, on all its hosts
        self._ticker = None

    # -- pyinfra's callbacks (instance methods: pyinfra calls them with the state first)
    def operation_start(self, state, op_hash):
        index = self.order.index(op_hash) + 1 if op_hash in self.order else 0
        # one operation in the order may be a different one per role ("hastack | app | Local MariaDB proxy")
        names = sorted({n.removeprefix("hastack | ").replace(" | ", ": ", 1) for n in state.get_op_meta(op_hash).names})
        shown = ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")
        self.current = (index, shown or op_hash[:8])
        self.waiting = {h.name for h, ops in state.ops.items() if op_hash in ops}
        self.op_started = self.now()
        if self.now() - self.said >= self.every:
            self._say_where()

    def operation_end(self, state, op_hash):
        if self.current:
            self.seconds[self.current[1]] = self.seconds.get(self.current[1], 0.0) + self.now() - self.op_started

    def slowest(self, n: int = 8) -> list[tuple[str, float]]:
        return sorted(self.seconds.items(), key=lambda item: -item[1])[:n]

    def operation_host_success(self, state, host, op_hash, retry_count=0):
        self._host_done(host.name)

    def operation_host_error(self, state, host, op_hash, retry_count=0, max_retries=0):
        self._host_done(host.name)

    def _host_done(self, name: str) -> None:
        self.waiting.discard(name)
        if name in self.left:
            self.left[name] -= 1

    # -- the lines
    def line(self) -> str:
        index, name = self.current or (0, "")
        # the hosts with most left first
        behind = sorted(((left, n) for n, left in self.left.items() if left > 0), key=lambda b: (-b[0], b[1]))
        per_host = ", ".join(f"{n} {self.total[n] - left}/{self.total[n]}" for left, n in behind[:4])
        more = f" and {len(behind) - 4} more" if len(behind) > 4 else ""
        text = f"operation {index} of {len(self.order)} ({name})"
        running = self.now() - self.op_started
        if running >= self.every and self.waiting:
            waiting = ", ".join(sorted(self.waiting)) if len(self.waiting) <= 4 else f"{len(self.waiting)} hosts"
            text += f", {running:.0f} s so far, waiting on {waiting}"
        return text + (f"; done per host: {per_host}{more}" if per_host else "")

    def _say_where(self) -> None:
        self.said = self.now()
        self.say(self.line())

    def _tick(self) -> None:
        while True:
            gevent.sleep(1.0)
            if self.current and self.now() - self.said >= self.every:
                self._say_where()

    def __enter__(self) -> "Progress":
        self._ticker = gevent.spawn(self._tick)
        return self

    def __exit__(self, *exc) -> None:
        if self._ticker is not None:
            self._ticker.kill()
