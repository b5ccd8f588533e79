"""Prometheus alert rules: the stack's and the external uptime Prometheus's, rendered with variables
from roles.monitoring.rules, checked by `promtool check rules` and unit-tested by `promtool test rules`
against tests/templates/rules/*.yml (every alert both firing and not firing)."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hastack.templating import render
from roles.monitoring import rules as r
from tests.templates.test_loadbalancer_templates import need

PROMTOOL_TESTS = Path(__file__).resolve().parent / "rules"
# the values the promtool tests assume (tests/templates/rules/*.yml)
STACK_VARS = r.rules_vars(sentinel_quorum=2, mariadb_hosts=2, cassandra_nodes=3)
SITE_URL = "https://www.example.com/"
# an action names something to run: a command in backquotes
COMMAND = re.compile(r"`[a-z][^`]+`")


def _render_all(directory: Path, **stack_vars) -> dict[str, Path]:
    files = {
        "hastack.rules.yml": render("monitoring", r.RULES_FILE, **(stack_vars or STACK_VARS)),
        "uptime.rules.yml": render("monitoring", r.UPTIME_RULES_FILE, **r.uptime_rules_vars(SITE_URL)),
    }
    for name, text in files.items():
        (directory / name).write_text(text)
    return {name: directory / name for name in files}


def _alert_rules(path: Path) -> list[dict]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def _promtool(*args, cwd=None):
    proc = subprocess.run([need("promtool"), *args], capture_output=True, text=True, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_rules_pass_promtool_check(tmp_path):
    paths = _render_all(tmp_path)
    _promtool("check", "rules", *map(str, paths.values()))


def test_rules_pass_their_promtool_unit_tests(tmp_path):
    _render_all(tmp_path)
    tests = sorted(PROMTOOL_TESTS.glob("*.yml"))
    assert tests, f"no promtool tests in {PROMTOOL_TESTS}"
    for test in tests:  # rule_files in the tests name the rendered files next to them
        shutil.copy(test, tmp_path / test.name)
    _promtool("test", "rules", *(t.name for t in tests), cwd=tmp_path)


def test_every_alert_says_how_long_how_bad_what_and_what_to_do(tmp_path):
    for path in _render_all(tmp_path).values():
        for rule in _alert_rules(path):
            name = rule["alert"]
            assert "for" in rule, f"{name}: no `for`"
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
            assert rule["annotations"]["summary"].strip(), f"{name}: no summary"
            assert COMMAND.search(rule["annotations"]["action"]), f"{name}: the action names no command"


def test_alerts_match_the_catalogue(tmp_path):
    paths = _render_all(tmp_path)
    names = {rule["alert"] for path in paths.values() for rule in _alert_rules(path)}
    assert names == set(r.ALERTS)
    assert all(description.strip() and "\n" not in description for description in r.ALERTS.values())


def test_every_alert_has_a_firing_and_a_not_firing_promtool_case():
    firing, quiet = set(), set()
    for test in PROMTOOL_TESTS.glob("*.yml"):
        for case in yaml.safe_load(test.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(r.ALERTS) - firing == set(), "alerts never tested firing"
    assert set(r.ALERTS) - quiet == set(), "alerts never tested not firing"
    assert (firing | quiet) - set(r.ALERTS) == set(), "tests of alerts that do not exist"


def test_alerts_about_one_host_keep_its_host_label(tmp_path):
    """Alertmanager inhibits a down host's other alerts by `host`: aggregations must not drop it."""
    fleet_wide = {"LoadBalancerFloatingIPOwners", "MariaDBNoWriter", "MariaDBTwoWriters", "RedisNoPrimary",
                  "RedisSentinelQuorumLost", "BackupTooOld", "SiteDown"}
    rules = _alert_rules(_render_all(tmp_path)["hastack.rules.yml"])
    for rule in rules:
        if rule["alert"] in fleet_wide:
            continue
        expr = rule["expr"]
        aggregates = re.findall(r"\b(?:sum|count|min|max|avg)\s+by\s*\(([^)]*)\)", expr)
        assert all("host" in by or "server" in by for by in aggregates), rule["alert"]
        assert not re.search(r"\b(?:sum|count|min|max|avg)\s*\(", expr), rule["alert"]


@pytest.mark.parametrize("quorum", [0, 2])
def test_sentinel_rule_follows_the_quorum(quorum, tmp_path):
    paths = _render_all(tmp_path, **r.rules_vars(sentinel_quorum=quorum, mariadb_hosts=2, cassandra_nodes=3))
    _promtool("check", "rules", str(paths["hastack.rules.yml"]))
    sentinel = [rule for rule in _alert_rules(paths["hastack.rules.yml"]) if rule["alert"] == "RedisSentinelQuorumLost"]
    if quorum:
        assert len(sentinel) == 1 and sentinel[0]["expr"].rstrip().endswith(f"< {quorum}")
    else:
        assert sentinel == []


def test_counts_reach_the_never_backed_up_rules(tmp_path):
    paths = _render_all(tmp_path, **r.rules_vars(sentinel_quorum=3, mariadb_hosts=2, cassandra_nodes=5))
    exprs = [rule["expr"] for rule in _alert_rules(paths["hastack.rules.yml"]) if rule["alert"] == "BackupTooOld"]
    assert any('kind="mariadb-full"' in e and e.rstrip().endswith("< 2") for e in exprs)
    assert any('kind="cassandra-snapshot"' in e and e.rstrip().endswith("< 5") for e in exprs)
