"""The wait for Debian's MariaDB upgrade after a start (roles.mariadb.config.wait_for_upgrade), run by a
real shell against a process with the command line Debian's mariadb.service gives it.

Each shell runs in a PID namespace of its own, with its own /proc: pgrep there sees only the processes
the test started, never a MariaDB upgrade of a lab machine starting on the same host meanwhile."""

import subprocess
import time

from roles.mariadb.config import WAIT_FOR_UPGRADE, wait_for_upgrade

OWN_PIDS = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"]
# a process whose command line is that of /etc/mysql/debian-start's background subshell, for $1 seconds;
# then the wait ($2), run by sh as a host runs it
SCRIPT = ('if [ "$1" -gt 0 ]; then bash -c "exec -a \\"/bin/bash /etc/mysql/debian-start\\" sleep $1" & '
          'sleep 0.2; fi; exec sh -c "$2"')


def wait(upgrade_seconds: int, command: str) -> tuple[subprocess.CompletedProcess, float]:
    """``command`` in a PID namespace of its own, with an upgrade running for ``upgrade_seconds`` (0: none);
    the result and the seconds the command took."""
    started = time.monotonic()
    done = subprocess.run([*OWN_PIDS, "bash", "-c", SCRIPT, "wait", str(upgrade_seconds), command],
                          capture_output=True, text=True, timeout=30)
    return done, time.monotonic() - started - (0.2 if upgrade_seconds else 0)


def test_it_waits_for_the_upgrade_to_end():
    done, waited = wait(2, WAIT_FOR_UPGRADE)
    assert done.returncode == 0, done.stderr
    assert waited >= 1.5  # it did not go on while the upgrade ran


def test_it_goes_on_at_once_when_no_upgrade_runs():
    done, waited = wait(0, WAIT_FOR_UPGRADE + " && echo next")
    assert done.returncode == 0 and done.stdout.strip() == "next", done.stderr
    assert waited < 1.5  # its own command line never matches


def test_an_upgrade_that_does_not_end_is_an_error_not_a_guess():
    done, _ = wait(30, wait_for_upgrade(1) + " && echo next")
    assert done.returncode == 1 and "next" not in done.stdout
    assert "still running after 1 s" in done.stderr
