"""The audit trail on a machine with a kernel of its own (hastack.lab.vm, booted from the lab's base
image). The lab's containers share the host's kernel, whose audit records are the host's, so their auditd
skips itself; a cloud server runs it as this virtual machine does."""

from __future__ import annotations

import pytest

from hastack.converge import converge
from hastack.templating import render
from roles.base import config as c
from tests.support import vm_start
from tests.support.audit_trail import audit_trail


@pytest.fixture(scope="module")
def vm(lab):
    try:
        machine = vm_start.wait(lab)  # started when the lab came up (tests/support/vm_start.py)
    except RuntimeError as e:
        pytest.fail(f"no virtual machine for the audit trail: {e}")
    try:
        yield machine
    finally:
        machine.remove()


def converge_vm(vm):
    report = converge({vm.name: vm.inventory_entry()}, deploy_fn=audit_trail, after_roles=False)
    assert report.ok, report.failure()
    return report.hosts[vm.name]


def root(vm, script: str) -> str:
    proc = vm.exec(["bash", "-c", script])
    assert proc.returncode == 0, proc.stderr[-1500:]
    return proc.stdout


def test_an_admins_root_commands_and_changes_to_sudoers_and_secrets_are_recorded_in_the_journal(vm):
    """The rules the converge loads are what the kernel holds; what labops does as root is on record with
    labops as its login, in auditd's log and in the journal (the journal shipping's source); rules removed
    by hand are put back by the next converge, which then has nothing left to do."""
    first = converge_vm(vm)
    assert "audit trail | Audit rules loaded" in first.changed_operations, first.changed_operations
    assert root(vm, "systemctl is-active auditd").strip() == "active"
    loaded = root(vm, "auditctl -l")
    assert loaded == root(vm, f"cat {c.AUDIT_LOADED}")
    for rule in ("-w /etc/sudoers.d -p wa -k sudoers", "-w /etc/shadow -p wa -k identity",
                 "-w /etc/ssh/sshd_config.d -p wa -k sshd", "-w /etc/hastack -p wa -k hastack-secrets",
                 "-a always,exit -F arch=b64 -S execve -F euid=0 -F auid>=1000 -F auid!=-1 -F key=admin-root",
                 "-a always,exit -S all -F path=/usr/bin/sudo -F perm=x -F auid>=1000 -F auid!=-1 -F key=privileged"):
        assert rule in loaded.splitlines(), (rule, loaded)

    # labops, as root: a sudoers file and a secret written and removed, a command with a marker argument
    since = root(vm, "date +%s").strip()
    probe = ("touch /etc/sudoers.d/zz-probe && rm /etc/sudoers.d/zz-probe && "
             "touch /etc/hastack/probe-token && rm /etc/hastack/probe-token && env HASTACK_AUDIT_PROBE=1 true")
    done = vm.ssh(["sudo", "-n", "sh", "-c", probe], admin="labops")
    assert done.returncode == 0, done.stderr
    labops = root(vm, "id -u labops").strip()
    # the journal's records since then, each record an entry: the syscall's carries the login, the path's
    # or the command's the name
    journal = root(vm, f"journalctl _TRANSPORT=audit -o cat --no-pager --since @{since}").splitlines()
    for key, needle in (("sudoers", "zz-probe"), ("hastack-secrets", "probe-token"),
                        ("admin-root", "HASTACK_AUDIT_PROBE=1")):
        log = root(vm, f"ausearch --input-logs -k {key} -ul {labops} -ts recent --raw || true")
        assert needle in log, (key, log[-1500:])
        assert any(f'key="{key}"' in e and f"auid={labops} " in e for e in journal), key
        assert any(needle in e for e in journal), key

    # a root who clears the rules: on record, and the next converge loads them again
    since = root(vm, "date +%s").strip()
    root(vm, "auditctl -D")
    assert "op=remove_rule" in root(vm, f"journalctl _TRANSPORT=audit -o cat --no-pager --since @{since}")
    repaired = converge_vm(vm)
    assert repaired.changed_operations == ["audit trail | Audit rules loaded"], repaired.changed_operations
    assert root(vm, "auditctl -l") == loaded
    again = converge_vm(vm)
    assert again.changed_operations == [], again.changed_operations


def test_every_roles_audit_rules_load_on_a_real_kernel(vm):
    """Each role's rules file, as its hosts get it, loads into the kernel without an error (once the
    directories its role makes exist, as they do when the converge loads the rules after the roles)."""
    dirs = sorted({posix_dir(p) for role in c.SECRET_DIRS for p in c.SECRET_DIRS[role]} |
                  {posix_dir(p) for role in c.PRIVILEGED_PROGRAMS for p in c.PRIVILEGED_PROGRAMS[role]})
    root(vm, "mkdir -p " + " ".join(dirs))
    try:
        for role in sorted(set(c.SECRET_DIRS) | set(c.PRIVILEGED_PROGRAMS)):
            rules = render("base", c.AUDIT_RULES, **c.audit_template_vars([role])[c.AUDIT_RULES])
            proc = vm.exec(["sh", "-c", "f=$(mktemp) && cat > $f && auditctl -D >/dev/null && auditctl -R $f; "
                                        "rc=$?; rm -f $f; exit $rc"], input=rules)
            assert proc.returncode == 0, (role, proc.stdout[-800:], proc.stderr[-800:])
    finally:
        root(vm, f"augenrules --load && auditctl -l > {c.AUDIT_LOADED}")


def posix_dir(path: str) -> str:
    import posixpath

    return path.rstrip("/") if path.endswith("/") else posixpath.dirname(path)
