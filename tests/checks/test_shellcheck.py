"""shellcheck over every shell script the project ships: the shell templates as a host of the prod and
staging stacks gets them, and the CI entry point. A new shell template without a renderer here fails."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hastack.templating import render
from roles.base import config as base
from roles.cassandra import config as cassandra
from roles.loadbalancer import config as loadbalancer
from roles.mariadb import config as mariadb
from tests.templates.hostdata import host_data, topology

ROOT = Path(__file__).resolve().parents[2]
STACKS = ["prod", "staging"]
SHELLS = ("#!/bin/sh", "#!/bin/bash", "#!/usr/bin/env sh", "#!/usr/bin/env bash", "# shellcheck shell=sh")


def _first(stack: str, role: str):
    return topology(stack).hosts_with_role(role)[0]


def _check_haproxy(stack: str) -> str:
    host = _first(stack, "loadbalancer")
    v = loadbalancer.template_vars(host.name, host_data(stack, host, "loadbalancer"), interface="eth1",
                                   public_interface="eth0")
    return render("loadbalancer", loadbalancer.CHECK_SCRIPT, **v[loadbalancer.CHECK_SCRIPT])


def _nodetool(stack: str) -> str:
    host = _first(stack, "cassandra")
    data = host_data(stack, host, "cassandra")
    v = cassandra.template_vars(data, mem_mb=4096, jmx_password=data["cassandra_passwords"]["jmx"])
    return render("cassandra", cassandra.NODETOOL, **v)


def _mariadb_join(stack: str) -> str:
    host = _first(stack, "mariadb")
    return render("mariadb", mariadb.JOIN, **mariadb.join_vars(host.name, host_data(stack, host, "mariadb")))


def _policy_rc(stack: str) -> str:
    host = _first(stack, "mariadb")
    return render("base", base.POLICY_RC, **base.template_vars(host.name, host_data(stack, host, "base"))[base.POLICY_RC])


def _shell_profile(stack: str) -> str:
    host = _first(stack, "app")
    return render("base", base.SHELL_PROFILE,
                  **base.template_vars(host.name, host_data(stack, host, "base"))[base.SHELL_PROFILE])


def _integrity(stack: str) -> str:
    host = _first(stack, "redis")
    return render("base", base.INTEGRITY, **base.template_vars(host.name, host_data(stack, host, "base"))[base.INTEGRITY])


# the template (under templates/) -> how a host's copy is rendered
RENDERERS = {
    "loadbalancer/usr/local/lib/hastack/check-haproxy.j2": _check_haproxy,
    "cassandra/usr/local/bin/nodetool.j2": _nodetool,
    "mariadb/usr/local/sbin/hastack-mariadb-join.j2": _mariadb_join,
    "base/usr/sbin/policy-rc.d.j2": _policy_rc,
    "base/etc/profile.d/hastack.sh.j2": _shell_profile,
    "base/usr/local/sbin/hastack-integrity.j2": _integrity,
}


def shellcheck() -> str:
    found = shutil.which("shellcheck")
    if not found:
        pytest.fail("shellcheck is missing: `make host-deps` (as root) installs the Debian package shellcheck")
    return found


def run_shellcheck(path: Path) -> subprocess.CompletedProcess:
    # -x: follow sourced files; the shebang names the dialect (sh or bash)
    return subprocess.run([shellcheck(), "-x", "--format=gcc", str(path)], capture_output=True, text=True, timeout=60)


def test_every_shell_template_has_a_renderer_here():
    shell = {str(p.relative_to(ROOT / "templates")) for p in (ROOT / "templates").rglob("*.j2")
             if p.read_text().startswith(SHELLS)}
    assert shell == set(RENDERERS), f"shell templates not checked here: {sorted(shell - set(RENDERERS))}"


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("template", sorted(RENDERERS))
def test_rendered_shell_templates_pass_shellcheck(template, stack, tmp_path):
    script = tmp_path / Path(template).stem
    script.write_text(RENDERERS[template](stack))
    assert script.read_text().startswith(SHELLS)
    result = run_shellcheck(script)
    assert result.returncode == 0, f"{template} ({stack}):\n{result.stdout}{result.stderr}"


def test_the_ci_entry_point_passes_shellcheck():
    result = run_shellcheck(ROOT / ".ci" / "run")
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_reports_what_it_should(tmp_path):
    """The check is live: an unquoted expansion and a useless cat are reported."""
    script = tmp_path / "bad"
    script.write_text('#!/bin/sh\nf=$1\nrm $f\ncat "$f" | grep x\n')
    result = run_shellcheck(script)
    assert result.returncode != 0 and "SC2086" in result.stdout and "SC2002" in result.stdout, result.stdout
