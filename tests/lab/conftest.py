"""The lab tests share one lab: brought up once, converged, and torn down by the last test. In a run
with other tests, it starts in the background while they run (tests/support/lab_start.py).

If the lab cannot start, every test here fails with the reason; none is skipped.
"""

import pytest

from hastack.lab import Lab, LabError
from tests.support import lab_start, vm_start

_state: dict = {}


@pytest.fixture(scope="session")
def lab(request):
    if "error" in _state:
        pytest.fail(f"the lab could not start: {_state['error']}")
    if "lab" not in _state:
        failed = lab_start.wait()  # a start in the background, while the tests without a lab ran
        if failed:
            _state["error"] = failed
            pytest.fail(f"the lab could not start: {failed}")
        try:
            lab = Lab("lab")
            result = lab.up(converge=True)
        except (LabError, OSError, RuntimeError) as e:
            _state["error"] = str(e)
            pytest.fail(f"the lab could not start: {e}")
        _state["lab"] = lab
        _state["first_converge"] = result["converge"]
        if any(item.path.name == "test_lab_vm_audit.py" for item in request.session.items):
            vm_start.begin(lab)  # boots while the tests before its own run
    return _state["lab"]


@pytest.fixture(scope="session")
def first_converge(lab):
    return _state["first_converge"]
