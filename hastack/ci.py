"""What the CI workflows (.github/workflows/) ask of the repository, as one tested program.

    python3 -m hastack.ci stacks --base REV --head REV   the cloud stacks a change touches
    python3 -m hastack.ci stacks --all                   every cloud stack
    python3 -m hastack.ci stacks --only prod --ref REV   named stacks at a commit of the checked-out branch
    python3 -m hastack.ci environments --stacks JSON     refuse to deploy into an unprotected environment
    python3 -m hastack.ci outcome --dir D plan=success   record the steps' outcomes; exit 1 on a failure
    python3 -m hastack.ci comment --results D --out F    the pull request's one comment (plan and preview)
    python3 -m hastack.ci report --kind K --dir D        a nightly or weekly check's issue, when it failed

Standard library only, so that a job that installs nothing (the stack selection, the
comment) can run it with the runner's python3. Secrets reach it through the environment only and are never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

PROJECT_DIR = Path(__file__).resolve().parent.parent
STACK_FILE = re.compile(r"^stacks/Pulumi\.([A-Za-z0-9_.-]+)\.yaml$")
# Files the program, the roles and their templates, the policy pack and the install are
# made of: a change to any of them reaches every cloud stack.
CODE_PATHS = ("hastack/", "roles/", "templates/", "policy/", "__main__.py", "Pulumi.yaml",
              "pyproject.toml", "constraints.txt", "Makefile")
NOT_CLOUD = ("example",)  # stacks/Pulumi.example.yaml documents the keys; it is no stack
LAB_PROVIDER = re.compile(r"""^\s*hastack:provider:\s*["']?lab["']?\s*(#.*)?$""", re.M)
# Production goes last, so a change is deployed to every other stack (staging) first.
LAST = ("prod", "dr")
COMMENT_MARKER = "<!-- hastack:pr-preview -->"
COMMENT_LIMIT = 60000  # GitHub refuses a comment over 65536 characters
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
OUTCOMES = ("success", "failure", "cancelled", "skipped")


class CIError(Exception):
    """A refusal: printed as a GitHub error annotation, exit status 1."""


# ------------------------------------------------------------------ which stacks


def _git(*args: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd or PROJECT_DIR, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CIError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def is_lab_stack_text(text: str) -> bool:
    return LAB_PROVIDER.search(text) is not None


def cloud_stacks(root: Path | None = None, rev: str | None = None) -> list[str]:
    """The stacks a pipeline deploys: every stacks/Pulumi.<name>.yaml but the example and lab stacks
    (hastack:provider: lab), in the working tree or, with ``rev``, at that commit."""
    root = root or PROJECT_DIR
    if rev is None:
        files = {f"stacks/{p.name}": p.read_text() for p in (root / "stacks").glob("Pulumi.*.yaml")}
    else:
        names = _git("ls-tree", "--name-only", f"{rev}:stacks", cwd=root).split()
        files = {f"stacks/{n}": _git("show", f"{rev}:stacks/{n}", cwd=root) for n in names}
    stacks = []
    for path, text in files.items():
        m = STACK_FILE.match(path)
        if m and m.group(1) not in NOT_CLOUD and not is_lab_stack_text(text):
            stacks.append(m.group(1))
    return deploy_order(stacks)


def deploy_order(stacks: Iterable[str]) -> list[str]:
    """Every other stack first (alphabetically), then prod, then dr."""
    return sorted(set(stacks), key=lambda s: (LAST.index(s) + 1 if s in LAST else 0, s))


def is_code(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in CODE_PATHS)


@dataclass
class Touched:
    stacks: list[str]
    reason: str
    removed: list[str]  # stack files the change deleted: never destroyed by the pipeline


def touched_stacks(changed: Iterable[str], cloud: list[str]) -> Touched:
    """The cloud stacks a change to ``changed`` (paths from the repository's root) touches:
    its own stack files, or every cloud stack when code changed."""
    changed = sorted(set(changed))
    code = [p for p in changed if is_code(p)]
    named = [m.group(1) for m in (STACK_FILE.match(p) for p in changed) if m]
    removed = [s for s in named if s not in cloud and s not in NOT_CLOUD]
    if code:
        shown = ", ".join(code[:5]) + (f" and {len(code) - 5} more" if len(code) > 5 else "")
        return Touched(deploy_order(cloud), f"code changed ({shown}): every cloud stack", removed)
    stacks = deploy_order(s for s in named if s in cloud)
    reason = "stack files changed" if stacks else "no stack file and no code changed"
    return Touched(stacks, reason, removed)


def changed_files(base: str, head: str, root: Path | None = None) -> list[str]:
    """Paths changed between the merge base of ``base`` and ``head``, and ``head``."""
    return [line for line in _git("diff", "--name-only", "--no-renames", f"{base}...{head}", cwd=root).splitlines()
            if line]


def select_stacks(base: str | None, head: str | None, all_: bool, only: str | None, ref: str | None,
                  root: Path | None = None) -> tuple[Touched, str | None]:
    """The stacks to run on, and for ``ref`` the commit it names (checked to be on the checked-out branch)."""
    root = root or PROJECT_DIR
    if only is not None:
        sha = None
        if ref:
            sha = _git("rev-parse", "--verify", f"{ref}^{{commit}}", cwd=root).strip()
            if subprocess.run(["git", "merge-base", "--is-ancestor", sha, "HEAD"], cwd=root).returncode != 0:
                raise CIError(f"{ref} ({sha[:12]}) is not a commit of the checked-out branch: "
                              "only a commit of main is deployed (a rollback names an earlier one)")
        cloud = cloud_stacks(root, sha)
        wanted = [s.strip() for s in re.split(r"[,\s]+", only) if s.strip()]
        unknown = [s for s in wanted if s not in cloud]
        if unknown or not wanted:
            raise CIError(f"not a cloud stack{' at ' + ref if ref else ''}: {', '.join(unknown) or '(none given)'}; "
                          f"cloud stacks: {', '.join(cloud)}")
        return Touched(deploy_order(wanted), "named", []), sha
    cloud = cloud_stacks(root)
    if all_:
        return Touched(cloud, "every cloud stack", []), None
    if not base or not head or set(base) == {"0"}:
        return Touched(cloud, "no earlier commit to compare with: every cloud stack", []), None
    try:
        changed = changed_files(base, head, root)
    except CIError as e:
        return Touched(cloud, f"cannot compare with {base[:12]} ({e}): every cloud stack", []), None
    return touched_stacks(changed, cloud), None


def github_output(values: dict[str, str]) -> None:
    path = os.environ.get("GITHUB_OUTPUT")
    if not path:
        raise CIError("--github-output: GITHUB_OUTPUT is not set (not running in GitHub Actions?)")
    with open(path, "a") as f:
        for key, value in values.items():
            if "\n" in value:
                raise CIError(f"output {key} spans lines")
            f.write(f"{key}={value}\n")


def cmd_stacks(args) -> int:
    touched, sha = select_stacks(args.base, args.head, args.all, args.only, args.ref)
    print(f"stacks: {', '.join(touched.stacks) or 'none'} ({touched.reason})")
    for name in touched.removed:
        print(f"::warning::stacks/Pulumi.{name}.yaml was removed: the pipeline never destroys a stack; "
              f"`pulumi destroy --stack {name}` is an operator's decision")
    if args.github_output:
        values = {"stacks": json.dumps(touched.stacks), "count": str(len(touched.stacks))}
        if sha:
            values["sha"] = sha
        github_output(values)
    return 0


# ------------------------------------------------------------------ environments


Fetch = Callable[[str], "dict | None"]  # API path -> JSON, None for 404


def github_api(path: str) -> dict | None:
    """GET from the GitHub REST API with the job's token (GITHUB_TOKEN); None for 404."""
    url = os.environ.get("GITHUB_API_URL", "https://api.github.com").rstrip("/") + path
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.github+json",
                                                   "X-GitHub-Api-Version": "2022-11-28"})
    token = os.environ.get("GITHUB_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        # B310: the URL is the runner's GITHUB_API_URL (https://api.github.com by default) and a path of this module
        with urllib.request.urlopen(request, timeout=30) as response:  # nosec B310  # GitHub's API, see above
            return json.load(response)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise CIError(f"GitHub API {path}: HTTP {e.code} (does the job have `permissions: actions: read`?)") from e


def environment_problems(repo: str, stacks: list[str], approval: list[str], suffix: str = "",
                         fetch: Fetch | None = None) -> list[str]:
    """What is wrong with the environments ``<stack><suffix>`` a job is about to use: each must exist
    (GitHub would otherwise create it on first use, unprotected), be limited to chosen branches,
    and, for a stack in ``approval``, require a reviewer. An environment of unattended checks
    (``approval`` empty) must not require one, or the checks would wait for a person every night."""
    fetch = fetch or github_api
    problems = []
    for stack in stacks:
        name = f"{stack}{suffix}"
        env = fetch(f"/repos/{repo}/environments/{urllib.parse.quote(name, safe='')}")
        if env is None:
            problems.append(f"environment {name!r} does not exist: create it (Settings > Environments) with its "
                            "secrets; GitHub would create it unprotected on first use")
            continue
        if not env.get("deployment_branch_policy"):
            problems.append(f"environment {name!r} may be used from any branch: set its deployment branches "
                            "to protected branches (or main alone), so that no other branch reaches its secrets")
        reviewers = [r for r in env.get("protection_rules") or []
                     if r.get("type") == "required_reviewers" and r.get("reviewers")]
        if stack in approval and not reviewers:
            problems.append(f"environment {name!r} has no required reviewers: a deploy to {stack} needs an approval "
                            "(Settings > Environments > Required reviewers)")
        if not approval and reviewers:
            problems.append(f"environment {name!r} requires a reviewer: the scheduled checks would wait for one; "
                            "keep approvals on the deploy environment only")
    return problems


def cmd_environments(args) -> int:
    repo = args.repo or os.environ.get("GITHUB_REPOSITORY")
    if not repo:
        raise CIError("--repo or GITHUB_REPOSITORY is needed")
    stacks = json.loads(args.stacks)
    approval = [s.strip() for s in re.split(r"[,\s]+", args.approval or "") if s.strip()]
    problems = environment_problems(repo, stacks, approval, args.suffix)
    for p in problems:
        print(f"::error::{p}")
    if problems:
        return 1
    print(f"environments ok: {', '.join(s + args.suffix for s in stacks)}"
          + (f" (approval required: {', '.join(s for s in stacks if s in approval)})" if approval else ""))
    return 0


# ------------------------------------------------------------------ outcomes and the PR comment


def cmd_outcome(args) -> int:
    """Write <step>.outcome files (the steps' `steps.<id>.outcome`); exit 1 when one failed."""
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    failed = []
    for item in args.outcomes:
        step, _, outcome = item.partition("=")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", step):
            raise CIError(f"{item!r}: expected STEP=OUTCOME")
        if outcome not in OUTCOMES:  # an empty one: no step has that id
            raise CIError(f"{item!r}: the outcome is one of {', '.join(OUTCOMES)}")
        (directory / f"{step}.outcome").write_text(outcome + "\n")
        if outcome in ("failure", "cancelled"):
            failed.append(step)
    print(", ".join(f"{i.partition('=')[0]}: {i.partition('=')[2]}" for i in args.outcomes))
    if failed:
        print(f"::error::failed: {', '.join(failed)}")
        return 1
    return 0


def clean(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


def preview_summary(text: str, diagnostics_lines: int = 40) -> str:
    """The part of `pulumi preview` output a reviewer reads first: the policy verdict, the
    resource counts, the diagnostics and errors (the diff itself stays in the job's log)."""
    lines = clean(text).splitlines()
    keep: list[str] = []
    block: str | None = None
    taken = 0
    for line in lines:
        head = re.fullmatch(r"(Policies|Policy Violations|Resources|Diagnostics|Outputs):", line.strip())
        if head and not line.startswith(" "):
            block = head.group(1)
            taken = 0
            if block != "Outputs":
                if keep and keep[-1] != "":
                    keep.append("")
                keep.append(line)
            continue
        if block and (line.startswith(" ") or not line.strip()):
            if block == "Outputs":
                continue
            taken += 1
            if block == "Diagnostics" and taken > diagnostics_lines:
                if taken == diagnostics_lines + 1:
                    keep.append("    ... (the rest is in the job's log)")
                continue
            keep.append(line)
            continue
        block = None
        if line.startswith("error:") or line.startswith("Duration:"):
            keep.append(line)
    while keep and not keep[-1].strip():
        keep.pop()
    return "\n".join(keep)


def resource_counts(text: str) -> str:
    """'+3 to create, ~1 to update, 74 unchanged' from a preview's Resources block."""
    counts = []
    inside = False
    for line in clean(text).splitlines():
        if line.strip() == "Resources:" and not line.startswith(" "):
            inside, counts = True, []
            continue
        if inside:
            m = re.fullmatch(r"\s+([-+~]{0,2})\s*(\d+ [a-z ]+?)\s*", line)
            if m:
                counts.append(f"{m.group(1)}{m.group(2)}")
            elif line.strip():
                inside = False
    return ", ".join(counts)


def plan_verdict(text: str) -> str:
    m = re.search(r"^policy: (\d+ rules, \d+ violations?)", clean(text), re.M)
    return m.group(1) if m else ""


def fence(text: str, limit: int) -> str:
    """``text`` in a code fence that nothing in it can close, cut in the middle beyond ``limit``."""
    text = clean(text).rstrip("\n")
    if len(text) > limit:
        head, tail = text[: limit * 2 // 3], text[-(limit // 3):]
        cut = text.count("\n", len(head), len(text) - len(tail))
        text = f"{head}\n... ({cut} lines cut: the whole output is in the job's log and the run's artifacts)\n{tail}"
    ticks = max([len(m) for m in re.findall(r"`{3,}|~{3,}", text)] + [2]) + 1
    return f"{'~' * ticks}\n{text}\n{'~' * ticks}"


def _read(directory: Path, name: str) -> str | None:
    path = directory / name
    return path.read_text(errors="replace") if path.is_file() else None


def _outcome(directory: Path, step: str) -> str:
    return (_read(directory, f"{step}.outcome") or "").strip() or "not run"


ICONS = {"success": "✅", "failure": "❌", "cancelled": "❌", "skipped": "⏭️", "not run": "⏭️"}


def pr_comment(results: Path, run_url: str = "", sha: str = "", limit: int = COMMENT_LIMIT) -> str:
    """The pull request's one comment: for every stack the change touches, `hastack validate`,
    the offline plan with its policy verdict, and the summary of `pulumi preview --diff`
    with the policy pack. Its first line is the marker the workflow finds it again by."""
    stacks = deploy_order(p.name for p in results.iterdir() if p.is_dir()) if results.is_dir() else []
    out = [COMMENT_MARKER, "## hastack: plan and preview", ""]
    meta = [f"commit `{sha[:12]}`" if sha else "", f"[workflow run]({run_url})" if run_url else ""]
    if any(meta):
        out += [" · ".join(m for m in meta if m), ""]
    if not stacks:
        out.append("This change touches no cloud stack (no stack file, no code): nothing to plan or preview.")
        return "\n".join(out) + "\n"
    out += ["| stack | `hastack validate` | `hastack plan` (policy rules) | `pulumi preview --diff` (policy pack) |",
            "|---|---|---|---|"]
    for stack in stacks:
        d = results / stack
        plan = _read(d, "plan.txt") or ""
        preview = _read(d, "preview.txt") or ""
        note = (_read(d, "preview.note") or "").strip()
        po = _outcome(d, "preview")
        preview_cell = f"{ICONS[po]} {resource_counts(preview) or po}"
        if po in ("skipped", "not run") and note:
            preview_cell = f"{ICONS[po]} not run: {note}"
        out.append(f"| {stack} | {ICONS[_outcome(d, 'validate')]} {_outcome(d, 'validate')} "
                   f"| {ICONS[_outcome(d, 'plan')]} {plan_verdict(plan) or _outcome(d, 'plan')} | {preview_cell} |")
    header = "\n".join(out) + "\n"
    # what is left is shared by the stacks: the preview summaries first, the plans from the rest
    room = max(limit - len(header) - 400 * len(stacks), 2000)
    sections = []
    per_stack = room // len(stacks)
    for stack in stacks:
        d = results / stack
        part = [f"### {stack}", ""]
        preview = _read(d, "preview.txt")
        if preview is not None:
            summary = preview_summary(preview) or "(no summary found: see the job's log)"
            part += ["<details open><summary><code>pulumi preview --diff --policy-pack policy/</code>: summary"
                     "</summary>", "", fence(summary, per_stack // 3), "", "</details>", ""]
        for step, title in (("validate", "hastack validate"), ("plan", "hastack plan")):
            text = _read(d, f"{step}.txt")
            if text is None:
                continue
            budget = per_stack // 6 if step == "validate" else per_stack // 2
            part += [f"<details><summary><code>{title} --stack {stack}</code></summary>", "",
                     fence(text, budget), "", "</details>", ""]
        sections.append("\n".join(part))
    return header + "\n" + "\n".join(sections)


def cmd_comment(args) -> int:
    body = pr_comment(Path(args.results), args.run_url or _run_url(), args.sha or os.environ.get("GITHUB_SHA", ""))
    Path(args.out).write_text(body)
    print(f"{args.out}: {len(body)} characters")
    return 0


def _run_url() -> str:
    server, repo, run = (os.environ.get(k) for k in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID"))
    return f"{server}/{repo}/actions/runs/{run}" if server and repo and run else ""


# ------------------------------------------------------------------ nightly and weekly reports

# kind -> (title, the steps it ran: (step, what the step is, output file))
REPORTS = {
    "drift": ("Drift in stack {stack}", (
        ("preview", "`pulumi preview --refresh --expect-no-changes` (the cloud against the state)", "preview.txt"),
        ("converge", "`hastack converge --check` (the hosts against the roles)", "converge.txt"),
    )),
    "backup-verify": ("Backup restore verification failed in stack {stack}", (
        ("verify", "`hastack backup verify` (the newest MariaDB backup restored and compared)", "verify.txt"),
    )),
    "dr-drill": ("The lab's disaster-recovery drill failed", (
        ("up", "`make up` (the lab)", "up.txt"),
        ("drill", "`hastack dr drill --stack lab --json`", "drill.txt"),
    )),
}
DRIFT_FOUND = "no changes were expected but changes were proposed"


def report_marker(kind: str, stack: str) -> str:
    """The first line of a check's issue: how a later run finds the issue again."""
    return f"<!-- hastack:report:{kind}:{stack} -->"


def report(kind: str, stack: str, directory: Path, run_url: str = "", limit: int = 30000) -> dict:
    """A check's verdict as {marker, title, ok, body}: the workflow opens (or comments on) the issue
    carrying the marker when ``ok`` is false, and closes it when a later run is clean."""
    title, steps = REPORTS[kind]
    marker = report_marker(kind, stack)
    # clean only when every step ran and succeeded: a check that did not run proves nothing
    failed = [(s, what, f) for s, what, f in steps if _outcome(directory, s) != "success"]
    ok = not failed
    if any(_outcome(directory, s) in ("failure", "cancelled") for s, _, _ in steps):
        title = title.format(stack=stack)
    else:  # the same words as .github/scripts/report-issues.js for a check without a report
        title = f"The {kind} check did not run for stack {stack}"
    body = [marker, f"**{title}**" if not ok else f"**{kind}: stack {stack} is clean**", ""]
    if run_url:
        body += [f"[workflow run]({run_url})", ""]
    for step, what, name in steps:
        outcome = _outcome(directory, step)
        text = _read(directory, name) or ""
        verdict = outcome
        if kind == "drift" and step == "preview" and outcome == "failure":
            verdict = "drift: changes found" if DRIFT_FOUND in clean(text) else "failed to run (see below)"
        body.append(f"- {ICONS.get(outcome, '⏭️')} {what}: {verdict}")
    shown = [(step, name) for step, _, name in failed if _read(directory, name) is not None]
    for step, name in shown:
        text = _read(directory, name) or ""
        summary = preview_summary(text) if step == "preview" else ""
        body += ["", f"### {step}", ""]
        if summary:
            body += [fence(summary, limit // 4), ""]
        body += ["<details><summary>output</summary>", "", fence(text, limit // (2 * len(shown))), "",
                 "</details>"]
    if not ok and not shown:
        body += ["", "No step left any output: the job stopped before the check (install, credentials, "
                 "the stack's CA); see the workflow run."]
    return {"marker": marker, "title": title, "ok": ok, "body": "\n".join(body) + "\n"}


def cmd_report(args) -> int:
    result = report(args.kind, args.stack, Path(args.dir), args.run_url or _run_url())
    out = Path(args.out or Path(args.dir) / "report.json")
    out.write_text(json.dumps(result, indent=1))
    print(f"{result['title']}: {'clean' if result['ok'] else 'FAILED'} ({out})")
    return 0


# ------------------------------------------------------------------ command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hastack.ci", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stacks", help="the cloud stacks a change touches (JSON for a job matrix)")
    p.add_argument("--base", help="the commit the change starts from (a PR's base, a push's `before`)")
    p.add_argument("--head", help="the change's last commit")
    p.add_argument("--all", action="store_true", help="every cloud stack")
    p.add_argument("--only", help="these stacks (comma-separated), checked to be cloud stacks")
    p.add_argument("--ref", help="with --only: the commit to deploy; it must be on the checked-out branch")
    p.add_argument("--github-output", action="store_true", help="also write stacks=, count= (and sha=) "
                   "to $GITHUB_OUTPUT")
    p.set_defaults(func=cmd_stacks)

    p = sub.add_parser("environments", help="refuse unprotected deploy environments (GitHub REST API)")
    p.add_argument("--stacks", required=True, help="JSON list of stacks")
    p.add_argument("--approval", default="", help="stacks whose environment must require a reviewer")
    p.add_argument("--suffix", default="", help="environment name = stack + suffix (e.g. -checks)")
    p.add_argument("--repo", help="owner/name (default: $GITHUB_REPOSITORY)")
    p.set_defaults(func=cmd_environments)


    p = sub.add_parser("outcome", help="record STEP=OUTCOME pairs; exit 1 when one failed")
    p.add_argument("--dir", required=True)
    p.add_argument("outcomes", nargs="+", metavar="STEP=OUTCOME")
    p.set_defaults(func=cmd_outcome)

    p = sub.add_parser("comment", help="the pull request comment from the plan jobs' results")
    p.add_argument("--results", required=True, help="a directory with one subdirectory per stack")
    p.add_argument("--out", required=True)
    p.add_argument("--run-url", default="")
    p.add_argument("--sha", default="")
    p.set_defaults(func=cmd_comment)

    p = sub.add_parser("report", help="a scheduled check's issue text (report.json)")
    p.add_argument("--kind", required=True, choices=sorted(REPORTS))
    p.add_argument("--stack", required=True)
    p.add_argument("--dir", required=True, help="the check's outputs and outcomes")
    p.add_argument("--out", help="default: DIR/report.json")
    p.add_argument("--run-url", default="")
    p.set_defaults(func=cmd_report)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CIError as e:
        # an annotation on the run in GitHub Actions, a plain message elsewhere
        if os.environ.get("GITHUB_ACTIONS") == "true":
            print(f"::error::{e}", flush=True)
        else:
            print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
