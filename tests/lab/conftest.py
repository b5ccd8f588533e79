"""The lab tests share one lab: brought up once, converged, and torn down by the last test.

If the lab cannot start, every test here fails with the reason; none is skipped.
"""

import pytest

from hastack.lab import Lab, LabError

_state: dict = {}


@pytest.fixture(scope="session")
def lab():
    if "error" in _state:
        pytest.fail(f"the lab could not start: {_state['error']}")
    if "lab" not in _state:
        try:
            lab = Lab("lab")
            result = lab.up(converge=True)
        except (LabError, OSError, RuntimeError) as e:
            _state["error"] = str(e)
            pytest.fail(f"the lab could not start: {e}")
        _state["lab"] = lab
        _state["first_converge"] = result["converge"]
    return _state["lab"]


@pytest.fixture(scope="session")
def first_converge(lab):
    return _state["first_converge"]
