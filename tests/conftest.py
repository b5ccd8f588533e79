import copy
import os
import tempfile
from pathlib import Path

import pytest

from hastack.stackfile import hastack_config, read_stack_file
from tests.support import lab_start

TESTS = Path(__file__).resolve().parent
# the directory a test lives in names its layer; the markers are registered in pyproject.toml
LAYERS = ("unit", "templates", "checks", "lab")
# the stacks' CA directories (pki/<stack>/) of this test run, never the checkout's; the hastack commands
# the tests start inherit it
os.environ["HASTACK_PKI_ROOT"] = tempfile.mkdtemp(prefix="hastack-test-pki-")


def pytest_collection_modifyitems(config, items):
    """Mark every test with its layer (`-m "unit or templates"`: no lab); a test outside the
    layer directories is an error rather than a test that `make check` would silently skip."""
    for item in items:
        parts = Path(item.path).resolve().relative_to(TESTS).parts
        layer = parts[0] if len(parts) > 1 else None
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: tests live in tests/unit, tests/templates, tests/checks or tests/lab")
        item.add_marker(getattr(pytest.mark, layer))
    # the lab's tests last (each file's in its order: the teardown test stays the last): the others run
    # while the lab starts
    items.sort(key=lambda item: item.get_closest_marker("lab") is not None)


def pytest_collection_finish(session):
    """A run of lab tests and others starts the lab now, in the background (tests/support/lab_start.py):
    the others run meanwhile, and the lab fixture waits for it. A lab test alone starts it in the fixture."""
    if session.config.option.collectonly or os.geteuid() != 0:
        return
    lab = [item.get_closest_marker("lab") is not None for item in session.items]
    if any(lab) and not all(lab):
        lab_start.begin()


def pytest_sessionfinish(session):
    lab_start.abandon()


@pytest.fixture
def prod_config():
    """The prod stack's hastack: config (prefix removed), a fresh copy per test."""
    flat, _ = read_stack_file("prod")
    return copy.deepcopy(hastack_config(flat))


@pytest.fixture
def prod_flat():
    flat, _ = read_stack_file("prod")
    return copy.deepcopy(flat)
