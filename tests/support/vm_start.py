"""The audit trail's virtual machine (hastack.lab.vm), created and booted in a thread as soon as the lab
is up: it boots while the other lab tests run (under emulation a boot takes minutes of one core, most of
it while those tests wait on failovers and restarts), and its tests, late in the run, find it ready."""

from __future__ import annotations

import threading

from hastack.lab.services import proxy_url
from hastack.lab.vm import VirtualMachine, vm_usable

NAME = "lab-vm1"
_state: dict = {}


def begin(lab) -> None:
    """Starts creating and booting the machine in the background (once)."""
    if "thread" in _state:
        return
    machine = VirtualMachine(lab.paths, lab.topo, NAME, proxy_url(lab.addr))

    def boot() -> None:
        try:
            problem = vm_usable()
            if problem:
                raise RuntimeError(problem)
            machine.create(log=lambda m: None)
            _state["boot_s"] = machine.start()
        except Exception as e:  # any failure: reported by the fixture that waits for it
            _state["error"] = f"{type(e).__name__}: {e}"

    _state["machine"] = machine
    _state["thread"] = threading.Thread(target=boot, name="lab-vm-start", daemon=True)
    _state["thread"].start()


def wait(lab, timeout: float = 1800) -> VirtualMachine:
    """The booted machine; raises with the reason when it could not be made."""
    begin(lab)
    _state["thread"].join(timeout)
    if _state["thread"].is_alive():
        raise RuntimeError(f"{NAME} was not up after {timeout:.0f} s")
    if "error" in _state:
        raise RuntimeError(_state["error"])
    return _state["machine"]
