"""The project's own code passes bandit with its config (pyproject.toml [tool.bandit]),
and that config still reports real findings."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE = ["hastack", "roles", "scripts", "policy", "__main__.py"]


def bandit(*targets: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bandit", "-q", "-c", "pyproject.toml", "-r", *targets, "-f", "json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    # bandit exits 1 when it reports something; anything else is its own failure
    assert proc.returncode in (0, 1), proc.stderr
    return json.loads(proc.stdout)


def test_the_code_passes_bandit():
    report = bandit(*CODE)
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert not findings, "bandit findings (fix, or `# nosec BXXX  # reason` on the line):\n" + "\n".join(findings)
    assert not report["errors"], report["errors"]
    # an empty scan (wrong directory, everything excluded) must not pass
    assert report["metrics"]["_totals"]["loc"] > 10000, report["metrics"]["_totals"]


def test_the_config_still_reports_real_findings(tmp_path):
    code = tmp_path / "unsafe.py"
    code.write_text("import pickle\nimport subprocess\n\nimport yaml\n\n\n"
                    "def f(s, data):\n"
                    "    subprocess.run(s, shell=True)\n"
                    "    return yaml.load(s), pickle.loads(data)\n")
    found = {r["test_id"] for r in bandit(str(code))["results"]}
    assert {"B602", "B506", "B301"} <= found, found
