"""Restores without a lab: which backups a point-in-time restore picks, the operator's age key,
and a downloaded object checked before anything is loaded from it."""

import hashlib
import io
import os
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from roles.backup.restore import AgeIdentity, Progress, RestoreError, Source, parse_time
from roles.backup.agent import covers, gtids
from roles.mariadb.restore import binlog_chain, plan, redact

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 29, 3, 15, tzinfo=timezone.utc)


class FakeSource(Source):
    """A bucket listing and its manifests, in memory."""

    def __init__(self, manifests: dict[str, dict]):
        super().__init__("prod", {"backupBucket": "bucket"})
        self.stored = manifests

    def backups(self, kind, host=None):
        found = [{"key": k, "host": m["host"], "time": m["_listed"], "size": 1}
                 for k, m in self.stored.items() if m["kind"] == kind and host in (None, m["host"])]
        return sorted(found, key=lambda b: (b["time"], b["key"]))

    def manifest(self, key):
        return {k: v for k, v in self.stored[key].items() if k != "_listed"}


def full(host, at, gtid):
    return {"kind": "mariadb-full", "host": host, "object": f"{host}/full/{at:%Y%m%dT%H%M}", "created": at.isoformat(),
            "seconds": 20, "gtid": gtid, "_listed": at}


def binlog(host, n, start, end, at):
    return {"kind": "mariadb-binlog", "host": host, "object": f"{host}/binlog/{at:%Y%m%dT%H%M%SZ}-mariadb-bin.{n:06d}",
            "binlog": f"mariadb-bin.{n:06d}",
            "gtid_start": start, "gtid_end": end, "_listed": at}


def source(*manifests):
    return FakeSource({m["object"]: m for m in manifests})


def test_gtid_positions_compare_per_domain():
    assert gtids("1-1-5,2-2-9") == {1: 5, 2: 9}
    assert covers("1-1-5,2-2-9", "1-1-5") and covers("1-1-5,2-2-9", "2-2-3,1-1-4")
    assert not covers("1-1-5", "1-1-5,2-2-1") and not covers("1-1-4,2-2-9", "1-1-5")
    assert covers("1-1-5", "")


def test_the_chain_starts_at_the_backup_and_follows_the_master_that_shipped_furthest():
    m = T0 + timedelta(minutes=1)
    s = source(
        full("db1", T0, "1-1-100,2-2-50"),
        # db1: one file entirely before the backup (left out), then two that continue it
        binlog("db1", 7, "1-1-90,2-2-50", "1-1-100,2-2-50", T0 - timedelta(seconds=10)),
        binlog("db1", 8, "1-1-100,2-2-50", "1-1-120,2-2-50", m),
        binlog("db1", 9, "1-1-120,2-2-50", "1-1-130,2-2-55", m + timedelta(seconds=30)),
        # db2 shipped one more (it outlived db1)
        binlog("db2", 4, "1-1-95,2-2-50", "1-1-120,2-2-50", m),
        binlog("db2", 5, "1-1-120,2-2-50", "1-1-130,2-2-55", m + timedelta(seconds=30)),
        binlog("db2", 6, "1-1-130,2-2-55", "1-1-131,2-2-60", m + timedelta(seconds=60)),
    )
    p = plan(s, None)
    assert p.full["object"] == "db1/full/20261129T0315"
    assert p.binlog_host == "db2" and [b["binlog"] for b in p.binlogs] == [f"mariadb-bin.00000{n}" for n in (4, 5, 6)]


def test_a_gap_ends_the_chain_and_a_chain_that_starts_after_the_backup_is_refused():
    m = T0 + timedelta(minutes=1)
    f = full("db1", T0, "1-1-100")
    gap = source(f, binlog("db1", 8, "1-1-100", "1-1-110", m), binlog("db1", 10, "1-1-115", "1-1-120", m))
    assert [b["binlog"] for b in binlog_chain(gap, gap.manifest(f["object"]), None)["binlogs"]] == ["mariadb-bin.000008"]
    late = source(f, binlog("db2", 3, "1-1-105", "1-1-110", m))
    assert binlog_chain(late, late.manifest(f["object"]), None) == {"binlogs": [], "binlog_host": None}


def test_a_point_in_time_takes_the_last_full_backup_before_it_and_binlogs_up_to_the_first_closed_after():
    s = source(
        full("db1", T0, "1-1-10"), full("db1", T0 + timedelta(hours=24), "1-1-500"),
        binlog("db1", 1, "1-1-5", "1-1-20", T0 + timedelta(minutes=1)),
        binlog("db1", 2, "1-1-20", "1-1-30", T0 + timedelta(minutes=2)),
        binlog("db1", 3, "1-1-30", "1-1-40", T0 + timedelta(minutes=3)),
    )
    p = plan(s, T0 + timedelta(minutes=1, seconds=30))
    assert p.full["gtid"] == "1-1-10"
    assert [b["binlog"] for b in p.binlogs] == ["mariadb-bin.000001", "mariadb-bin.000002"]
    with pytest.raises(RestoreError, match="no complete MariaDB full backup of 'prod' before 2026-11-29T03:14:00"):
        plan(s, T0 - timedelta(minutes=1))


def test_passwords_in_echoed_sql_are_masked():
    text = "ALTER USER 'app'@'10.0.1.20' IDENTIFIED BY 'd0f738db' REQUIRE SSL; MASTER_PASSWORD='abc', x"
    assert "d0f738db" not in redact(text) and "abc'" not in redact(text)
    assert "IDENTIFIED BY '***'" in redact(text)


def test_a_time_is_iso_8601_and_utc_unless_zoned():
    assert parse_time("2026-11-29T21:15:00Z") == datetime(2026, 11, 29, 21, 15, tzinfo=timezone.utc)
    assert parse_time("2026-11-29 21:15") == datetime(2026, 11, 29, 21, 15, tzinfo=timezone.utc)
    assert parse_time("2026-11-29T22:15:00+01:00") == datetime(2026, 11, 29, 21, 15, tzinfo=timezone.utc)
    with pytest.raises(RestoreError, match="--to 'yesterday': not a time"):
        parse_time("yesterday")


# ---------------------------------------------------------------- the age key


@pytest.fixture
def age_key(tmp_path):
    key = tmp_path / "backup.key"
    subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
    os.chmod(key, 0o600)
    return key


def test_restore_refuses_without_an_age_key(monkeypatch):
    monkeypatch.delenv("HASTACK_AGE_KEY", raising=False)
    with pytest.raises(RestoreError, match=r"no age key to decrypt the backups: pass --age-key FILE"):
        AgeIdentity.load(None, "prod")


def test_an_age_key_readable_by_others_or_not_a_key_is_refused(tmp_path, age_key):
    os.chmod(age_key, 0o644)
    with pytest.raises(RestoreError, match=r"readable by others \(mode 0644\); `chmod 600"):
        AgeIdentity.load(age_key, "prod")
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    os.chmod(junk, 0o600)
    with pytest.raises(RestoreError, match="not an age identity file"):
        AgeIdentity.load(junk, "prod")
    with pytest.raises(RestoreError, match="no such file"):
        AgeIdentity.load(tmp_path / "absent.key", "prod")


def test_a_key_that_is_not_a_recipient_is_refused_before_any_download(age_key):
    identity = AgeIdentity.load(age_key, "prod")
    assert identity.recipient.startswith("age1")
    identity.check({"object": "x", "encryption": {"recipients": [identity.recipient]}})
    with pytest.raises(RestoreError, match=r"cannot decrypt db1/full/x: it was encrypted to age1abc"):
        identity.check({"object": "db1/full/x", "encryption": {"recipients": ["age1abcdefghijklmnopqrstuvwxyz"]}})


# ---------------------------------------------------------------- a download


class Body(io.BytesIO):
    def iter_chunks(self, size):
        while chunk := self.read(size):
            yield chunk


class FakeS3:
    def __init__(self, data):
        self.data = data

    def get_object(self, Bucket, Key):  # noqa: N803 - boto3's names
        return {"Body": Body(self.data)}


def encrypted(recipient: str, plain: bytes) -> bytes:
    return subprocess.run(["age", "-r", recipient], input=plain, capture_output=True, check=True).stdout


def test_a_download_is_decrypted_and_checked_against_its_manifest(age_key):
    identity = AgeIdentity.load(age_key, "prod")
    plain = os.urandom(3 * 1024 * 1024)
    blob = encrypted(identity.recipient, plain)
    s = Source("prod", {"backupBucket": "b"}, _client=FakeS3(blob))
    manifest = {"object": "k", "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    progress = Progress(lambda _m: None, len(blob), "k")
    assert b"".join(s.chunks(manifest, identity, progress)) == plain
    assert progress.done == len(blob)

    with pytest.raises(RestoreError, match=r"k is not what was uploaded \(SHA-256"):
        list(s.chunks(dict(manifest, sha256="0" * 64), identity, Progress(lambda _m: None, 1, "k")))


def test_a_download_the_key_cannot_open_fails(age_key, tmp_path):
    other = tmp_path / "other.key"
    subprocess.run(["age-keygen", "-o", str(other)], check=True, capture_output=True)
    recipient = subprocess.run(["age-keygen", "-y", str(other)], capture_output=True, text=True).stdout.strip()
    blob = encrypted(recipient, b"secret")
    s = Source("prod", {"backupBucket": "b"}, _client=FakeS3(blob))
    manifest = {"object": "k", "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
    with pytest.raises(RestoreError, match="age could not decrypt k: .*no identity matched"):
        list(s.chunks(manifest, AgeIdentity.load(age_key, "prod"), Progress(lambda _m: None, 1, "k")))


# ---------------------------------------------------------------- the commands, as an operator runs them


def cli(*args, env=None):
    import sys

    return subprocess.run([sys.executable, "-m", "hastack.cli", *args], capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None})


def test_restore_and_rebuild_refuse_without_an_age_key_before_touching_anything(tmp_path):
    env = {"HASTACK_AGE_KEY": None}
    for args in (["restore", "mariadb"], ["restore", "cassandra"], ["restore", "redis"], ["dr", "rebuild", "--from", "prod"]):
        proc = cli(*args, "--stack", "dr", "--outputs", str(tmp_path / "none.json"), env=env)
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 1 and "no age key to decrypt the backups: pass --age-key FILE" in err, (args, err)


def test_bad_restore_options_name_the_option():
    proc = cli("restore", "mariadb", "--stack", "lab", "--to", "last tuesday")
    assert proc.returncode == 2 and "--to 'last tuesday': not a time" in " ".join(proc.stderr.split())
    proc = cli("restore", "cassandra", "--stack", "lab", "--snapshot", "soon")
    assert proc.returncode == 2 and "--snapshot 'soon': not a time" in " ".join(proc.stderr.split())
    proc = cli("dr", "drill", "--stack", "prod")
    assert proc.returncode == 2 and "a drill destroys machines, so it runs on a lab stack only" in proc.stderr


def test_a_restored_master_starts_a_new_series_and_a_chain_crosses_it_only_where_it_continues():
    from roles.backup.agent import new_series

    assert not new_series(None, ["mariadb-bin.000001", "1-1-1"])
    assert not new_series(["mariadb-bin.000003", "1-1-40"], ["mariadb-bin.000005", "1-1-90"])  # purged
    assert new_series(["mariadb-bin.000009", "1-1-40"], ["mariadb-bin.000001", "1-1-300"])  # RESET MASTER
    assert new_series(["mariadb-bin.000001", "1-1-0"], ["mariadb-bin.000001", "1-1-300"])
    m = T0 + timedelta(minutes=1)
    f = full("db1", T0, "1-1-100")
    s = source(
        f,
        binlog("db1", 1, "1-1-90", "1-1-120", m),
        binlog("db1", 1, "1-1-90", "1-1-120", m + timedelta(seconds=1)),  # shipped twice: counted once
        binlog("db1", 2, "1-1-120", "1-1-150", m + timedelta(seconds=30)),
        # the master restored to 1-1-150 starts over at .000001 and continues from there
        binlog("db1", 1, "1-1-150", "1-1-170", m + timedelta(seconds=90)),
        # a second restore, to an earlier point, starts a series that does not continue this one
        binlog("db1", 1, "1-1-130", "1-1-135", m + timedelta(seconds=150)),
    )
    s.stored = {f"{k}@{i}": v | {"object": f"{k}@{i}"} for i, (k, v) in enumerate(s.stored.items())}
    chain = binlog_chain(s, s.manifest(next(k for k in s.stored if "full" in k)), None)["binlogs"]
    assert [(b["binlog"], b["gtid_end"]) for b in chain] == [
        ("mariadb-bin.000001", "1-1-120"), ("mariadb-bin.000002", "1-1-150"), ("mariadb-bin.000001", "1-1-170")]


def test_the_replay_starts_every_domain_the_binlogs_hold():
    from roles.backup.agent import start_position

    chain = [{"gtid_end": "1-1-120,2-2-7"}, {"gtid_end": "1-1-130,2-2-9,9-1-1"}]
    # domain 2 first took writes after the full backup (a failover), domain 9 later still
    assert start_position("1-1-100", chain) == "1-1-100,2-0-0,9-0-0"
    assert start_position("1-1-100,2-2-5", chain) == "1-1-100,2-2-5,9-0-0"
    assert start_position("1-1-100", []) == "1-1-100"


def test_files_a_restore_left_behind_do_not_continue_a_later_backup():
    """db1's old files hold a transaction (2-2-1) an earlier restore lost; a backup taken later
    (1-1-4784, without it) continues in db2's files, not in those."""
    m = T0 + timedelta(minutes=1)
    f = full("db2", m + timedelta(minutes=5), "1-1-4784")
    s = source(
        f,
        binlog("db1", 1, "1-1-4754", "1-1-4756,2-2-1", m),
        binlog("db1", 2, "1-1-4756,2-2-1", "1-1-4756,2-2-1", m + timedelta(seconds=30)),
        binlog("db2", 2, "1-1-4756", "1-1-4791", m + timedelta(minutes=5, seconds=2)),
        binlog("db2", 3, "1-1-4791", "1-1-4946", m + timedelta(minutes=5, seconds=32)),
    )
    chain = binlog_chain(s, s.manifest(f["object"]), None)
    assert chain["binlog_host"] == "db2" and [b["gtid_end"] for b in chain["binlogs"]] == ["1-1-4791", "1-1-4946"]


def test_a_redis_load_keeps_every_key_without_a_ttl_and_adds_none():
    from roles.redis.restore import loaded_as_expected

    # 100 keys in the backup, 30 of them with a time to live, all 30 expired since the backup
    found = {"keys read": 100, "expires": 30, "already expired": 30}
    assert loaded_as_expected(100, found)  # the expired ones still in memory until the next expiry cycle
    assert loaded_as_expected(70, found)  # ... or already gone
    assert loaded_as_expected(85, found)
    assert not loaded_as_expected(69, found)  # a key without a time to live is missing
    assert not loaded_as_expected(101, found)  # a key the backup did not have
    only_ttl = {"keys read": 72, "expires": 72, "already expired": 72}  # a cache restored after its keys' TTL
    assert loaded_as_expected(72, only_ttl) and loaded_as_expected(0, only_ttl)
