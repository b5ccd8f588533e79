"""Write roles/agent-requirements.txt: the agents' virtualenv (the Hetzner library and everything it
imports), each package pinned to one pure-Python wheel by its sha256.

Hosts install it with `pip install --require-hashes --no-deps --only-binary=:all:`, so a converge never
resolves a dependency and installs nothing but these files. Pure wheels: the same lock serves x86 and
Arm servers. Run after changing the pin below; review the diff like code.

    python scripts/lock_agent_requirements.py
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from roles.hcloud_agent import LOCK  # noqa: E402 - after the repository is on the path

TOP = ["hcloud==2.27.0"]  # what the agents import; the rest follows from it
PYTHON = "3.11"  # Debian 12's


def locked_lines(top: list[str]) -> list[str]:
    with tempfile.TemporaryDirectory() as dest:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                        "--only-binary=:all:", "--platform", "any", "--implementation", "py", "--abi", "none",
                        "--python-version", PYTHON, "--dest", dest, *top], check=True)
        lines = []
        for wheel in sorted(Path(dest).glob("*.whl"), key=lambda p: p.name.lower()):
            name, version = re.match(r"([^-]+)-([^-]+)-", wheel.name).groups()
            digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
            lines.append(f"{name.replace('_', '-').lower()}=={version} --hash=sha256:{digest}")
        return lines


def render(lines: list[str]) -> str:
    header = ("# The agents' virtualenv (/opt/hastack/venv): the Hetzner library and what it imports, each pinned\n"
              "# to one pure-Python wheel by its sha256; hosts install it with --require-hashes --no-deps.\n"
              "# Written by scripts/lock_agent_requirements.py from: " + " ".join(TOP) + "\n")
    return header + "\n".join(lines) + "\n"


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    text = render(locked_lines(TOP))
    LOCK.write_text(text)
    print(f"wrote {LOCK}: {len(text.splitlines()) - 3} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
