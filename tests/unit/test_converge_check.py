"""`hastack converge --check`: pyinfra's prepared operations asked whether they would change anything,
on this machine (pyinfra's @local connector) with a small deploy of the same kinds the roles use."""

from io import StringIO

from pyinfra import host
from pyinfra.api.deploy import deploy
from pyinfra.operations import files, server

from hastack.converge import converge


@deploy("check test")
def a_file_and_its_restart():
    put = files.put(name="the managed file", src=StringIO("wanted\n"), dest=host.data.path, mode="0644")
    # runs only when the file changed: it follows the drift, it is not drift of its own
    server.shell(name="restart after the file", commands=[f"touch {host.data.path}.restarted"], _if=put.did_change)


def check(tmp_path):
    return converge({"@local": {"path": str(tmp_path / "managed.conf")}}, check=True,
                    deploy_fn=a_file_and_its_restart).hosts["@local"]


def test_a_missing_file_is_drift_and_nothing_is_run(tmp_path):
    report = check(tmp_path)
    assert report.failed is None
    assert (report.changed, report.changed_operations, report.conditional) == (1, ["check test | the managed file"], 1)
    assert list(tmp_path.iterdir()) == []  # neither the file nor the restart's mark: a dry run


def test_a_file_as_wanted_is_no_drift(tmp_path):
    path = tmp_path / "managed.conf"
    path.write_text("wanted\n")
    path.chmod(0o644)
    report = check(tmp_path)
    assert (report.failed, report.changed, report.changed_operations) == (None, 0, [])
    assert report.operations == 2


def test_a_file_changed_by_hand_is_named_and_left_as_it_is(tmp_path):
    path = tmp_path / "managed.conf"
    path.write_text("changed by hand\n")
    path.chmod(0o644)
    report = check(tmp_path)
    assert (report.changed, report.changed_operations) == (1, ["check test | the managed file"])
    assert path.read_text() == "changed by hand\n"
    assert not (tmp_path / "managed.conf.restarted").exists()


def test_the_same_deploy_run_for_real_repairs_it_and_a_check_then_finds_nothing(tmp_path):
    path = tmp_path / "managed.conf"
    path.write_text("changed by hand\n")
    path.chmod(0o644)
    real = converge({"@local": {"path": str(path)}}, deploy_fn=a_file_and_its_restart, after_roles=False)
    assert real.ok and real.changes == 2  # the file and its restart
    assert path.read_text() == "wanted\n" and (tmp_path / "managed.conf.restarted").exists()
    assert check(tmp_path).changed == 0


@deploy("packages test")
def packages_of_host_data():
    from roles import packages

    packages.install("the packages", host.data.packages)


def test_installed_packages_are_no_drift_however_old_the_package_lists_are(tmp_path):
    """roles.packages refreshes the lists only to install something: a converge with nothing to install
    reports no change (apt.packages(update=True, cache_time=...) did, once the lists were an hour old)."""
    entries = {"@local": {"packages": ["coreutils", "dpkg"]}}
    report = converge(entries, check=True, deploy_fn=packages_of_host_data).hosts["@local"]
    assert (report.failed, report.changed) == (None, 0)
    entries = {"@local": {"packages": ["coreutils", "hastack-no-such-package"]}}
    report = converge(entries, check=True, deploy_fn=packages_of_host_data).hosts["@local"]
    assert (report.failed, report.changed_operations) == (None, ["packages test | the packages"])


@deploy("access test")
def access_then_more():
    from roles.base.config import ACCESS

    server.shell(name=f"{ACCESS} settle", commands=[host.data.access])
    server.shell(name="something after", commands=["false"])


def test_a_failure_after_the_access_operations_leaves_access_settled():
    report = converge({"@local": {"access": "true"}}, deploy_fn=access_then_more, after_roles=False)
    assert not report.ok and report.hosts["@local"].access_settled
    assert "converge failed on 1 of 1 hosts:\n  - @local: " in report.failure()
    assert "access not settled" not in report.failure()


def test_a_failed_access_operation_names_the_host_where_access_may_remain():
    report = converge({"@local": {"access": "false"}}, deploy_fn=access_then_more, after_roles=False)
    assert not report.hosts["@local"].access_settled
    assert "access not settled on @local: an admin removed from the stack may still log in there" in report.failure()


def test_each_host_reports_its_own_name_for_an_operation_that_shares_its_identity_with_anothers():
    """pyinfra tells operations apart by the line numbers of their calls: one call naming a different
    operation on each host gives one identity whose set of names holds both. The report takes each host's own."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.api.operation import add_op

    from hastack.converge import _operation_name, own_operation_names

    state = State(Inventory((["one", "two"], {})), Config())
    with own_operation_names(state):
        for h in state.inventory:
            add_op(state, server.shell, name=f"the step of {h.name}", commands=["true"], host=h)
    one, two = state.inventory
    (op_hash,) = one.op_hash_order
    assert two.op_hash_order == [op_hash]
    assert state.get_op_meta(op_hash).names == {"the step of one", "the step of two"}
    assert (_operation_name(state, one, op_hash), _operation_name(state, two, op_hash)) == \
        ("the step of one", "the step of two")


def test_commands_made_from_a_remembered_split_are_pyinfras_commands():
    """hastack.converge gives pyinfra's command module a split that remembers each template: the commands
    made are those of shlex's own split, for every fact template in pyinfra.facts.files and a quoted one."""
    import shlex

    from pyinfra.api import command as pyinfra_command
    from pyinfra.api.command import QuoteString, make_formatted_string_command
    from pyinfra.facts import files as file_facts

    from hastack import converge as converge_module

    templates = [getattr(file_facts, name)._raw_cmd for name in dir(file_facts)
                 if isinstance(getattr(getattr(file_facts, name), "_raw_cmd", None), str)]
    templates += ["! test -e {0} || (echo 'a \"b\"' && stat {0} {1})", "cp {0} {1} && chmod 0600 {1}"]
    assert len(templates) >= 5
    assert pyinfra_command.shlex.split is converge_module._split_once
    for template in templates:
        args = (QuoteString("/etc/a b"), QuoteString("/tmp/c'd"))
        remembered = make_formatted_string_command(template, *args).get_raw_value()
        remembered_again = make_formatted_string_command(template, *args).get_raw_value()
        pyinfra_command.shlex = shlex
        try:
            theirs = make_formatted_string_command(template, *args).get_raw_value()
        finally:
            pyinfra_command.shlex = converge_module._shlex
        assert remembered == remembered_again == theirs
    assert converge_module._split_once.cache_info().hits >= len(templates)
