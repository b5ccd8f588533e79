"""The agents' lock (roles/agent-requirements.txt): every package pinned to one version and one wheel
hash, so `pip install --require-hashes --no-deps` on a host installs exactly these files."""

import re

from roles.hcloud_agent import LOCK, locked_version

LINE = re.compile(r"^([a-z0-9][a-z0-9.-]*)==([0-9][0-9A-Za-z.+-]*) --hash=sha256:([0-9a-f]{64})$")


def entries() -> list[re.Match]:
    lines = [line for line in LOCK.read_text().splitlines() if line and not line.startswith("#")]
    matches = [LINE.match(line) for line in lines]
    assert all(matches), [line for line, m in zip(lines, matches, strict=True) if not m]
    return matches


def test_every_package_has_one_version_and_a_sha256():
    names = [m.group(1) for m in entries()]
    assert len(names) == len(set(names)), names
    # what hcloud imports is locked too: --no-deps would leave it out otherwise
    assert {"hcloud", "requests", "urllib3", "idna", "certifi", "charset-normalizer", "python-dateutil"} <= set(names)


def test_the_locked_hcloud_is_the_one_the_agents_are_written_for():
    # the failover and writer agents reach into hcloud 2.27's client (retries, the TLS session)
    assert locked_version("hcloud") == "2.27.0"
