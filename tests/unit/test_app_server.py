"""The reference application's server (roles/app/files/app.py) as its own process: a client that goes away
before its answer is written, as the load balancers' health checks do, leaves no traceback in its log."""

import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import roles.app as app_role
from tests.support.lab import wait_for

APP = Path(app_role.__file__).parent / "files" / "app.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hang_up(port: int) -> None:
    """A request, then a reset at once (SO_LINGER 0), before the answer is read."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")


def test_clients_that_hang_up_leave_no_traceback_and_the_server_goes_on(tmp_path):
    port = free_port()
    log = tmp_path / "app.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, str(APP)], stdout=out, stderr=subprocess.STDOUT,
                                env={"HASTACK_PORT": str(port), "PATH": "/usr/bin:/bin"})
    try:
        wait_for(lambda: _answers(port), 15, "the application to answer")
        for _ in range(40):
            hang_up(port)
        time.sleep(0.5)
        assert _answers(port)
    finally:
        proc.kill()  # not its drain on SIGTERM: that has a test of its own (tests/templates/test_app_drain.py)
        proc.wait(30)
    assert "Traceback" not in log.read_text(), log.read_text()[-2000:]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:  # nosec B310  # a local test URL
            return r.status == 200
    except OSError:
        return False
