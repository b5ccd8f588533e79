"""The lab's host services: a slow start is waited for, a service that exits is reported at once."""

import socket
import sys
import time

import pytest

from hastack.lab import services
from hastack.lab.layout import Paths
from hastack.lab.system import LabError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_service_that_listens_late_is_waited_for(tmp_path):
    paths, port = Paths(tmp_path), _free_port()
    paths.run.mkdir(parents=True)
    # listens after 2 s, as a fresh clone's first start compiling its modules on a busy machine
    code = (f"import socket, time; time.sleep(2); s = socket.create_server(('127.0.0.1', {port})); "
            "time.sleep(30)")
    pid = services._start(paths, "late", [sys.executable, "-c", code])
    try:
        started = time.monotonic()
        services._wait_port(paths, "127.0.0.1", port, "late", timeout=20)
        assert 1.5 < time.monotonic() - started < 20
    finally:
        services.stop_service(paths, "late")
    assert pid


def test_a_service_that_exits_is_reported_at_once_with_its_log(tmp_path):
    paths, port = Paths(tmp_path), _free_port()
    paths.run.mkdir(parents=True)
    services._start(paths, "broken", [sys.executable, "-c", "import sys; sys.exit('bad configuration: port')"])
    started = time.monotonic()
    with pytest.raises(LabError, match="(?s)broken exited before listening .*bad configuration: port"):
        services._wait_port(paths, "127.0.0.1", port, "broken", timeout=60)
    assert time.monotonic() - started < 10
