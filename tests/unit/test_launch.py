"""The hastack program's entry: every host at once, except where the Pulumi program runs in-process."""

from __future__ import annotations

import subprocess
import sys

from hastack.launch import needs_real_threads


def test_only_the_commands_running_the_pulumi_program_keep_real_threads():
    assert needs_real_threads(["hastack", "plan", "--stack", "prod"])
    assert not needs_real_threads(["hastack", "converge", "--stack", "prod"])
    assert not needs_real_threads(["hastack", "lab", "up"])
    assert not needs_real_threads(["hastack", "--help"])


def test_the_program_talks_to_hosts_through_gevents_sockets_and_plan_still_runs():
    probe = ("import sys; sys.argv = ['hastack', '--help']; from hastack import launch; launch.cooperative(); "
             "import socket, gevent.socket; print(socket.socket is gevent.socket.socket)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "True"
    plan = subprocess.run([sys.executable, "-m", "hastack.cli", "plan", "--stack", "staging"],
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0 and "0 violations" in plan.stdout, plan.stdout[-2000:] + plan.stderr[-2000:]
