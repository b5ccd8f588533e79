"""The command line: offline plan and validation, as a user runs them."""

import subprocess
import sys
from pathlib import Path

import pytest

from hastack.plan import make_plan

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_PROD = {
    "hcloud:index/server:Server": 13,
    "hcloud:index/volume:Volume": 5,
    "hcloud:index/volumeAttachment:VolumeAttachment": 5,
    "hcloud:index/firewall:Firewall": 6,
    "hcloud:index/placementGroup:PlacementGroup": 6,
    "hcloud:index/sshKey:SshKey": 2,
    "hcloud:index/network:Network": 1,
    "hcloud:index/networkSubnet:NetworkSubnet": 1,
    "hcloud:index/floatingIp:FloatingIp": 1,
    "hcloud:index/floatingIpAssignment:FloatingIpAssignment": 1,
    "aws:s3/bucket:Bucket": 1,
    "aws:kms/key:Key": 1,
    "aws:iam/user:User": 8,  # a writer for each of the 7 backup hosts (MariaDB, Cassandra, Redis), the restore reader
    "aws:iam/accessKey:AccessKey": 8,
    "aws:iam/userPolicy:UserPolicy": 8,
    "aws:iam/role:Role": 1,  # break glass
    "pulumi-python:dynamic:Resource": 1,  # the converge
}


def hastack(*args):
    return subprocess.run([sys.executable, "-m", "hastack.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


def test_prod_plan_counts():
    plan = make_plan("prod")
    by_type = {}
    for (type_, _role), n in plan.counts().items():
        by_type[type_] = by_type.get(type_, 0) + n
    for type_, n in EXPECTED_PROD.items():
        assert by_type[type_] == n, type_
    assert sum(by_type.values()) == 77


@pytest.mark.parametrize("stack", ["prod", "staging", "dr"])
def test_plan_prints_the_resource_table_and_firewall(stack):
    proc = hastack("plan", "--stack", stack)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Resources `pulumi up` would create" in out
    assert "hcloud:index/server:Server" in out and "aws:s3/bucket:Bucket" in out
    assert "Hetzner firewall" in out and "Host firewall" in out
    assert f"{stack}-lb1" in out
    assert "secret hastack:failoverToken is not set" in out  # nothing secret in the repo's stack files
    assert "rules, 0 violations" in out  # the policy rules (tests/unit/test_policy.py)


def test_plan_of_a_bad_stack_says_why(tmp_path):
    proc = hastack("plan", "--stack", "nosuch")
    assert proc.returncode == 2
    assert "no stack file" in proc.stderr and "prod" in proc.stderr


def test_plan_refuses_the_lab_stack():
    proc = hastack("plan", "--stack", "lab")
    assert proc.returncode == 2 and "runs on local machines" in proc.stderr


def test_validate_lists_hosts():
    proc = hastack("validate", "--stack", "staging")
    assert proc.returncode == 0, proc.stderr
    assert "staging-cass3" in proc.stdout and "10.30.1.82" in proc.stdout


def test_inventory_from_recorded_outputs():
    proc = hastack("inventory", str(ROOT / "tests/fixtures/prod-stack-outputs.json"))
    assert proc.returncode == 0, proc.stderr
    assert "prod-lb1" in proc.stdout and "failover_token" in proc.stdout
    assert "recorded-failover-token" not in proc.stdout


@pytest.mark.parametrize("args, env, message", [
    (["offboard", "dave"], {}, "'dave' is not an admin of this stack (hastack:admins: alice, bob)"),
    (["offboard", "alice"], {"HASTACK_SSH_USER": "alice"}, "HASTACK_SSH_USER is alice, the admin who leaves"),
    (["offboard", "bob"], {}, "the Pulumi CLI is not installed: it reads the outputs of stack 'prod'"),
    (["rotate", "ca"], {}, "the Pulumi CLI is not installed: it reads the outputs of stack 'prod'"),
    (["rotate", "passwords"], {}, "cannot rotate 'passwords': valid are seed, ca, backup-keys, failover-token, all"),
])
def test_offboard_and_rotate_refuse_bad_input_and_change_nothing(args, env, message):
    stack_file = ROOT / "stacks" / "Pulumi.prod.yaml"
    before = stack_file.read_text()
    proc = subprocess.run([sys.executable, "-m", "hastack.cli", *args, "--stack", "prod"], capture_output=True,
                          text=True, cwd=ROOT, env={"COLUMNS": "300", "PATH": "/usr/bin:/bin", **env},
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert stack_file.read_text() == before
