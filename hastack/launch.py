"""The `hastack` program's entry point.

pyinfra runs every host in a greenlet of its own; they talk to their hosts at
the same time only once sockets, threads and sleeps are gevent's (what the
`pyinfra` command does first). Without it each host waits for the one before
to answer, and a converge of a dozen hosts costs a dozen round trips per step.
So the program makes them gevent's before anything opens a socket or starts a
thread, then runs the command line. Not for the commands that run the Pulumi
program in this process (`plan`): its runtime waits on real threads.
"""

import sys

PULUMI_IN_PROCESS = {"plan"}


def cooperative() -> None:
    """Sockets, threads and sleeps made gevent's, in this process (before SSH connections are made)."""
    from gevent import monkey

    monkey.patch_all()


def needs_real_threads(argv: list[str]) -> bool:
    """Whether the command in ``argv`` (the first word that is not an option) runs the Pulumi program here."""
    command = next((a for a in argv[1:] if not a.startswith("-")), None)
    return command in PULUMI_IN_PROCESS


def main() -> None:
    if not needs_real_threads(sys.argv):
        cooperative()
    from hastack.cli import app

    app()
