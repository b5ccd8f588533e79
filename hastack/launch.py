"""The `hastack` program's entry point.

pyinfra runs every host in a greenlet of its own; they talk to their hosts at
the same time only once sockets, threads and sleeps are gevent's (what the
`pyinfra` command does first). Without it each host waits for the one before
to answer, and a converge of a dozen hosts costs a dozen round trips per step.
So the program makes them gevent's before anything opens a socket or starts a
thread, then runs the command line. (The Pulumi program does not: its gRPC
runtime needs real threads.)
"""


def cooperative() -> None:
    """Sockets, threads and sleeps made gevent's, in this process (before SSH connections are made)."""
    from gevent import monkey

    monkey.patch_all()


def main() -> None:
    cooperative()
    from hastack.cli import app

    app()
