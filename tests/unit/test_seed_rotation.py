"""The seed rotation's stages, how they are stored, and what each converge is given."""

from __future__ import annotations

import pytest

from hastack.lab.layout import Paths, lab_seed_state, save_lab_seed_state
from hastack.secrets import accepted, derive, seeds
from hastack.seed_rotation import RotationError, SeedState, rotate, rotation_steps


def test_a_rotation_is_three_converges_accept_switch_done():
    steps = rotation_steps(SeedState("old"))
    assert [s.stage for s in steps] == ["accept", "switch", "done"]
    new = steps[0].next
    assert len(new) == 64 and new != "old"
    assert steps[0].secrets() == {"seed": "old", "seed_also": new}      # clients keep the old, services take both
    assert steps[1].secrets() == {"seed": new, "seed_also": "old"}      # clients move, services still take both
    assert steps[2].secrets() == {"seed": new}                          # the old stops working


def test_services_accept_the_clients_password_first_and_the_other_seeds_while_it_rotates():
    both = accepted(seeds({"seed": "a", "seed_also": "b"}), "redis", ["app"])
    assert both == {"app": [derive("a", "redis/app"), derive("b", "redis/app")]}
    assert accepted(seeds({"seed": "a"}), "redis", ["app"]) == {"app": [derive("a", "redis/app")]}


def test_a_rotation_found_half_way_converges_where_it_stopped_then_carries_on():
    stored = [SeedState("new", previous="old")]
    converged = []
    stages = rotate(lambda: stored[-1], stored.append, converged.append, say=lambda m: None)
    assert stages == converged == ["switch", "done"]
    assert stored[-1] == SeedState("new")


def test_a_failed_converge_stops_the_rotation_with_its_state_stored():
    stored = [SeedState("old")]

    def converge(stage):
        if stage == "switch":
            raise RotationError("switch failed")

    with pytest.raises(RotationError):
        rotate(lambda: stored[-1], stored.append, converge, say=lambda m: None)
    assert stored[-1].stage == "switch" and stored[-1].previous == "old"


def test_both_other_seeds_set_is_refused_unless_a_save_was_interrupted():
    with pytest.raises(RotationError, match="both set"):
        SeedState("s", next="n", previous="p")
    # interrupted between writing previous and the seed, then between the seed and removing next
    assert SeedState.stored("old", next="new", previous="old") == SeedState("old", next="new")
    assert SeedState.stored("new", next="new", previous="old") == SeedState("new", previous="old")


def test_the_lab_keeps_each_stage_in_private_files(tmp_path):
    paths = Paths(tmp_path)
    first = lab_seed_state(paths)
    for step in rotation_steps(first):
        save_lab_seed_state(paths, step)
        assert lab_seed_state(paths) == step
        assert all(oct(p.stat().st_mode)[-3:] == "600" for p in paths.secrets.iterdir())
    assert sorted(p.name for p in paths.secrets.iterdir()) == ["seed"]


def test_during_a_seed_rotation_the_verifier_decrypts_backups_made_for_either_seed(tmp_path):
    """The test restore's key derives from the seed: backups taken before the switch are encrypted to the old
    seed's key, those after it to the new one's; the verifier holds both until the rotation is done."""
    import shutil
    import subprocess

    from roles.backup import _from_outputs
    from roles.backup.verify_key import verify_identity

    if shutil.which("age") is None:
        pytest.fail("age is not installed (package age)")
    old, new = "1" * 64, "2" * 64
    data = {"backup_verifier": True, "backup_bucket_prefix": "backups/"}
    reader = {"access_key_id": "AKIAREADER", "secret_access_key": "s"}
    for secrets, holds in (({"seed": old}, [old]), ({"seed": old, "seed_also": new}, [old, new]),
                           ({"seed": new, "seed_also": old}, [new, old]), ({"seed": new}, [new])):
        identity = tmp_path / "identity"
        identity.write_text(_from_outputs({"backupBucket": "b"}, {**secrets, "restore_reader": reader}, data)
                            ["backup_verify_identity"] + "\n")
        for seed in (old, new):
            sealed = subprocess.run(["age", "-r", verify_identity(seed)[1]], input=b"rows", capture_output=True,
                                    check=True).stdout
            opened = subprocess.run(["age", "-d", "-i", str(identity)], input=sealed, capture_output=True)
            assert (opened.returncode == 0 and opened.stdout == b"rows") == (seed in holds), (secrets, seed)
