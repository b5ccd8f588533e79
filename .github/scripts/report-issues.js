// One issue per scheduled check and stack (.github/workflows/drift.yml, weekly.yml), run by
// actions/github-script. Each check leaves <dir>/<stack>/report.json (hastack/ci.py, report):
// {marker, title, ok, body}. A failed check opens an issue, or comments on the open one that
// carries its marker; a clean check closes that issue. A stack without a report (its job
// failed before it could write one) counts as failed. Tested with node in
// tests/templates/test_workflows.py.
const fs = require('fs');
const path = require('path');

module.exports = async ({ github, context, core, dir, kind, stacks, runUrl = '' }) => {
  const { owner, repo } = context.repo;
  const open = await github.paginate(github.rest.issues.listForRepo, {
    owner, repo, state: 'open', per_page: 100,
  });
  const results = [];
  for (const stack of stacks) {
    const file = path.join(dir, stack, 'report.json');
    let report;
    if (fs.existsSync(file)) {
      report = JSON.parse(fs.readFileSync(file, 'utf8'));
    } else {
      const marker = `<!-- hastack:report:${kind}:${stack} -->`;
      report = {
        marker,
        title: `The ${kind} check did not run for stack ${stack}`,
        ok: false,
        body: `${marker}\n**The ${kind} check of stack ${stack} did not get as far as a report**: `
          + `its job failed before the check (install, credentials, the stack's CA); see ${runUrl || 'the run'}.\n`,
      };
    }
    const issue = open.find((i) => !i.pull_request && i.user && i.user.type === 'Bot'
      && (i.body || '').startsWith(report.marker));
    if (!report.ok) {
      if (issue) {
        await github.rest.issues.createComment({ owner, repo, issue_number: issue.number, body: report.body });
        core.warning(`${report.title}: commented on #${issue.number}`);
        results.push({ stack, action: 'commented', number: issue.number });
      } else {
        const { data } = await github.rest.issues.create({ owner, repo, title: report.title, body: report.body });
        core.warning(`${report.title}: opened #${data.number}`);
        results.push({ stack, action: 'opened', number: data.number });
      }
    } else if (issue) {
      await github.rest.issues.createComment({
        owner, repo, issue_number: issue.number,
        body: `The ${kind} check of stack ${stack} is clean again${runUrl ? ` (${runUrl})` : ''}: closing.`,
      });
      await github.rest.issues.update({ owner, repo, issue_number: issue.number, state: 'closed' });
      core.info(`${kind} ${stack}: clean, closed #${issue.number}`);
      results.push({ stack, action: 'closed', number: issue.number });
    } else {
      core.info(`${kind} ${stack}: clean`);
      results.push({ stack, action: 'none' });
    }
  }
  return results;
};
