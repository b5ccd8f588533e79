"""Offboarding: the stack file edit, the order of a rotation, and what counts as a trace of the admin."""

from __future__ import annotations

import pytest
import yaml

from hastack.ca_rotation import CAState
from hastack.offboard import KINDS, OffboardError, remove_admin, rotate_secrets, traces, traces_command
from hastack.seed_rotation import SeedState
from hastack.stackfile import stack_path

STACK = """# the lab stack
config:
  hastack:provider: lab
  hastack:admins:
    - name: alice   # on call
      sshKey: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@laptop
    - name: bob
      sshKey: >-
        ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB bob@laptop
    # carol joined in May
    - name: carol
  hastack:domain: www.example.com  # the site
"""


def test_removing_an_admin_keeps_every_other_line_and_comment():
    new = remove_admin(STACK, "bob")
    assert [a["name"] for a in yaml.safe_load(new)["config"]["hastack:admins"]] == ["alice", "carol"]
    assert "bob" not in new
    assert new == STACK.replace("    - name: bob\n      sshKey: >-\n        ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB bob@laptop\n", "")
    assert "# carol joined in May" in new and "# the site" in new and "# on call" in new
    assert yaml.safe_load(remove_admin(STACK, "carol"))["config"]["hastack:domain"] == "www.example.com"


def test_the_lab_stack_file_loses_exactly_one_admin():
    text = stack_path("lab").read_text()
    before = yaml.safe_load(text)
    after = yaml.safe_load(remove_admin(text, "labops"))
    assert after["config"].pop("hastack:admins") == [a for a in before["config"].pop("hastack:admins")
                                                     if a["name"] != "labops"]
    assert after == before


@pytest.mark.parametrize("name, message", [
    ("dave", r"'dave' is not an admin of this stack \(hastack:admins: alice, bob, carol\)"),
    ("ali", "'ali' is not an admin"),
])
def test_an_unknown_admin_is_refused_and_nothing_changes(name, message):
    with pytest.raises(OffboardError, match=message):
        remove_admin(STACK, name)


def test_the_only_admin_cannot_be_offboarded():
    only = "config:\n  hastack:admins:\n    - name: alice\n"
    with pytest.raises(OffboardError, match="only admin: add the admin who takes over first"):
        remove_admin(only, "alice")


def test_an_admin_in_a_flow_list_is_left_to_the_operator():
    flow = "config:\n  hastack:admins: [{name: alice}, {name: bob}]\n"
    with pytest.raises(OffboardError, match="remove it by hand"):
        remove_admin(flow, "bob")


class FakeSecrets:
    def __init__(self, log):
        self.log, self.state, self.ca = log, SeedState("old"), CAState("old CA")

    def load_seed(self):
        return self.state

    def save_seed(self, state):
        self.state = state

    def load_ca(self):
        return self.ca

    def save_ca(self, state):
        self.ca = state

    def new_ca(self):
        return lambda: "new CA"

    def converge(self, what):
        self.log.append(f"converge {what}")

    def new_backup_keys(self):
        self.log.append("new keys")
        return "new keys"

    def retire_backup_keys(self):
        self.log.append("retire keys")
        return "retired keys"

    def new_token(self, endpoint, ask):
        self.log.append("new token")
        return ask()

    def retire_token(self, endpoint):
        self.log.append("retire token")
        return "retired token"


def test_everything_new_is_made_before_the_first_converge_and_the_old_goes_after_the_last():
    log = []
    secrets = FakeSecrets(log)
    done = rotate_secrets(secrets, KINDS, "https://api", lambda: "tok", lambda token: {"lb1": "new", "db1": "new"},
                          say=lambda m: None, fresh_backup=lambda: log.append("backup") or "a fresh backup")
    # the seed and the CA rotate in step: three converges for both; then a backup under the new seed's key
    assert log == ["new keys", "new token", "converge accept", "converge switch", "converge done", "backup",
                   "retire token", "retire keys"]
    assert "a fresh backup" in done
    assert "every agent host holds the new failover token" in done
    assert secrets.state.stage == secrets.ca.stage == "done" and secrets.ca == CAState("new CA")


def test_the_old_token_is_kept_while_an_agent_host_does_not_hold_the_new_one():
    log = []
    with pytest.raises(OffboardError, match="lb2: other"):
        rotate_secrets(FakeSecrets(log), ("failover-token",), "https://api", lambda: "tok",
                       lambda token: {"lb1": "new", "lb2": "other"}, say=lambda m: None)
    assert "retire token" not in log and log == ["new token", "converge the new failover-token"]


def test_an_unknown_secret_is_refused_before_anything_is_made():
    log = []
    with pytest.raises(OffboardError, match="unknown secret keys: one of seed, ca, backup-keys, failover-token or all"):
        rotate_secrets(FakeSecrets(log), ("keys",), "https://api", None, dict, say=lambda m: None)
    assert log == []


def test_traces_name_every_host_where_something_of_the_admin_is_left():
    answers = {"h1": (True, "", ""), "h2": (True, "account\nhome\n", ""), "h3": (False, "", "ssh: timeout")}
    left = traces(lambda h, c, t: answers[h], ["h1", "h2", "h3"], "bob")
    assert left == {"h2": "account, home", "h3": "could not be checked (ssh: timeout)"}
    assert "id -u bob" in traces_command("bob") and "/home/bob" in traces_command("bob")
