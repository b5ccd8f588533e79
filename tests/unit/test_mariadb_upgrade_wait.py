"""The wait for Debian's MariaDB upgrade after a start (roles.mariadb.config.wait_for_upgrade), run by a
real shell against a process with the command line Debian's mariadb.service gives it."""

import subprocess
import time

from roles.mariadb.config import WAIT_FOR_UPGRADE, wait_for_upgrade


def debian_start(seconds: float) -> subprocess.Popen:
    """A process whose command line is that of /etc/mysql/debian-start's background subshell."""
    return subprocess.Popen(["bash", "-c", f'exec -a "/bin/bash /etc/mysql/debian-start" sleep {seconds}'])


def test_it_waits_for_the_upgrade_to_end():
    proc = debian_start(2)
    try:
        time.sleep(0.2)
        started = time.monotonic()
        done = subprocess.run(["sh", "-c", WAIT_FOR_UPGRADE], capture_output=True, text=True, timeout=30)
        waited = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
    assert done.returncode == 0, done.stderr
    assert waited >= 1.5  # it did not go on while the upgrade ran


def test_it_goes_on_at_once_when_no_upgrade_runs():
    started = time.monotonic()
    done = subprocess.run(["sh", "-c", WAIT_FOR_UPGRADE + " && echo next"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout.strip() == "next", done.stderr
    assert time.monotonic() - started < 1.5  # its own command line never matches


def test_an_upgrade_that_does_not_end_is_an_error_not_a_guess():
    proc = debian_start(30)
    try:
        time.sleep(0.2)
        done = subprocess.run(["sh", "-c", wait_for_upgrade(1) + " && echo next"], capture_output=True, text=True,
                              timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert done.returncode == 1 and "next" not in done.stdout
    assert "still running after 1 s" in done.stderr
