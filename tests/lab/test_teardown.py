"""The last lab tests: recovery from a crash, then teardown (this file runs after the others)."""

import os
import signal
import subprocess

from tests.lab.test_lab_base import ssh


def test_lab_up_recovers_after_a_crash(lab):
    # the lab's own processes die as in a crash of the operator's session
    victims = ["lab-redis2", "lab-mon1"]
    for name in victims:
        os.kill(lab.machine(name).nspawn_pid(), signal.SIGKILL)
    os.kill(int((lab.paths.run / "apt-cacher-ng.pid").read_text()), signal.SIGKILL)
    result = lab.up(converge=False)
    assert all(row["state"] == "running" for row in lab.status()), lab.status()
    assert result["timings"]["boot"] < 120
    for name in victims:
        assert ssh(lab, name).returncode == 0
        # exactly one systemd runs that machine (PID 1 of a PID namespace in its cgroup)
        assert len(_machine_inits(lab.machine(name))) == 1


def _machine_inits(machine):
    inits = []
    for pid in machine.orphans():  # every process of the machine
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue  # exited meanwhile
        if status.startswith("Name:\tsystemd\n") and status.split("NSpid:")[1].split("\n")[0].split()[-1] == "1":
            inits.append(pid)
    return inits


def test_lab_down_leaves_nothing_behind(lab):
    removed = lab.down()
    assert removed
    assert lab.leftovers() == []
    assert "hsl" not in subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
