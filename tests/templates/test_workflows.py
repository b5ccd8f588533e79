"""The CI workflows (.github/workflows/), checked by the programs that read them.

- actionlint (with shellcheck for every `run:` script) must report nothing; a workflow with
  faults planted in it shows that it would. A missing actionlint or shellcheck is a failure
  naming the command that installs it (`make actionlint`, `make host-deps`), never a skip.
- The steps a workflow marks with HASTACK_LOCAL_RUN: "run" are run here for real, in order,
  by a small runner that gives them what GitHub Actions would (GITHUB_ENV, GITHUB_PATH,
  GITHUB_OUTPUT, RUNNER_TEMP, the workflow's and job's env), with the expressions they use
  replaced by the values in EXPRESSIONS below; each must exit 0. Steps marked "readme" must
  be a command the README gives (the install, the checks), and are not run: `make check`
  inside the test suite would run the suite again. Nothing that needs the cloud, a secret,
  SSH or root is marked: pulumi, the converge, status, the backups and the lab are not run.
- The JavaScript that posts the pull request's comment and the checks' issues runs under
  node against a stand-in for GitHub's API: one comment, updated, never a second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hastack import ci

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
SCRIPTS = ROOT / ".github" / "scripts"
README = ROOT / "README.md"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
SHA_PIN = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@[0-9a-f]{40}$")
# Actions whose commit this repository could not check offline: pinned by major version, and
# the README tells operators to pin them by commit (test_tag_pinned_actions_are_named_in_the_readme).
TAG_PINNED = {"pulumi/actions@v6", "aws-actions/configure-aws-credentials@v4"}


def workflow_files() -> list[Path]:
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    assert files, f"no workflows in {WORKFLOWS}"
    return files


def load(path: Path) -> dict:
    wf = yaml.safe_load(path.read_text())
    # PyYAML reads the key `on` as True (YAML 1.1)
    if True in wf:
        wf["on"] = wf.pop(True)
    return wf


def steps_of(wf: dict):
    for job_id, job in wf["jobs"].items():
        for i, step in enumerate(job.get("steps", [])):
            yield job_id, i, step


def local_mark(step: dict) -> str | None:
    return (step.get("env") or {}).get("HASTACK_LOCAL_RUN")


# ------------------------------------------------------------------ actionlint


def tool(name: str, install: str, extra: list[Path] = ()) -> str:
    for candidate in [*extra, shutil.which(name)]:
        if candidate and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"{name} is not installed; these tests check the workflows with it: {install}")


def actionlint() -> str:
    path = tool("actionlint", "`make actionlint` (no root; built from the Go module proxy)",
                [ROOT / ".venv" / "bin" / "actionlint", Path(sys.executable).parent / "actionlint"])
    wanted = re.search(r"^ACTIONLINT_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    got = subprocess.run([path, "-version"], capture_output=True, text=True).stdout.split("\n", 1)[0].strip()
    if got != wanted:
        pytest.fail(f"{path} is actionlint {got}, the Makefile pins {wanted}: run `make actionlint`")
    return path


def shellcheck() -> str:
    return tool("shellcheck", "`make host-deps` (as root) installs the Debian package shellcheck")


def run_actionlint(cwd: Path) -> subprocess.CompletedProcess:
    # -pyflakes= : no `run:` script here is Python; shellcheck is given by path, so it cannot be
    # left out silently (actionlint skips the scripts when it finds no shellcheck)
    return subprocess.run([actionlint(), "-no-color", f"-shellcheck={shellcheck()}", "-pyflakes="],
                          cwd=cwd, capture_output=True, text=True)


def test_actionlint_and_shellcheck_report_nothing():
    proc = run_actionlint(ROOT)
    assert proc.returncode == 0 and not proc.stdout.strip(), f"actionlint:\n{proc.stdout}{proc.stderr}"


def test_actionlint_would_report_a_fault(tmp_path):
    """The same run over a copy of the pull request workflow with faults planted: an unquoted
    variable (shellcheck's SC2086), an untrusted expression in a script, an unknown job key."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(ROOT / ".github" / "actionlint.yaml", tmp_path / ".github" / "actionlint.yaml")
    text = (WORKFLOWS / "pull-request.yml").read_text()
    text = text.replace('run: hastack validate --stack "$STACK"', "run: hastack validate --stack $STACK", 1)
    text = text.replace("    timeout-minutes: 5\n", "    timeout-minutes: 5\n    timeout: 5\n", 1)
    text = text.replace("run: make install", "run: echo ${{ github.event.pull_request.title }}", 1)
    (tmp_path / ".github" / "workflows" / "pull-request.yml").write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    proc = run_actionlint(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "SC2086" in proc.stdout, proc.stdout
    assert "potentially untrusted" in proc.stdout, proc.stdout
    assert 'unexpected key "timeout"' in proc.stdout, proc.stdout


# ------------------------------------------------------------------ rules of the house


def test_expressions_reach_scripts_through_env_only():
    """No `${{ }}` inside a `run:` script (script injection; and what lets the local runs below
    substitute values): a script reads environment variables."""
    found = [f"{p.name}: {job} step {i + 1}: {m}" for p in workflow_files() for job, i, step in steps_of(load(p))
             for m in EXPRESSION.findall(step.get("run", ""))]
    assert not found, "\n".join(found)


def test_permissions_are_empty_by_default_and_granted_per_job():
    for path in workflow_files():
        wf = load(path)
        assert wf.get("permissions") == {}, f"{path.name}: top-level `permissions: {{}}`"
        for job_id, job in wf["jobs"].items():
            assert isinstance(job.get("permissions"), dict), f"{path.name}: job {job_id} names its permissions"
            assert "write-all" not in str(job["permissions"]) and job["permissions"].get("contents") != "write", job_id


def test_only_what_writes_to_github_may_and_it_holds_no_cloud_secret():
    """A job that holds a cloud or SSH secret cannot write to the repository, its pull requests
    or issues; the jobs that do write run no pulumi and see no secret."""
    for path in workflow_files():
        for job_id, job in load(path)["jobs"].items():
            writes = [k for k, v in job["permissions"].items() if v == "write" and k != "id-token"]
            secrets = "secrets." in json.dumps(job)
            assert not (writes and secrets), f"{path.name}: job {job_id} writes {writes} and holds secrets"


def test_actions_are_pinned():
    for path in workflow_files():
        for job_id, _, step in steps_of(load(path)):
            uses = step.get("uses")
            if uses:
                assert SHA_PIN.match(uses) or uses in TAG_PINNED, f"{path.name}: {job_id}: {uses}"
        for line in path.read_text().splitlines():
            m = re.search(r"uses: (\S+@[0-9a-f]{40})(.*)", line)
            if m:
                assert re.fullmatch(r" # v\d+\.\d+\.\d+", m.group(2)), f"{path.name}: a version comment: {line}"


def test_the_pulumi_cli_is_the_projects_pulumi_version():
    pin = re.search(r'"pulumi==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    seen = {p.name: (load(p).get("env") or {}).get("PULUMI_VERSION") for p in workflow_files()
            if "pulumi/actions@" in p.read_text()}
    assert len(seen) == 4 and set(seen.values()) == {pin}, seen
    for path in workflow_files():
        for job, _, step in steps_of(load(path)):
            if step.get("uses", "").startswith("pulumi/actions@"):
                assert step["with"] == {"pulumi-version": "${{ env.PULUMI_VERSION }}"}, f"{path.name}: {job}"


def test_tag_pinned_actions_are_named_in_the_readme():
    readme = README.read_text()
    for action in TAG_PINNED:
        assert f"`{action}`" in readme, f"the README tells operators to pin {action} by commit"


def test_deploys_are_one_at_a_time_per_stack_through_its_environment():
    deploy = load(WORKFLOWS / "deploy.yml")["jobs"]["deploy"]
    assert deploy["environment"] == "${{ matrix.stack }}"
    assert deploy["concurrency"] == {"group": "deploy-${{ matrix.stack }}", "cancel-in-progress": False}
    assert deploy["strategy"]["max-parallel"] == 1 and deploy["strategy"]["fail-fast"] is True
    scripts = [s.get("run", "") for s in deploy["steps"]]
    order = [next(i for i, s in enumerate(scripts) if s.startswith(cmd))
             for cmd in ("hastack plan", "pulumi up", "hastack converge", "if [ -z \"$UPTIME_URL\" ]")]
    assert order == sorted(order), "plan, then pulumi up, then the converge, then hastack status"
    assert "--policy-pack policy/" in scripts[order[1]]
    assert "hastack status --stack" in scripts[order[3]]


def test_drift_never_writes_the_state():
    scripts = [s.get("run", "") for _, _, s in steps_of(load(WORKFLOWS / "drift.yml"))]
    preview = next(s for s in scripts if "pulumi preview" in s)
    assert "--refresh" in preview and "--expect-no-changes" in preview
    assert not any(re.search(r"pulumi up\b", s) for s in scripts)
    assert any('hastack converge --stack "$STACK" --check' in s for s in scripts)
    for path in workflow_files():
        for s in (st.get("run", "") for _, _, st in steps_of(load(path))):
            assert not re.search(r"pulumi (refresh|destroy)\b", s), f"{path.name}: {s}"
            assert "set -x" not in s, f"{path.name}: a traced script prints its secrets"


# ------------------------------------------------------------------ the README's commands


def readme_commands() -> set[str]:
    text = README.read_text()
    commands = set(re.findall(r"`([^`\n]+)`", text))
    for block in re.findall(r"```(?:sh|bash)?\n(.*?)```", text, re.S):
        commands |= {line.split("  #")[0].split(" # ")[0].strip() for line in block.splitlines()}
    return commands


def test_readme_steps_are_the_readmes_commands():
    commands = readme_commands()
    marked = [(p.name, job, s["run"].strip()) for p in workflow_files() for job, _, s in steps_of(load(p))
              if local_mark(s) == "readme"]
    assert {cmd for _, _, cmd in marked} >= {"make install", "make check"}
    for name, job, cmd in marked:
        assert cmd in commands, f"{name}: {job}: `{cmd}` is not a command the README gives"
    # and the targets exist: make's dry run knows them
    for cmd in {cmd for _, _, cmd in marked}:
        proc = subprocess.run(cmd.split()[:1] + ["-n"] + cmd.split()[1:], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, f"{cmd}: {proc.stderr}"


def test_every_install_is_the_readmes():
    for path in workflow_files():
        for job, _, step in steps_of(load(path)):
            script = step.get("run", "")
            if "pip install" in script or re.search(r"\bmake (install|\.venv)", script):
                assert script.strip() == "make install" and local_mark(step) == "readme", f"{path.name}: {job}"


# ------------------------------------------------------------------ the local runs


def git_rev(rev: str) -> str:
    proc = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, capture_output=True,
                          text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


HEAD = git_rev("HEAD")
PARENT = git_rev("HEAD~1") or HEAD

# What the expressions of the marked steps (and their jobs' env) stand for here. Variables
# (`vars.*`) an operator may leave unset are empty, as GitHub gives them.
COMMON = {"vars.HASTACK_SSH_USER": ""}
EXPRESSIONS = {
    "pull-request.yml": [{
        "github.event.pull_request.base.sha": PARENT,
        "github.event.pull_request.head.sha": HEAD,
    }],
    "deploy.yml": [
        {"github.event_name": "push", "github.event.before": PARENT, "github.sha": HEAD,
         "inputs.stacks": "", "inputs.ref": ""},
        # a rollback of staging and prod to the commit before this one
        {"github.event_name": "workflow_dispatch", "github.event.before": "", "github.sha": HEAD,
         "inputs.stacks": "staging,prod", "inputs.ref": PARENT},
    ],
    "drift.yml": [{}],
    "weekly.yml": [{}],
}


class LocalRunner:
    """Runs a workflow's marked steps as GitHub Actions would run them, job by job."""

    def __init__(self, path: Path, values: dict, tmp: Path):
        self.path, self.wf, self.values, self.tmp = path, load(path), {**COMMON, **values}, tmp
        self.runner_temp = tmp / "runner-temp"
        self.runner_temp.mkdir(parents=True, exist_ok=True)
        self.ran: list[str] = []
        self.outputs: dict[str, dict[str, str]] = {}

    def value(self, expr: str, matrix: dict, outcomes: dict, outputs: dict) -> str:
        if expr.startswith("matrix."):
            return matrix[expr.split(".", 1)[1]]
        m = re.fullmatch(r"steps\.([\w-]+)\.(outcome|outputs\.([\w-]+))", expr)
        if m:
            if m.group(2) == "outcome":
                return outcomes.get(m.group(1), "skipped")
            return outputs.get(m.group(1), {}).get(m.group(3), "")
        if expr in self.values:
            return self.values[expr]
        pytest.fail(f"{self.path.name}: `${{{{ {expr} }}}}` has no local value: add it to EXPRESSIONS")

    def substitute(self, text, matrix, outcomes, outputs) -> str:
        text = str(text)
        if "secrets." in text:
            pytest.fail(f"{self.path.name}: a step marked to run here reads a secret: {text}")
        return EXPRESSION.sub(lambda m: self.value(m.group(1), matrix, outcomes, outputs), text)

    def run_job(self, job_id: str, matrix: dict | None = None) -> dict[str, dict[str, str]]:
        job = self.wf["jobs"][job_id]
        matrix = matrix or {}
        outcomes: dict[str, str] = {}
        outputs: dict[str, dict[str, str]] = {}
        env = dict(os.environ)
        env.pop("GITHUB_ACTIONS", None)
        # `hastack` of the venv under test first (make install puts it in .venv/bin), this checkout's code
        env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT),
                   RUNNER_TEMP=str(self.runner_temp), GITHUB_WORKSPACE=str(ROOT), CI="true")
        for scope in (self.wf.get("env") or {}, job.get("env") or {}):
            env.update({k: self.substitute(v, matrix, outcomes, outputs) for k, v in scope.items()})
        for i, step in enumerate(job["steps"]):
            if local_mark(step) != "run":
                continue
            files = {k: self.tmp / f"{job_id}-{i}-{k.lower()}" for k in ("GITHUB_ENV", "GITHUB_PATH", "GITHUB_OUTPUT")}
            for f in files.values():
                f.write_text("")
            step_env = {**env, **{k: str(v) for k, v in files.items()},
                        **{k: self.substitute(v, matrix, outcomes, outputs) for k, v in (step.get("env") or {}).items()}}
            proc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]], cwd=ROOT,
                                  env=step_env, capture_output=True, text=True, timeout=600)
            where = f"{self.path.name}: {job_id} {matrix or ''} step {step.get('name') or step['run'][:40]!r}"
            assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            self.ran.append(where)
            for line in files["GITHUB_ENV"].read_text().splitlines():
                key, _, val = line.partition("=")
                env[key] = val
            for line in reversed(files["GITHUB_PATH"].read_text().splitlines()):
                env["PATH"] = f"{line}{os.pathsep}{env['PATH']}"
            if step.get("id"):
                outcomes[step["id"]] = "success"
                outputs[step["id"]] = dict(line.partition("=")[::2]
                                           for line in files["GITHUB_OUTPUT"].read_text().splitlines() if line)
        self.outputs[job_id] = outputs
        return outputs


def matrix_stacks(selected: str | None) -> list[str]:
    """The matrix a job gets from the stack selection; every cloud stack when the last commit touched none,
    so that the per-stack steps run whatever the commit."""
    stacks = json.loads(selected) if selected else []
    return stacks or ci.cloud_stacks()


def test_every_workflow_has_its_local_values():
    assert sorted(EXPRESSIONS) == sorted(p.name for p in workflow_files())


def test_pull_request_steps_run_here(tmp_path):
    runner = LocalRunner(WORKFLOWS / "pull-request.yml", EXPRESSIONS["pull-request.yml"][0], tmp_path)
    selected = runner.run_job("stacks")["select"]
    assert set(selected) == {"stacks", "count"} and len(json.loads(selected["stacks"])) == int(selected["count"])
    stacks = matrix_stacks(selected["stacks"])
    for stack in stacks:
        runner.run_job("plan", {"stack": stack})
    results = runner.runner_temp / "results"
    for stack in stacks:
        assert "policy: 16 rules, 0 violations" in (results / stack / "plan.txt").read_text()
        assert f"stack {stack}: " in (results / stack / "validate.txt").read_text()
        assert (results / stack / "preview.outcome").read_text() == "skipped\n"  # no pulumi here
    runner.run_job("comment")  # reads the plan jobs' results, as the downloaded artifacts give them
    body = (runner.runner_temp / "comment.md").read_text()
    assert body.startswith(ci.COMMENT_MARKER + "\n")
    for stack in stacks:
        assert re.search(rf"^\| {stack} \| \u2705 success \| \u2705 16 rules, 0 violations \|", body, re.M), body


@pytest.mark.parametrize("variant", range(len(EXPRESSIONS["deploy.yml"])), ids=["push", "rollback"])
def test_deploy_steps_run_here(tmp_path, variant):
    values = EXPRESSIONS["deploy.yml"][variant]
    runner = LocalRunner(WORKFLOWS / "deploy.yml", values, tmp_path)
    selected = runner.run_job("stacks")["select"]
    if values["github.event_name"] == "workflow_dispatch":
        assert selected == {"stacks": '["staging", "prod"]', "count": "2", "sha": PARENT}
    else:
        assert selected["sha"] == HEAD
    # the job's steps for the first stack of its matrix (the pull request's test plans every stack)
    stack = matrix_stacks(selected["stacks"])[0]
    runner.run_job("deploy", {"stack": stack})
    assert [r for r in runner.ran if "hastack plan" in r] == [
        f"deploy.yml: deploy {{'stack': '{stack}'}} step 'hastack plan (offline; a policy violation stops here, "
        "before anything changes)'"]


@pytest.mark.parametrize("name,job,kind,checks", [
    ("drift.yml", "drift", "drift", 2),
    ("weekly.yml", "backup-verify", "backup-verify", 1),
])
def test_scheduled_steps_run_here(tmp_path, name, job, kind, checks):
    runner = LocalRunner(WORKFLOWS / name, EXPRESSIONS[name][0], tmp_path)
    selected = runner.run_job("stacks")["select"]
    assert json.loads(selected["stacks"]) == ci.cloud_stacks()
    runner.run_job(job, {"stack": "prod"})
    # the checks need the cloud, so here they did not run: the report says so, it does not pass
    report = json.loads((runner.runner_temp / "results" / "prod" / "report.json").read_text())
    assert report["marker"] == ci.report_marker(kind, "prod") and not report["ok"]
    assert report["title"] == f"The {kind} check did not run for stack prod"
    assert report["body"].count("\u23ed\ufe0f") == checks


def test_the_lab_drills_report_step_runs_here(tmp_path):
    runner = LocalRunner(WORKFLOWS / "weekly.yml", {}, tmp_path)
    runner.run_job("dr-drill")
    report = json.loads((runner.runner_temp / "results" / "lab" / "report.json").read_text())
    assert report["marker"] == ci.report_marker("dr-drill", "lab") and not report["ok"]


# ------------------------------------------------------------------ the JavaScript, under node

NODE_HARNESS = r"""
const path = require('path');
const [script, stateFile, argsJson] = process.argv.slice(2);
const fs = require('fs');
const state = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
let next = 1000 + state.comments.length + state.issues.length;
const calls = [];
const github = {
  paginate: async (fn, params) => (await fn(params)).data,
  rest: { issues: {
    listComments: async (p) => ({ data: state.comments.filter((c) => c.issue === p.issue_number) }),
    createComment: async (p) => { calls.push(['createComment', p.issue_number]);
      const c = { id: next++, issue: p.issue_number, body: p.body, user: { type: 'Bot' }, html_url: 'u' };
      state.comments.push(c); return { data: c }; },
    updateComment: async (p) => { calls.push(['updateComment', p.comment_id]);
      state.comments.find((c) => c.id === p.comment_id).body = p.body; return { data: {} }; },
    listForRepo: async (p) => ({ data: state.issues.filter((i) => i.state === p.state) }),
    create: async (p) => { calls.push(['create', p.title]);
      const i = { number: next++, title: p.title, body: p.body, state: 'open', user: { type: 'Bot' } };
      state.issues.push(i); return { data: i }; },
    update: async (p) => { calls.push(['update', p.issue_number, p.state]);
      state.issues.find((i) => i.number === p.issue_number).state = p.state; return { data: {} }; },
  } },
};
const core = { info: () => {}, warning: () => {} };
const context = { repo: { owner: 'o', repo: 'r' }, issue: { number: 7 } };
require(path.resolve(script))({ github, context, core, ...JSON.parse(argsJson) }).then((result) => {
  fs.writeFileSync(stateFile, JSON.stringify(state));
  console.log(JSON.stringify({ result, calls }));
}).catch((e) => { console.error(e.stack); process.exit(1); });
"""


def node() -> str:
    return tool("node", "`make host-deps` (as root) installs the Debian package nodejs")


def run_js(tmp_path: Path, script: str, state: dict, args: dict) -> tuple[dict, dict]:
    harness, state_file = tmp_path / "harness.js", tmp_path / "state.json"
    harness.write_text(NODE_HARNESS)
    if not state_file.exists():
        state_file.write_text(json.dumps(state))
    proc = subprocess.run([node(), str(harness), str(SCRIPTS / script), str(state_file), json.dumps(args)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), json.loads(state_file.read_text())


def test_the_pull_request_comment_is_updated_not_duplicated(tmp_path):
    results = tmp_path / "results" / "prod"
    results.mkdir(parents=True)
    (results / "plan.txt").write_text("policy: 16 rules, 0 violations\n")
    (results / "plan.outcome").write_text("success\n")
    comment = tmp_path / "comment.md"
    comment.write_text(ci.pr_comment(tmp_path / "results"))
    # someone quoting the marker in their own comment is not the workflow's comment
    state = {"comments": [{"id": 1, "issue": 7, "body": ci.COMMENT_MARKER + " quoted", "user": {"type": "User"}}],
             "issues": []}
    out, state = run_js(tmp_path, "pr-comment.js", state, {"file": str(comment)})
    assert out["result"]["action"] == "created"
    first = out["result"]["id"]
    (results / "plan.txt").write_text("policy: 16 rules, 1 violation\n")
    comment.write_text(ci.pr_comment(tmp_path / "results"))
    out, state = run_js(tmp_path, "pr-comment.js", state, {"file": str(comment)})
    assert out["result"] == {"action": "updated", "id": first} and out["calls"] == [["updateComment", first]]
    mine = [c for c in state["comments"] if c["user"]["type"] == "Bot"]
    assert len(mine) == 1 and "1 violation" in mine[0]["body"]
    assert state["comments"][0]["body"] == ci.COMMENT_MARKER + " quoted"


def test_a_change_without_stacks_posts_nothing_new(tmp_path):
    comment = tmp_path / "comment.md"
    comment.write_text(ci.pr_comment(tmp_path / "none"))
    out, _ = run_js(tmp_path, "pr-comment.js", {"comments": [], "issues": []}, {"file": str(comment),
                                                                                 "create": False})
    assert out == {"result": {"action": "none"}, "calls": []}


def test_check_issues_open_then_update_then_close(tmp_path):
    reports = tmp_path / "reports"
    (reports / "prod").mkdir(parents=True)

    def night(preview_outcome):
        d = reports / "prod"
        (d / "preview.outcome").write_text(preview_outcome + "\n")
        (d / "converge.outcome").write_text("success\n")
        (d / "preview.txt").write_text("error: no changes were expected but changes were proposed\n")
        (d / "report.json").write_text(json.dumps(ci.report("drift", "prod", d)))
        return run_js(tmp_path, "report-issues.js", {"comments": [], "issues": []},
                      {"dir": str(reports), "kind": "drift", "stacks": ["prod", "staging"]})

    out, state = night("failure")
    # prod drifted; staging left no report (its job failed early): both open an issue
    assert [r["action"] for r in out["result"]] == ["opened", "opened"]
    titles = sorted(i["title"] for i in state["issues"])
    assert titles == ["Drift in stack prod", "The drift check did not run for stack staging"]
    staging = next(i for i in state["issues"] if "staging" in i["title"])
    assert staging["body"].startswith(ci.report_marker("drift", "staging"))
    out, state = night("failure")
    assert [r["action"] for r in out["result"]] == ["commented", "commented"] and len(state["issues"]) == 2
    out, state = night("success")
    assert [r["action"] for r in out["result"]] == ["closed", "commented"]
    assert [i["state"] for i in state["issues"] if "prod" in i["title"]] == ["closed"]
