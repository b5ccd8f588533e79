import copy

import pytest

from hastack.stackfile import hastack_config, read_stack_file


@pytest.fixture
def prod_config():
    """The prod stack's hastack: config (prefix removed), a fresh copy per test."""
    flat, _ = read_stack_file("prod")
    return copy.deepcopy(hastack_config(flat))


@pytest.fixture
def prod_flat():
    flat, _ = read_stack_file("prod")
    return copy.deepcopy(flat)
