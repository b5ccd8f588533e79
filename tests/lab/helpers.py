"""Shared by the lab tests."""

import time

import pytest


def wait_for(predicate, timeout, what):
    """Poll until ``predicate`` returns something true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")
