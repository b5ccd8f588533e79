"""The join command's seed, run for real (bash) against a data directory in a temporary
directory, with stand-ins for the programs it calls (mariadb, systemctl, socat, mbstream,
mariadb-backup, chown) that record what they were asked.

The three rules of a seed: only a data directory without databases of its own is seeded
over; never while the local MariaDB runs writable; what it replaces is moved aside."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from hastack.templating import render
from roles.mariadb import config as c
from tests.templates.hostdata import host_data, topology

STACK = "prod"

FAKES = {
    # the local server: `is-active` from $FAKE/active; stop, start and anything else recorded
    "systemctl": '''echo "systemctl $*" >> "$FAKE/log"
case "$1" in is-active) [ "$(cat "$FAKE/active")" = yes ];; esac''',
    # the peer (--defaults-extra-file) holds the database; the local server answers read_only from $FAKE/read_only
    "mariadb": '''echo "mariadb $*" >> "$FAKE/log"
case "$*" in
*--defaults-extra-file*) echo 1 ;;
*"SELECT @@read_only"*) [ -e "$FAKE/down" ] && { echo "ERROR 2002: cannot connect" >&2; exit 1; }; cat "$FAKE/read_only" ;;
*"CREATE DATABASE"*) mkdir "$DATADIR/hastack" ;;
esac''',
    "socat": 'echo "socat $*" >> "$FAKE/log"',
    # the peer's copy: the application's database, MariaDB's own, where the copy ends
    "mbstream": '''echo "mbstream $*" >> "$FAKE/log"
dir="${@: -1}"
mkdir -p "$dir/hastack" "$dir/mysql"
printf peer > "$dir/hastack/records.ibd"; printf peer > "$dir/ibdata1"
printf 'mariadb-bin.000003\\t385\\t0-1-42\\n' > "$dir/xtrabackup_binlog_info"
[ -e "$FAKE/writable_during_copy" ] && echo 0 > "$FAKE/read_only"; true''',
    "mariadb-backup": 'echo "mariadb-backup $*" >> "$FAKE/log"',
    "chown": 'echo "chown $*" >> "$FAKE/log"',
}


@pytest.fixture
def node(tmp_path):
    """(run, datadir, fake): the join command of the second master, on a fresh install's data directory."""
    topo = topology(STACK)
    pair = [topo.host(n.host) for n in topo.cluster("mariadb").nodes]
    host = pair[1]  # not the preferred writer
    datadir = tmp_path / "var-lib" / "mysql"
    text = render("mariadb", c.JOIN, **c.join_vars(host.name, host_data(STACK, host, "mariadb"), datadir=str(datadir)))
    text = text.replace("/var/log/hastack-mariadb-prepare.log", str(tmp_path / "prepare.log"))
    script = tmp_path / "hastack-mariadb-join"
    script.write_text(text)
    fake = tmp_path / "fake"
    (fake / "bin").mkdir(parents=True)
    for name, body in FAKES.items():
        path = fake / "bin" / name
        path.write_text("#!/bin/bash\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (fake / "log").write_text("")
    (fake / "active").write_text("yes")
    (fake / "read_only").write_text("1")
    # what the package's install leaves (mysql_install_db --skip-test-db), and a volume's lost+found
    for d in ("mysql", "performance_schema", "sys", "lost+found"):
        (datadir / d).mkdir(parents=True)
    (datadir / "mysql" / "user.frm").write_text("fresh")
    (datadir / "ibdata1").write_text("fresh")
    (datadir / "mariadb-bin.000001").write_text("fresh")

    def run(*args):
        env = {**os.environ, "PATH": f"{fake / 'bin'}:{os.environ['PATH']}", "FAKE": str(fake),
               "DATADIR": str(datadir)}
        return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env, timeout=60)

    run.host = host.name
    return run, datadir, fake


def tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): (p.read_text() if p.is_file() else "/") for p in sorted(path.rglob("*"))}


def asides(datadir: Path) -> list[Path]:
    return sorted(datadir.parent.glob(datadir.name + ".before-seed-*"))


def test_a_fresh_master_is_seeded_and_what_it_held_is_moved_aside(node):
    run, datadir, fake = node
    before = tree(datadir)
    proc = run("seed")
    assert proc.returncode == 0, proc.stderr
    # the peer's copy is the data directory now; lost+found (a volume's) stays where it was
    assert (datadir / "hastack" / "records.ibd").read_text() == "peer"
    assert (datadir / "ibdata1").read_text() == "peer"
    assert (datadir / "lost+found").is_dir()
    assert not (datadir.parent / "mysql.seed").exists()
    # nothing deleted: what was there is beside it, as it was
    [aside] = asides(datadir)
    assert tree(aside) == {k: v for k, v in before.items() if k != "lost+found"}
    assert os.stat(aside).st_dev == os.stat(datadir).st_dev  # the same file system: a rename, no copy
    assert str(aside) in proc.stdout and "at GTID 0-1-42" in proc.stdout
    log = (fake / "log").read_text().splitlines()
    assert log.index("systemctl stop mariadb") < log.index("systemctl start mariadb")


def test_a_master_holding_another_database_is_never_seeded_over(node):
    """A renamed application database: the data directory lacks `hastack` but holds data."""
    run, datadir, fake = node
    (datadir / "shop").mkdir()
    (datadir / "shop" / "orders.ibd").write_text("live rows")
    before = tree(datadir)
    proc = run("seed")
    assert proc.returncode == 1
    assert f"{run.host}: refusing to seed" in proc.stderr
    assert "holds databases (shop) but not hastack" in proc.stderr and "rename" in proc.stderr
    assert f"Nothing was changed on {run.host}" in proc.stderr
    assert tree(datadir) == before and not asides(datadir)
    log = (fake / "log").read_text()
    assert "socat" not in log and "systemctl stop" not in log
    # init creates nothing there either, even on a new pair's preferred master
    assert run("init").returncode == 0 and not (datadir / "hastack").exists()
    assert run("state").stdout.strip() == "other shop"


def test_a_running_writable_master_is_never_seeded_over(node):
    run, datadir, fake = node
    (fake / "read_only").write_text("0")
    before = tree(datadir)
    proc = run("seed")
    assert proc.returncode == 1
    assert f"{run.host}: refusing to seed" in proc.stderr and "writable (@@read_only = 0)" in proc.stderr
    assert "stop hastack-mariadb-writer here" in proc.stderr
    assert tree(datadir) == before and not asides(datadir)
    log = (fake / "log").read_text()
    assert "socat" not in log and "systemctl stop" not in log


def test_a_master_that_becomes_writable_during_the_copy_is_not_replaced(node):
    run, datadir, fake = node
    (fake / "writable_during_copy").touch()
    before = tree(datadir)
    proc = run("seed")
    assert proc.returncode == 1 and "writable (@@read_only = 0)" in proc.stderr
    assert tree(datadir) == before and not asides(datadir)
    assert "systemctl stop" not in (fake / "log").read_text()


def test_a_running_master_that_does_not_answer_is_not_seeded_over(node):
    run, datadir, fake = node
    (fake / "down").touch()
    proc = run("seed")
    assert proc.returncode == 1 and "does not answer" in proc.stderr and not asides(datadir)


def test_a_stopped_fresh_master_is_seeded(node):
    run, datadir, fake = node
    (fake / "active").write_text("no")
    (fake / "down").touch()
    assert run("seed").returncode == 0
    assert (datadir / "hastack").is_dir() and len(asides(datadir)) == 1


def test_a_member_is_left_alone(node):
    run, datadir, fake = node
    (datadir / "hastack").mkdir()
    before = tree(datadir)
    assert run("state").stdout.strip() == "member"
    for step in ("init", "seed"):
        assert run(step).returncode == 0
    assert tree(datadir) == before and (fake / "log").read_text() == ""


def test_the_state_fact_runs_in_sh_before_mariadb_is_installed(tmp_path):
    """The deploy gathers the same test as a fact, with sh, also before the data directory exists."""
    datadir = tmp_path / "mysql"

    def state():
        return subprocess.run(["sh", "-c", c.datadir_state("hastack", str(datadir))], capture_output=True,
                              text=True, check=True).stdout.strip()

    assert state() == "fresh"
    for d in c.SYSTEM_DIRS:
        (datadir / d).mkdir(parents=True)
    (datadir / "ibdata1").write_text("")
    assert state() == "fresh"
    (datadir / "b").mkdir()
    (datadir / "a").mkdir()
    assert state() == "other a b"
    (datadir / "hastack").mkdir()
    assert state() == "member"
