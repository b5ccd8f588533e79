"""hastack.ci: what the CI workflows ask of the repository (the stacks a change touches, the
environments' protection, the stack's CA from a secret, the pull request's comment, the
scheduled checks' issues). The workflows themselves: tests/templates/test_workflows.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hastack import ci

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ which stacks


def test_the_cloud_stacks_are_every_stack_file_but_the_lab_and_the_example():
    assert ci.cloud_stacks() == ["staging", "prod", "dr"]
    assert ci.cloud_stacks(rev="HEAD") == ci.cloud_stacks() or _stacks_changed_since_head()


def _stacks_changed_since_head() -> bool:
    return bool(subprocess.run(["git", "status", "--porcelain", "stacks"], cwd=ROOT, capture_output=True,
                               text=True).stdout.strip())


def test_production_goes_last():
    assert ci.deploy_order(["prod", "dr", "staging", "qa", "prod"]) == ["qa", "staging", "prod", "dr"]


CLOUD = ["staging", "prod", "dr"]


@pytest.mark.parametrize("changed,stacks", [
    (["stacks/Pulumi.prod.yaml"], ["prod"]),
    (["stacks/Pulumi.prod.yaml", "stacks/Pulumi.staging.yaml"], ["staging", "prod"]),
    (["stacks/Pulumi.lab.yaml"], []),
    (["stacks/Pulumi.example.yaml"], []),
    (["README.md", "tests/unit/test_cli.py", "scripts/measure_lab.py"], []),
    (["hastack/model/schema.py"], CLOUD),
    (["hastack/lab/machines.py"], CLOUD),
    (["roles/mariadb/deploy.py"], CLOUD),
    (["templates/base/etc/nftables.conf.j2", "stacks/Pulumi.prod.yaml"], CLOUD),
    (["policy/PulumiPolicy.yaml"], CLOUD),
    (["__main__.py"], CLOUD),
    (["Pulumi.yaml"], CLOUD),
    (["pyproject.toml"], CLOUD),
    (["constraints.txt"], CLOUD),
    (["Makefile"], CLOUD),
])
def test_a_change_touches_its_stack_files_or_with_code_every_cloud_stack(changed, stacks):
    assert ci.touched_stacks(changed, CLOUD).stacks == stacks


def test_paths_that_only_look_like_code_are_not_code():
    assert ci.touched_stacks(["hastack-notes.md", "rolesX/a.py", "docs/Pulumi.yaml"], CLOUD).stacks == []


def test_a_removed_stack_file_is_reported_never_selected():
    touched = ci.touched_stacks(["stacks/Pulumi.qa.yaml"], CLOUD)
    assert touched.stacks == [] and touched.removed == ["qa"]


@pytest.fixture
def repo(tmp_path):
    """A small git repository shaped like this one: two cloud stacks, a lab stack, the example, code."""
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                       env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
                                GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com"))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                              text=True).stdout.strip()

    (tmp_path / "stacks").mkdir()
    (tmp_path / "hastack").mkdir()
    for name, text in {"prod": "config:\n  hastack:locations: [nbg1]\n",
                       "staging": "config:\n  hastack:locations: [fsn1]\n",
                       "lab": "config:\n  hastack:provider: lab   # the local lab\n",
                       "example": "config:\n  hastack:provider: hetzner\n"}.items():
        (tmp_path / "stacks" / f"Pulumi.{name}.yaml").write_text(text)
    (tmp_path / "hastack" / "cli.py").write_text("x = 1\n")
    git("init", "-q", "-b", "main")
    git("add", ".")
    shas = {"first": git("commit", "-q", "-m", "first")}
    (tmp_path / "stacks" / "Pulumi.staging.yaml").write_text("config:\n  hastack:locations: [hel1]\n")
    git("add", ".")
    shas["staging"] = git("commit", "-q", "-m", "staging moves")
    (tmp_path / "hastack" / "cli.py").write_text("x = 2\n")
    git("add", ".")
    shas["code"] = git("commit", "-q", "-m", "code")
    git("checkout", "-q", "-b", "side", shas["first"])
    (tmp_path / "stacks" / "Pulumi.prod.yaml").write_text("config:\n  hastack:locations: [fsn1]\n")
    git("add", ".")
    shas["side"] = git("commit", "-q", "-m", "not on main")
    git("checkout", "-q", "main")
    return tmp_path, shas


def test_selection_from_git_history(repo):
    root, shas = repo
    assert ci.cloud_stacks(root) == ["staging", "prod"]
    touched, _ = ci.select_stacks(shas["first"], shas["staging"], False, None, None, root)
    assert touched.stacks == ["staging"]
    touched, _ = ci.select_stacks(shas["staging"], shas["code"], False, None, None, root)
    assert touched.stacks == ["staging", "prod"] and "hastack/cli.py" in touched.reason
    # a pull request's change is what its branch did since it left main, not what main did since
    touched, _ = ci.select_stacks(shas["code"], shas["side"], False, None, None, root)
    assert touched.stacks == ["prod"]


def test_without_an_earlier_commit_to_compare_every_cloud_stack(repo):
    root, shas = repo
    touched, _ = ci.select_stacks("0" * 40, shas["code"], False, None, None, root)
    assert touched.stacks == ["staging", "prod"]
    touched, _ = ci.select_stacks("f" * 40, shas["code"], False, None, None, root)  # a force push's lost commit
    assert touched.stacks == ["staging", "prod"] and "cannot compare" in touched.reason


def test_named_stacks_at_a_commit_of_the_branch(repo):
    root, shas = repo
    touched, sha = ci.select_stacks(None, None, False, "prod", shas["first"], root)
    assert touched.stacks == ["prod"] and sha == shas["first"]
    touched, sha = ci.select_stacks(None, None, False, "prod, staging", "HEAD~1", root)
    assert touched.stacks == ["staging", "prod"] and sha == shas["staging"]


def test_named_stacks_refuses_a_commit_off_the_branch_and_what_is_no_cloud_stack(repo):
    root, shas = repo
    with pytest.raises(ci.CIError, match="not a commit of the checked-out branch"):
        ci.select_stacks(None, None, False, "prod", shas["side"], root)
    with pytest.raises(ci.CIError, match="not a cloud stack: lab"):
        ci.select_stacks(None, None, False, "lab", None, root)
    with pytest.raises(ci.CIError, match="not a cloud stack at HEAD: example, nope"):
        ci.select_stacks(None, None, False, "example,nope", "HEAD", root)
    with pytest.raises(ci.CIError):
        ci.select_stacks(None, None, False, "prod", "no-such-ref", root)


def test_stacks_command_writes_the_job_outputs(repo, tmp_path, monkeypatch, capsys):
    root, shas = repo
    out = tmp_path / "github-output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    monkeypatch.setattr(ci, "PROJECT_DIR", root)
    assert ci.main(["stacks", "--only", "staging", "--ref", shas["staging"], "--github-output"]) == 0
    lines = out.read_text().splitlines()
    assert lines == ['stacks=["staging"]', "count=1", f"sha={shas['staging']}"]
    assert "stacks: staging" in capsys.readouterr().out


def test_stacks_command_runs_on_the_standard_library_alone():
    """The stack selection and the comment jobs install nothing: `python3 -S` has no site-packages."""
    proc = subprocess.run([sys.executable, "-S", "-m", "hastack.ci", "stacks", "--all"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("stacks: staging, prod, dr")


def test_a_refusal_is_an_annotation_in_github_actions(monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    assert ci.main(["stacks", "--only", "lab"]) == 1
    assert capsys.readouterr().out.startswith("::error::not a cloud stack: lab")
    monkeypatch.delenv("GITHUB_ACTIONS")
    assert ci.main(["stacks", "--only", "lab"]) == 1
    assert capsys.readouterr().err.startswith("error: not a cloud stack: lab")


# ------------------------------------------------------------------ environments


def env(branch_policy=True, reviewers=0):
    rules = [{"type": "branch_policy"}] if branch_policy else []
    if reviewers:
        rules.append({"type": "required_reviewers", "reviewers": [{"type": "User"}] * reviewers})
    return {"name": "x", "protection_rules": rules,
            "deployment_branch_policy": {"protected_branches": True, "custom_branch_policies": False}
            if branch_policy else None}


def fake_api(envs):
    asked = []

    def fetch(path):
        asked.append(path)
        return envs.get(path.rsplit("/", 1)[1])
    return fetch, asked


def test_protected_environments_pass():
    fetch, asked = fake_api({"staging": env(), "prod": env(reviewers=1)})
    assert ci.environment_problems("o/r", ["staging", "prod"], ["prod"], fetch=fetch) == []
    assert asked == ["/repos/o/r/environments/staging", "/repos/o/r/environments/prod"]


def test_a_missing_environment_is_refused_since_github_would_create_it_unprotected():
    fetch, _ = fake_api({"staging": env()})
    [problem] = ci.environment_problems("o/r", ["staging", "prod"], ["prod"], fetch=fetch)
    assert "'prod' does not exist" in problem and "unprotected" in problem


def test_production_without_reviewers_and_an_environment_open_to_every_branch_are_refused():
    fetch, _ = fake_api({"staging": env(branch_policy=False), "prod": env()})
    problems = ci.environment_problems("o/r", ["staging", "prod"], ["prod"], fetch=fetch)
    assert len(problems) == 2
    assert "'staging' may be used from any branch" in problems[0]
    assert "'prod' has no required reviewers" in problems[1]


def test_check_environments_must_not_wait_for_a_reviewer():
    fetch, asked = fake_api({"prod-checks": env(reviewers=1), "staging-checks": env()})
    [problem] = ci.environment_problems("o/r", ["staging", "prod"], [], "-checks", fetch=fetch)
    assert "'prod-checks' requires a reviewer" in problem
    assert asked[0] == "/repos/o/r/environments/staging-checks"


def test_environments_command_exits_1_with_every_problem(monkeypatch, capsys):
    monkeypatch.setattr(ci, "github_api", lambda path: None)
    monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
    assert ci.main(["environments", "--stacks", '["staging", "prod"]', "--approval", "prod"]) == 1
    out = capsys.readouterr().out
    assert out.count("::error::") == 2 and "'staging' does not exist" in out


# ------------------------------------------------------------------ outcomes, the comment, reports


def test_outcomes_are_recorded_and_a_failure_fails(tmp_path, capsys):
    assert ci.main(["outcome", "--dir", str(tmp_path), "validate=success", "preview=skipped"]) == 0
    assert (tmp_path / "validate.outcome").read_text() == "success\n"
    assert ci.main(["outcome", "--dir", str(tmp_path), "plan=failure"]) == 1
    assert "::error::failed: plan" in capsys.readouterr().out
    # an empty outcome: the workflow names a step id that does not exist
    assert ci.main(["outcome", "--dir", str(tmp_path), "plann="]) == 1


PREVIEW = """\x1b[1mPreviewing update (prod):\x1b[0m

  pulumi:pulumi:Stack: (same)
    [urn=urn:pulumi:prod::hastack::pulumi:pulumi:Stack::hastack-prod]
    ~ hcloud:index/firewall:Firewall: (update)
        [id=1234]
        [urn=urn:pulumi:prod::hastack::hcloud:index/firewall:Firewall::fw-app]
      ~ rules: [
          ~ [0]: {
                  ~ sourceIps: [
                      + [1]: "198.51.100.7/32"
                    ]
                }
        ]
Policies:
    \u2705 hastack@v0.0.1 (local: policy)

Outputs:
    floatingIp: "203.0.113.10"

Resources:
    ~ 1 to update
    +-1 to replace
    76 unchanged

Duration: 12s
"""

PREVIEW_DRIFT = PREVIEW.replace("Duration: 12s\n", "") + """
Diagnostics:
  pulumi:pulumi:Stack (hastack-prod):
    error: no changes were expected but changes were proposed
""" + "".join(f"    more {i}\n" for i in range(60))


def test_the_preview_summary_is_the_policy_verdict_the_counts_and_the_errors():
    summary = ci.preview_summary(PREVIEW)
    assert summary.splitlines() == ["Policies:", "    \u2705 hastack@v0.0.1 (local: policy)", "",
                                    "Resources:", "    ~ 1 to update", "    +-1 to replace", "    76 unchanged", "",
                                    "Duration: 12s"]
    assert ci.resource_counts(PREVIEW) == "~1 to update, +-1 to replace, 76 unchanged"
    drift = ci.preview_summary(PREVIEW_DRIFT)
    assert "error: no changes were expected but changes were proposed" in drift
    # 40 lines of diagnostics: its two first lines, then 38 more
    assert "more 37" in drift and "more 38" not in drift and "the rest is in the job's log" in drift
    assert "\x1b" not in drift and "floatingIp" not in drift


def test_plan_verdict():
    assert ci.plan_verdict("...\npolicy: 16 rules, 0 violations\n") == "16 rules, 0 violations"
    assert ci.plan_verdict("policy: 16 rules, 1 violation (the policy pack refuses...)") == "16 rules, 1 violation"


def test_a_fence_cannot_be_closed_by_what_it_holds_and_long_text_is_cut():
    text = "before\n~~~~\n```\nafter"
    fenced = ci.fence(text, 1000)
    assert fenced.startswith("~~~~~\n") and fenced.endswith("\n~~~~~")
    long = ci.fence("\n".join(f"line {i}" for i in range(10000)), 3000)
    assert len(long) < 3200 and "line 0" in long and "line 9999" in long and "lines cut" in long


def write_results(results: Path, stack: str, plan: str, preview: str | None, outcomes: dict):
    d = results / stack
    d.mkdir(parents=True)
    (d / "validate.txt").write_text(f"stack {stack}: 13 hosts\n")
    (d / "plan.txt").write_text(plan)
    if preview is not None:
        (d / "preview.txt").write_text(preview)
    for step, outcome in outcomes.items():
        (d / f"{step}.outcome").write_text(outcome + "\n")


def test_the_pull_request_comment(tmp_path):
    results = tmp_path / "results"
    ok = {"validate": "success", "plan": "success", "preview": "success"}
    write_results(results, "prod", "Resources ...\npolicy: 16 rules, 0 violations\n", PREVIEW, ok)
    write_results(results, "staging", "policy: 16 rules, 1 violation\n  - eu-locations-only: ...\n", None,
                  {"validate": "success", "plan": "failure", "preview": "skipped"})
    (results / "staging" / "preview.note").write_text("no Pulumi backend credentials\n")
    body = ci.pr_comment(results, "https://github.example/o/r/actions/runs/1", "0123456789abcdef0123")
    lines = body.splitlines()
    assert lines[0] == ci.COMMENT_MARKER
    assert "commit `0123456789ab`" in body and "runs/1" in body
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| stack")]
    assert rows[0] == "| staging | \u2705 success | \u274c 16 rules, 1 violation | \u23ed\ufe0f not run: no Pulumi backend credentials |"
    assert rows[1] == ("| prod | \u2705 success | \u2705 16 rules, 0 violations "
                       "| \u2705 ~1 to update, +-1 to replace, 76 unchanged |")
    assert body.index("### staging") < body.index("### prod")
    assert "76 unchanged" in body.split("### prod")[1]


def test_the_comment_stays_under_githubs_limit(tmp_path):
    results = tmp_path / "results"
    huge = "".join(f"\u2502 aws:iam/user:User {i:>90} \u2502\n" for i in range(5000)) + "policy: 16 rules, 0 violations\n"
    for stack in ("staging", "prod", "dr"):
        write_results(results, stack, huge, PREVIEW_DRIFT * 50, {"validate": "success", "plan": "success",
                                                                 "preview": "failure"})
    body = ci.pr_comment(results)
    assert len(body) < 65536
    assert body.count("lines cut") >= 3
    assert all(f"### {s}" in body for s in ("staging", "prod", "dr"))


def test_a_change_without_stacks_says_so(tmp_path):
    body = ci.pr_comment(tmp_path / "no-results")
    assert body.startswith(ci.COMMENT_MARKER + "\n") and "touches no cloud stack" in body


def test_comment_command(tmp_path, monkeypatch):
    write_results(tmp_path / "r", "prod", "policy: 16 rules, 0 violations\n", None,
                  {"validate": "success", "plan": "success", "preview": "skipped"})
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    assert ci.main(["comment", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "c.md"), "--sha", "abc"]) == 0
    text = (tmp_path / "c.md").read_text()
    assert "[workflow run](https://github.com/o/r/actions/runs/42)" in text and "| prod |" in text


def test_a_drift_report(tmp_path):
    (tmp_path / "preview.txt").write_text(PREVIEW_DRIFT)
    (tmp_path / "preview.outcome").write_text("failure\n")
    (tmp_path / "converge.txt").write_text("converge: 0 changes\n")
    (tmp_path / "converge.outcome").write_text("success\n")
    r = ci.report("drift", "prod", tmp_path, "https://run")
    assert not r["ok"] and r["title"] == "Drift in stack prod"
    assert r["marker"] == "<!-- hastack:report:drift:prod -->" and r["body"].startswith(r["marker"] + "\n")
    assert "drift: changes found" in r["body"] and "### preview" in r["body"] and "### converge" not in r["body"]
    (tmp_path / "preview.txt").write_text("error: failed to decrypt the stack's secrets\n")
    assert "failed to run (see below)" in ci.report("drift", "prod", tmp_path)["body"]


def test_a_clean_check_and_one_that_did_not_run(tmp_path):
    for step in ("preview", "converge"):
        (tmp_path / f"{step}.outcome").write_text("success\n")
    assert ci.report("drift", "prod", tmp_path)["ok"]
    (tmp_path / "converge.outcome").write_text("skipped\n")
    r = ci.report("drift", "prod", tmp_path)
    assert not r["ok"] and r["title"] == "The drift check did not run for stack prod"
    r = ci.report("backup-verify", "staging", tmp_path / "nothing")
    assert not r["ok"] and "did not run" in r["title"] and "No step left any output" in r["body"]


def test_report_command_writes_report_json(tmp_path):
    (tmp_path / "verify.outcome").write_text("failure\n")
    (tmp_path / "verify.txt").write_text("FAILED: table shop.orders: 10 rows, the backup recorded 11\n")
    assert ci.main(["report", "--kind", "backup-verify", "--stack", "prod", "--dir", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["title"] == "Backup restore verification failed in stack prod" and "shop.orders" in r["body"]
