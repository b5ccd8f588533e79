import copy
import os
import tempfile
from pathlib import Path

import pytest

from hastack.stackfile import hastack_config, read_stack_file

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


@pytest.fixture
def prod_config():
    """The prod stack's hastack: config (prefix removed), a fresh copy per test."""
    flat, _ = read_stack_file("prod")
    return copy.deepcopy(hastack_config(flat))


@pytest.fixture
def prod_flat():
    flat, _ = read_stack_file("prod")
    return copy.deepcopy(flat)
