"""A converge's operations run host by host: each host runs its own operations in their order, without
waiting at each one for every other host.

pyinfra's default way runs one operation on all its hosts and waits for the slowest before the next one.
On a stack of several roles every role's slow step (a package install, a download) then waits for the
others', and a run takes the sum, over the operations, of the slowest host's time. Here each host goes on at
its own pace, and a run takes about the busiest host's time.

Roles run on a host in one order (roles.ALL_ROLES), so what a role needs of its own host is done before it
starts, as before. What it needs of *other* hosts while it runs is rare and said where it is needed: an
operation marked with ``in_step`` runs on a host only once every host that has it has run every operation
before it, which is what pyinfra's own way gives every operation (a MariaDB master copies its peer only
once the peer has been set up and initialised).
"""

from __future__ import annotations

from typing import Callable

import gevent
from pyinfra import state as current_state
from pyinfra.api.operations import run_host_op
from pyinfra.context import ctx_host, ctx_state

IN_STEP = "hastack_in_step"  # the State's attribute: the hashes of the operations marked in_step
WAIT_POLL = 0.1  # seconds between two looks at the other hosts, for a host waiting at an in_step operation


def in_step(op):
    """Mark ``op`` (what a pyinfra operation returned): it runs on a host only once every host that has it
    has run every operation before it. Returns ``op``."""
    state = current_state._get_module()  # the converge's State, not pyinfra's context proxy
    steps = getattr(state, IN_STEP, None)
    if steps is None:
        steps = set()
        setattr(state, IN_STEP, steps)
    steps.add(op._hash)
    return op


def run_each_host(state, when_done: Callable[[object, bool], None] | None = None) -> None:
    """Run the prepared operations of every active host, each host in its own greenlet; a host whose
    operation fails stops there and is failed afterwards (as pyinfra does, FAIL_PERCENT applies).
    ``when_done(host, ok)`` is called as each host's run ends, ``ok`` when it ran every operation."""
    order = state.get_op_order()
    steps = getattr(state, IN_STEP, set())
    hosts = list(state.inventory.get_active_hosts())
    # the index in ``order`` of the operation each host is at: every one before it is done (or not its own)
    at = {h: 0 for h in hosts}
    failed = set()

    def caught_up(host, i: int, op_hash: str) -> bool:
        return all(at[other] >= i for other in hosts if other is not host and op_hash in state.ops[other])

    def run(host) -> None:
        ok = False
        try:
            with ctx_host.use(host):
                for i, op_hash in enumerate(order):
                    at[host] = i
                    if op_hash not in state.ops[host]:
                        continue
                    if op_hash in steps:
                        while not caught_up(host, i, op_hash):
                            gevent.sleep(WAIT_POLL)
                    if not run_host_op(state, host, op_hash):
                        failed.add(host)
                        return
            ok = True
        finally:
            at[host] = len(order)  # done, failed or stopped: no host waits for it any more
            if when_done is not None:
                when_done(host, ok)

    state.is_executing = True
    with ctx_state.use(state):
        greenlets = [state.pool.spawn(run, h) for h in hosts]
        gevent.joinall(greenlets)
    state.fail_hosts(failed)
    for g in greenlets:
        g.get()  # an exception in a host's run (not a failed operation: a fault) is raised here
