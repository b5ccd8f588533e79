"""Stack outputs (as `pulumi stack output --json --show-secrets` prints them) -> pyinfra inventory."""

import copy
import json
from pathlib import Path

import pytest

from hastack.inventory import InventoryError, host_entries, inventory_from_outputs

FIXTURE = Path(__file__).parent.parent / "fixtures" / "prod-stack-outputs.json"


@pytest.fixture
def outputs():
    return json.loads(FIXTURE.read_text())


def test_every_host_with_groups_and_connection(outputs):
    inv = inventory_from_outputs(outputs)
    names = sorted(h.name for h in inv)
    assert names == sorted(outputs["hosts"])
    lbs = sorted(h.name for h in inv.get_group("loadbalancer"))
    assert lbs == ["prod-lb1", "prod-lb2"]
    assert sorted(h.name for h in inv.get_group("backup")) == ["prod-cass1", "prod-cass2", "prod-cass3", "prod-db1", "prod-db2"]
    assert len(inv.get_group("base")) == 13
    assert len(inv.get_group("nbg1")) + len(inv.get_group("fsn1")) == 13
    lb1 = inv.get_host("prod-lb1")
    assert lb1.data.ssh_hostname == outputs["hosts"]["prod-lb1"]["public_ipv4"]
    assert lb1.data.ssh_user == "alice"
    assert lb1.data.private_ip == "10.20.1.10"
    assert lb1.data.vrrp_peer_ip == "10.20.1.11"
    assert lb1.data.floating_ip == outputs["floatingIp"]


def test_secrets_only_where_needed(outputs):
    inv = inventory_from_outputs(outputs)
    assert inv.get_host("prod-lb2").data.failover_token == "recorded-failover-token"
    assert inv.get_host("prod-app1").data.get("failover_token") is None
    assert inv.get_host("prod-lb1").data.get("backup_credentials") is None


def test_each_backup_host_gets_only_its_own_writer_key(outputs):
    inv = inventory_from_outputs(outputs)
    writers = outputs["secrets"]["backup_writers"]
    backup_hosts = sorted(h.name for h in inv.get_group("backup"))
    assert sorted(writers) == backup_hosts
    for name in backup_hosts:
        creds = inv.get_host(name).data.backup_credentials
        assert creds == {**writers[name], "bucket": outputs["backupBucket"], "region": "eu-central-1",
                         "prefix": f"backups/{name}/"}
        data = json.dumps(inv.get_host(name).data.dict(), default=str)
        for other, key in writers.items():
            if other != name:
                assert key["secret_access_key"] not in data and key["access_key_id"] not in data, (name, other)
        # the restore key never reaches a host
        assert outputs["secrets"]["restore_reader"]["secret_access_key"] not in data
    for host in inv:
        if host.name not in backup_hosts:
            assert host.data.get("backup_credentials") is None, host.name


def test_backup_endpoint_defaults_to_aws(outputs):
    data = inventory_from_outputs(outputs).get_host("prod-db1").data
    # the role's provided defaults: AWS's own endpoint and the system's CAs
    from roles.backup import DEFAULTS

    assert DEFAULTS["backup_s3_endpoint"] is None and DEFAULTS["backup_s3_ca"] is None
    assert data.get("backup_s3_endpoint") is None


def test_ssh_user_override(outputs):
    assert host_entries(outputs, ssh_user="bob")["prod-app1"]["ssh_user"] == "bob"


def test_encrypted_secrets_are_refused(outputs):
    outputs["secrets"] = "[secret]"
    with pytest.raises(InventoryError, match="--show-secrets"):
        host_entries(outputs)


def test_incomplete_outputs_are_refused():
    with pytest.raises(InventoryError, match="lack hosts, floatingIp"):
        host_entries({"backupBucket": "x"})


def test_redis_passwords_only_for_redis_and_the_app(outputs):
    from roles.redis import passwords as redis_passwords

    outputs["secrets"]["seed"] = "seed-for-test"
    inv = inventory_from_outputs(outputs)
    expected = redis_passwords("seed-for-test")
    assert inv.get_host("prod-redis1").data.redis_passwords == expected
    assert inv.get_host("prod-mon1").data.redis_passwords == expected  # the third sentinel
    assert inv.get_host("prod-app1").data.redis_passwords == {"app": expected["app"]}
    assert inv.get_host("prod-db1").data.get("redis_passwords") is None
    assert len(set(expected.values())) == 5


def test_the_commands_connect_as_hastack_ssh_user_when_set(monkeypatch):
    """`hastack converge`, `status` and `backup` connect as the converge at the end of `pulumi up`
    does: as HASTACK_SSH_USER (a CI pipeline's own admin) when it is set, else as the first admin."""
    from hastack.console import stack_entries

    monkeypatch.delenv("HASTACK_SSH_USER", raising=False)
    assert {d["ssh_user"] for d in stack_entries("prod", FIXTURE).values()} == {"alice"}
    monkeypatch.setenv("HASTACK_SSH_USER", "bob")
    assert {d["ssh_user"] for d in stack_entries("prod", FIXTURE).values()} == {"bob"}


def test_connecting_as_an_account_the_converge_removes_is_refused(outputs):
    for host in outputs["hosts"].values():
        host["data"]["admins"] = [a for a in host["data"]["admins"] if a["name"] != "bob"]
    with pytest.raises(InventoryError, match=r"connects as 'bob' .*not an admin of the stack \(admins: alice\).*"
                                             "remove the account it logs in with"):
        host_entries(outputs, ssh_user="bob")


def test_a_hosts_data_is_looked_up_as_pyinfra_does_with_the_groups_merged_once(outputs):
    """hastack.converge replaces pyinfra's HostData lookup with a faster one, and the inventory merges a
    host's groups' data once: the answers stay pyinfra's (layer order, a copy of the value, AttributeError)."""
    import pyinfra.api.host as pyinfra_host
    from pyinfra.api.inventory import Inventory

    import hastack.converge  # noqa: F401 - installs the lookup

    def pyinfras(data, key):  # pyinfra 3's HostData.__getattr__, as it ships
        for layer in pyinfra_host.extract_callable_datas(data.datas):
            try:
                return copy.copy(layer[key])
            except KeyError:
                pass
        raise AttributeError(key)

    inv = inventory_from_outputs(outputs)
    host = inv.get_host("prod-lb1")
    merges = []
    original = Inventory.get_groups_data
    Inventory.get_groups_data = lambda self, groups: merges.append(tuple(groups)) or original(self, groups)
    try:
        host.data.private_ip = "10.9.9.9"  # an override comes first
        for key in ["ssh_user", "private_ip", "roles", "groups", "_sudo", "_no_such_key", "secrets"]:
            try:
                want = pyinfras(host.data, key)
            except AttributeError:
                with pytest.raises(AttributeError):
                    getattr(host.data, key)
                continue
            got = getattr(host.data, key)
            assert got == want
            if isinstance(got, (list, dict)):
                assert got is not want and got is not pyinfras(host.data, key)  # a copy each time
        assert host.data.private_ip == "10.9.9.9"
        assert len(set(merges)) == len(merges) <= 1, merges  # merged the first time, then kept
    finally:
        Inventory.get_groups_data = original
