"""Reading stacks/Pulumi.<stack>.yaml: every mistake is a StackFileError naming file, line and key."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hastack.stackfile import (
    PLAIN_TEXT_REFUSED,
    TOP_LEVEL_KEYS,
    StackFileError,
    available_stacks,
    hastack_config,
    load_stack,
    read_stack_file,
    stack_path,
)

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path, text, stack="t"):
    path = tmp_path / f"Pulumi.{stack}.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def problems(tmp_path, text, stack="t"):
    path = write(tmp_path, text, stack)
    with pytest.raises(StackFileError) as exc:
        read_stack_file(stack, tmp_path)
    assert str(exc.value).startswith(f"invalid stack file {path}:\n  - ")
    assert exc.value.path == path
    return exc.value.problems


def only(tmp_path, text):
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------ good files


@pytest.mark.parametrize("stack", ["prod", "staging", "dr", "example", "lab"])
def test_repository_stack_files_read_cleanly(stack):
    flat, secrets = read_stack_file(stack)
    assert "hastack:locations" in flat
    assert secrets == set()  # nothing secret is committed


def test_secure_values_are_secrets_and_left_out_of_hastack_config(tmp_path):
    write(tmp_path, """
        secretsprovider: passphrase
        encryptionsalt: v1:abc
        config:
          hcloud:token:
            secure: v1:AAAA
          hastack:failoverToken:
            secure: v1:BBBB
          aws:region: eu-central-1
          hastack:locations: [fsn1]
        """)
    flat, secrets = read_stack_file("t", tmp_path)
    assert secrets == {"hcloud:token", "hastack:failoverToken"}
    assert hastack_config(flat) == {"locations": ["fsn1"]}


def test_every_pulumi_top_level_key_is_accepted(tmp_path):
    write(tmp_path, "\n".join(f"{k}: {{}}" if k in ("config", "environment") else f"{k}: x" for k in TOP_LEVEL_KEYS))
    assert read_stack_file("t", tmp_path) == ({}, set())


def test_empty_file_is_an_empty_config(tmp_path):
    write(tmp_path, "# nothing yet\n")
    assert read_stack_file("t", tmp_path) == ({}, set())


# ------------------------------------------------------------------ YAML syntax


def test_syntax_error_names_file_line_column_and_problem(tmp_path):
    problem = only(tmp_path, """
        config:
          hastack:locations: [fsn1
          hastack:domain: www.example.com
        """)
    assert problem.startswith("line 3, column 17: YAML syntax error: expected ',' or ']', but got ':'")
    assert "flow sequence at line 2" in problem


def test_tab_indentation_is_a_syntax_error_with_its_position(tmp_path):
    problem = only(tmp_path, "config:\n\thastack:locations: [fsn1]\n")
    assert problem.startswith("line 2, column 1: YAML syntax error:")
    assert "found character '\\t' that cannot start any token; indent with spaces, not tabs" in problem


def test_syntax_error_never_quotes_the_line(tmp_path):
    # the parser's snippet of the line would print the token
    problem = only(tmp_path, 'config:\n  hcloud:token: "s3cr3t-token-value\n')
    assert "s3cr3t" not in problem
    assert problem.startswith("line ")


def test_unknown_tag_is_reported_not_raised(tmp_path):
    problem = only(tmp_path, "config:\n  hastack:locations: !!python/tuple [fsn1]\n")
    assert problem.startswith("line 2, column 22: YAML syntax error: could not determine a constructor")


def test_not_utf8(tmp_path):
    (tmp_path / "Pulumi.t.yaml").write_bytes(b"config:\n  hastack:domain: caf\xe9.example\n")
    with pytest.raises(StackFileError) as exc:
        read_stack_file("t", tmp_path)
    assert exc.value.problems == ["line 2: not UTF-8 text; save the file as UTF-8"]


# ------------------------------------------------------------------ keys given twice


def test_duplicate_key_inside_config_names_both_lines(tmp_path):
    problem = only(tmp_path, """
        config:
          hastack:locations: [fsn1]
          hastack:domain: www.example.com
          hastack:locations: [nbg1]
        """)
    assert problem == ("line 4: key 'hastack:locations' is given twice in config (lines 2 and 4); "
                       "YAML would silently keep only the last; remove one")


def test_duplicate_key_in_a_nested_value_names_where(tmp_path):
    problem = only(tmp_path, """
        config:
          hastack:roles:
            app: {count: 1, serverType: cx22}
            redis:
              count: 2
              serverType: cx22
              count: 3
        """)
    assert problem.startswith("line 7: key 'count' is given twice in hastack:roles.redis (lines 5 and 7)")


def test_duplicate_key_in_a_flow_mapping_and_in_a_list_item(tmp_path):
    found = problems(tmp_path, """
        config:
          hastack:roles:
            app: {count: 1, count: 2}
          hastack:admins:
            - name: alice
              name: bob
        """)
    assert found[0].startswith("line 3: key 'count' is given twice in hastack:roles.app (lines 3 and 3)")
    assert found[1].startswith("line 6: key 'name' is given twice in hastack:admins[0] (lines 5 and 6)")


def test_config_given_twice_at_the_top_level(tmp_path):
    found = problems(tmp_path, """
        config:
          hastack:locations: [fsn1]
        config:
          hastack:domain: www.example.com
        """)
    assert found == ["line 3: key 'config' is given twice in the top level (lines 1 and 3); "
                     "YAML would silently keep only the last; remove one"]


def test_merge_keys_are_not_duplicates(tmp_path):
    write(tmp_path, """
        config:
          hastack:roles:
            app: &small {count: 1, serverType: cx22}
            redis:
              <<: *small
              count: 2
        """)
    flat, _ = read_stack_file("t", tmp_path)
    assert flat["hastack:roles"]["redis"] == {"count": 2, "serverType": "cx22"}


# ------------------------------------------------------------------ structure


def test_block_indented_out_of_config(tmp_path):
    problem = only(tmp_path, """
        config:
          hastack:locations: [fsn1]
        hastack:domain: www.example.com
        """)
    assert problem == ("line 3: 'hastack:domain' is outside `config:` (probably indented wrongly: config keys are "
                       "indented under `config:`); valid top-level keys: config, secretsprovider, encryptedkey, "
                       "encryptionsalt, environment")


def test_config_key_without_namespace_suggests_hastack(tmp_path):
    problem = only(tmp_path, """
        config:
          hastack:locations: [fsn1]
          hastack:roles:
          roles:
            app: {count: 1, serverType: cx22}
        """)
    assert problem.startswith("line 4: config key 'roles' is not in namespace:name form")
    assert problem.endswith("did you mean hastack:roles?")


@pytest.mark.parametrize("key", ["hastack:", ":roles"])
def test_config_key_with_an_empty_part(tmp_path, key):
    problem = only(tmp_path, f"config:\n  '{key}': 1\n")
    assert problem.startswith(f"line 2: config key '{key}' is not in namespace:name form")


def test_document_that_is_not_a_mapping(tmp_path):
    assert only(tmp_path, "- config\n") == "line 1: expected a mapping with a 'config:' key, found a list"


def test_config_that_is_not_a_mapping(tmp_path):
    assert only(tmp_path, "config:\n  - hastack:locations\n") == (
        "line 2: 'config' must be a mapping of namespace:name keys to values")


# ------------------------------------------------------------------ secrets in plain text


@pytest.mark.parametrize("key", PLAIN_TEXT_REFUSED)
def test_secret_in_plain_text_is_refused_without_showing_it(tmp_path, key):
    problem = only(tmp_path, f"""
        config:
          hastack:locations: [fsn1]
          {key}: do-not-print-me
        """)
    assert problem.startswith(f"line 3: {key} is stored in plain text")
    assert "pulumi config set --secret" in problem
    assert "do-not-print-me" not in problem


def test_the_refused_keys_are_pulumis_spellings():
    assert set(PLAIN_TEXT_REFUSED) == {
        "hcloud:token", "aws:accessKey", "aws:secretKey", "aws:token", "aws:sessionToken",
        "hastack:failoverToken", "hastack:secretSeed", "hastack:secretSeedNext", "hastack:secretSeedPrevious",
        "hastack:ca", "hastack:caNext", "hastack:caPrevious"}


def test_aws_session_token_points_to_aws_token(tmp_path):
    problem = only(tmp_path, "config:\n  aws:sessionToken: abc\n")
    assert "`pulumi config set --secret aws:token <value>`" in problem


def test_secret_as_a_mapping_other_than_secure_is_plain_text(tmp_path):
    problem = only(tmp_path, "config:\n  hcloud:token:\n    value: do-not-print-me\n")
    assert problem.startswith("line 2: hcloud:token is stored in plain text")
    assert "do-not-print-me" not in problem


def test_every_problem_of_a_file_at_once_in_file_order(tmp_path):
    path = write(tmp_path, """
        config:
          hcloud:token: leaked-token
          hastack:locations: [fsn1]
          hastack:roles:
            app: {count: 1, serverType: cx22}
            app: {count: 2, serverType: cx22}
          roles: {}
          aws:secretKey: leaked-key
        hastack:domain: www.example.com
        """)
    with pytest.raises(StackFileError) as exc:
        read_stack_file("t", tmp_path)
    lines = [p.split(":")[0] for p in exc.value.problems]
    assert lines == ["line 2", "line 6", "line 7", "line 8", "line 9"]
    message = str(exc.value)
    assert message.startswith(f"invalid stack file {path}:\n  - line 2: hcloud:token is stored in plain text")
    assert "leaked" not in message


# ------------------------------------------------------------------ lookups


def test_missing_stack_lists_those_there(tmp_path):
    write(tmp_path, "config: {}\n", stack="alpha")
    with pytest.raises(StackFileError, match=r"no stack file .*Pulumi\.nosuch\.yaml; stacks here: alpha"):
        read_stack_file("nosuch", tmp_path)
    assert available_stacks(tmp_path) == ["alpha"]
    assert stack_path("alpha", tmp_path) == tmp_path / "Pulumi.alpha.yaml"


def test_load_stack_reads_the_given_dir(tmp_path):
    (tmp_path / "Pulumi.copy.yaml").write_text((ROOT / "stacks/Pulumi.staging.yaml").read_text())
    assert load_stack("copy", stacks_dir=tmp_path).hosts[0].name == "copy-lb1"


# ------------------------------------------------------------------ the command line


CLI = """
import sys
from pathlib import Path
import hastack.stackfile
hastack.stackfile.STACKS_DIR = Path(sys.argv.pop(1))
from hastack.cli import app
app()
"""


def hastack(stacks_dir, *args):
    """`hastack ARGS` as a user runs it, with stacks/ replaced by ``stacks_dir``."""
    return subprocess.run([sys.executable, "-c", CLI, str(stacks_dir), *args], capture_output=True, text=True,
                          cwd=ROOT, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_cli_prints_stack_file_problems_without_traceback(tmp_path, command):
    write(tmp_path, """
        config:
          hcloud:token: leaked-token
          hastack:locations: [fsn1]
          hastack:locations: [nbg1]
        """, stack="broken")
    proc = hastack(tmp_path, command, "--stack", "broken")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"invalid stack file {tmp_path}/Pulumi.broken.yaml:" in proc.stderr
    assert "line 2: hcloud:token is stored in plain text" in proc.stderr
    assert "key 'hastack:locations' is given twice in config (lines 3 and 4)" in proc.stderr
    assert "leaked" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_cli_prints_syntax_errors_and_markup_lookalikes_verbatim(tmp_path, command):
    write(tmp_path, "config:\n  hastack:locations: [fsn1]\n'[/x]': 1\n", stack="markup")
    write(tmp_path, "config:\n  hastack:locations: [fsn1\n  b: 1\n", stack="syntax")
    proc = hastack(tmp_path, command, "--stack", "markup")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "line 3: '[/x]' is outside `config:`" in proc.stderr
    proc = hastack(tmp_path, command, "--stack", "syntax")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "line 3, column 4: YAML syntax error: expected ',' or ']', but got ':'" in proc.stderr


def test_cli_validates_a_good_stack_from_the_given_dir(tmp_path):
    (tmp_path / "Pulumi.copy.yaml").write_text((ROOT / "stacks/Pulumi.staging.yaml").read_text())
    proc = hastack(tmp_path, "validate", "--stack", "copy")
    assert proc.returncode == 0, proc.stderr
    assert "copy-cass3" in proc.stdout


def test_lines_after_config_given_twice_are_those_of_the_kept_one(tmp_path):
    found = problems(tmp_path, """
        config:
          hastack:locations: [fsn1]
        config:
          hastack:locations: [nbg1]
          roles: {}
        """)
    assert found[0].startswith("line 3: key 'config' is given twice in the top level (lines 1 and 3)")
    assert found[1].startswith("line 5: config key 'roles' is not in namespace:name form")
