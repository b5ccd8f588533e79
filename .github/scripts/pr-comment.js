// The pull request's one comment (.github/workflows/pull-request.yml), run by actions/github-script.
// The comment's first line is its marker (hastack/ci.py, COMMENT_MARKER): a comment of the
// workflow's bot that starts with it is updated in place, so a pull request carries one comment
// however often it is pushed to. `create: false` (the change touches no stack) only updates one
// that exists. Tested with node in tests/templates/test_workflows.py.
const fs = require('fs');

module.exports = async ({ github, context, core, file, create = true }) => {
  const body = fs.readFileSync(file, 'utf8');
  const marker = body.split('\n', 1)[0];
  if (!/^<!-- [a-z:-]+ -->$/.test(marker)) {
    throw new Error(`${file} does not start with a marker comment: ${marker}`);
  }
  const { owner, repo } = context.repo;
  const issue_number = context.issue.number;
  const comments = await github.paginate(github.rest.issues.listComments, {
    owner, repo, issue_number, per_page: 100,
  });
  const previous = comments.find((c) => c.user && c.user.type === 'Bot' && (c.body || '').startsWith(marker));
  if (previous) {
    await github.rest.issues.updateComment({ owner, repo, comment_id: previous.id, body });
    core.info(`updated ${previous.html_url}`);
    return { action: 'updated', id: previous.id };
  }
  if (!create) {
    core.info('nothing to post: the change touches no stack');
    return { action: 'none' };
  }
  const { data } = await github.rest.issues.createComment({ owner, repo, issue_number, body });
  core.info(`posted ${data.html_url}`);
  return { action: 'created', id: data.id };
};
