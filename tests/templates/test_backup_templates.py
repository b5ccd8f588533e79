"""Backup role files: the units and timers (systemd-analyze verify), the agent's configuration,
with variables from roles.backup.config and each host's data."""

import shutil
import subprocess

import pytest

from hastack.templating import render
from roles.backup import config as c
from tests.templates.hostdata import host_data, topology

STACKS = ["prod", "staging"]


def backup_hosts(stack):
    topo = topology(stack)
    return [h for h in topo.hosts if "backup" in topo.host_roles(h) and h.role != "monitoring"]


def test_backups_run_on_every_data_host_and_only_there():
    topo = topology("prod")
    assert {h.role for h in backup_hosts("prod")} == {"mariadb", "cassandra", "redis"}
    # the monitoring host runs the role for the weekly test restore only: no backups of its own
    mon = topo.hosts_with_role("monitoring")[0]
    assert "backup" in topo.host_roles(mon)
    assert host_data("prod", mon, "backup")["backup_verifier"] and host_data("prod", mon, "backup")["backup_kinds"] == []
    kinds = {h.name: host_data("prod", h, "backup")["backup_kinds"] for h in backup_hosts("prod")}
    assert kinds["prod-db1"] == ["mariadb-full", "mariadb-binlog"]
    assert kinds["prod-cass1"] == ["cassandra-snapshot"] and kinds["prod-redis1"] == ["redis-rdb"]
    assert "backup" not in topo.host_roles(topo.host("prod-lb1"))


@pytest.mark.parametrize("stack", STACKS)
def test_units_and_timers_pass_systemd_analyze_verify(tmp_path, stack):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (package systemd)")
    host = backup_hosts(stack)[0]
    tvars = c.template_vars(host_data(stack, host, "backup"), host.name)
    for target in (c.SERVICE, c.DAILY_TIMER, c.BINLOG_TIMER):
        text = render("backup", target, **tvars[target])
        (tmp_path / target.rsplit("/", 1)[1]).write_text(text)
    # a template instance and its timer, as systemd would load them
    (tmp_path / "hastack-backup@mariadb-full.service").write_text((tmp_path / "hastack-backup@.service").read_text())
    (tmp_path / "hastack-backup@mariadb-binlog.service").write_text((tmp_path / "hastack-backup@.service").read_text())
    (tmp_path / "hastack-backup-daily@mariadb-full.timer").write_text(
        (tmp_path / "hastack-backup-daily@.timer").read_text())
    for unit in ("hastack-backup@mariadb-full.service", "hastack-backup-daily@mariadb-full.timer",
                 "hastack-backup-binlog.timer"):
        proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True)
        # systemd only warns about a value it cannot parse and ignores the line: no output at all is the pass
        assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), unit + ": " + proc.stdout + proc.stderr
    broken = tmp_path / "broken.timer"
    broken.write_text((tmp_path / "hastack-backup-binlog.timer").read_text().replace("OnUnitInactiveSec=", "OnUnitInactiveSec=x"))
    proc = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True)
    assert "Failed to parse timer value" in proc.stderr


def test_daily_timer_follows_the_schedule_persistently_with_a_random_delay():
    host = backup_hosts("prod")[0]
    data = host_data("prod", host, "backup")
    text = render("backup", c.DAILY_TIMER, **c.template_vars(data, host.name)[c.DAILY_TIMER])
    schedule = topology("prod").section("backup").schedule
    assert f"OnCalendar=*-*-* {schedule}:00 UTC" in text.splitlines()
    assert "Persistent=true" in text.splitlines() and "RandomizedDelaySec=15min" in text.splitlines()


def test_binlog_ships_at_the_configured_interval():
    host = topology("prod").host("prod-db1")
    data = host_data("prod", host, "backup")
    text = render("backup", c.BINLOG_TIMER, **c.template_vars(data, host.name)[c.BINLOG_TIMER])
    interval = topology("prod").section("backup").binlog_interval
    assert f"OnUnitInactiveSec={interval}s" in text.splitlines() and interval <= 60  # RPO goal: 60 s
    assert "Unit=hastack-backup@mariadb-binlog.service" in text.splitlines()


def test_agent_config_carries_the_hosts_own_prefix_and_the_recipients():
    host = topology("prod").host("prod-db2")
    data = host_data("prod", host, "backup")
    data["backup_credentials"] = {"access_key_id": "AKIA1", "secret_access_key": "s", "bucket": "b",
                                  "region": "eu-central-1", "prefix": "backups/prod-db2/"}
    cfg = c.agent_config(data, host.name)
    assert cfg["prefix"] == "backups/prod-db2/" and cfg["kinds"] == ["mariadb-full", "mariadb-binlog"]
    assert cfg["recipients"] == list(topology("prod").section("backup").recipients)
    assert cfg["endpoint"] is None and cfg["ca_file"] is None  # AWS itself, system CAs
    assert cfg["mariadb_database"] == "hastack"


@pytest.mark.parametrize("stack", STACKS)
def test_the_weekly_test_restore_units_pass_systemd_analyze_verify(tmp_path, stack):
    mon = topology(stack).hosts_with_role("monitoring")[0]
    tvars = c.verify_template_vars(mon.name)
    for target in (c.VERIFY_SERVICE, c.VERIFY_TIMER):
        (tmp_path / target.rsplit("/", 1)[1]).write_text(render("backup", target, **tvars[target]))
    for unit in ("hastack-backup-verify.service", "hastack-backup-verify.timer"):
        proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True)
        assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), unit + ": " + proc.stdout + proc.stderr
    timer = (tmp_path / "hastack-backup-verify.timer").read_text().splitlines()
    assert f"OnCalendar={c.VERIFY_SCHEDULE} UTC" in timer and "Persistent=true" in timer
    # weekly: systemd's own reading of the calendar expression
    proc = subprocess.run(["systemd-analyze", "calendar", "--iterations=2", c.VERIFY_SCHEDULE + " UTC"],
                          capture_output=True, text=True)
    times = [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if "Next elapse" in line or "Iter." in line]
    assert len(times) == 2 and all(t.startswith("Sun") for t in times), proc.stdout


def test_only_mariadb_backups_are_encrypted_to_the_verification_key_and_only_the_verifier_holds_it():
    from roles.backup.agent import recipients_for
    from roles.backup.verify_key import verify_identity

    topo = topology("prod")
    secret, public = verify_identity("seed")
    db = host_data("prod", topo.host("prod-db1"), "backup") | {"backup_verify_recipients": [public], "backup_credentials": {
        "access_key_id": "AKIA1", "secret_access_key": "s", "bucket": "b", "region": "eu-central-1",
        "prefix": "backups/prod-db1/"}}
    cfg = c.agent_config(db, "prod-db1")
    operators = list(topo.section("backup").recipients)
    assert recipients_for(cfg, "mariadb-full") == operators + [public]
    assert recipients_for(cfg, "mariadb-binlog") == operators + [public]
    assert recipients_for(cfg | {"kinds": ["redis-rdb"]}, "redis-rdb") == operators
    mon = topo.hosts_with_role("monitoring")[0]
    data = host_data("prod", mon, "backup") | {"backup_verify_credentials": {
        "access_key_id": "AKIAR", "secret_access_key": "r", "bucket": "b", "region": "eu-central-1",
        "prefix": "backups/"}, "backup_verify_identity": secret}
    vcfg = c.verify_config(data)
    assert vcfg["prefix"] == "backups/" and vcfg["identity_file"] == c.VERIFY_KEY and secret not in str(vcfg)
