"""The Pulumi program (__main__.py) under a recording engine: no cloud, no CLI."""

import json

import pulumi
import pytest

from hastack import recording
from hastack.stackfile import load_stack, read_stack_file
from roles import host_roles
from tests.support import stack_ca

HOST_ROLES = host_roles()
TOKEN = "test-failover-token-7f3a"
SEED = "test-seed-5d1e"
SECRETS = {"hastack:failoverToken": TOKEN, "hastack:secretSeed": SEED, "hcloud:token": "test-hcloud-token-91bc",
           "hastack:ca": stack_ca.BUNDLE}
SERVER = "hcloud:index/server:Server"
STACKS = ["prod", "staging", "dr"]


def run(stack, flat=None, secrets=SECRETS, references=None):
    if flat is None:
        flat = read_stack_file(stack)[0]
    return recording.run(stack, flat, secrets, references=references)


@pytest.fixture(scope="module", params=STACKS)
def rec(request):
    return run(request.param)


def policy(rec, name):
    return json.loads(rec.named(name).inputs["policy"])


def test_hosts_per_role_match_the_topology(rec):
    topo = load_stack(rec.stack)
    servers = rec.of_type(SERVER)
    assert sorted(s.inputs["name"] for s in servers) == sorted(h.name for h in topo.hosts)
    for role in HOST_ROLES:
        assert len([s for s in servers if s.inputs["labels"]["role"] == role]) == len(topo.hosts_with_role(role))


def test_servers_are_labelled_debian_and_on_the_private_network(rec):
    topo = load_stack(rec.stack)
    for s in rec.of_type(SERVER):
        host = topo.host(s.inputs["name"])
        assert s.inputs["labels"] == {"stack": rec.stack, "role": host.role}
        assert s.inputs["image"] == "debian-12"
        assert s.inputs["location"] == host.location
        assert s.inputs["serverType"] == host.server_type
        assert s.inputs["networks"][0]["ip"] == host.private_ip
        assert len(s.inputs["firewallIds"]) == 1
        assert "placementGroupId" in s.inputs
        assert set(s.ignore_changes) >= {"image", "userData", "sshKeys"}
        assert s.parent.endswith("hastack:hetzner:Stack::hetzner")


def test_one_spread_placement_group_per_role(rec):
    groups = rec.of_type("hcloud:index/placementGroup:PlacementGroup")
    assert all(g.inputs["type"] == "spread" for g in groups)
    assert sorted(g.inputs["labels"]["role"] for g in groups) == sorted(HOST_ROLES)


def test_large_roles_are_split_into_placement_groups_of_ten(prod_flat):
    prod_flat["hastack:roles"]["app"]["count"] = 25
    rec = run("prod", prod_flat)
    app_groups = [g for g in rec.of_type("hcloud:index/placementGroup:PlacementGroup") if g.inputs["labels"]["role"] == "app"]
    assert len(app_groups) == 3


def test_data_servers_and_volumes_are_protected(rec):
    for s in rec.of_type(SERVER):
        data = s.inputs["labels"]["role"] in ("mariadb", "cassandra")
        assert s.protect is data
        assert s.inputs["deleteProtection"] is data and s.inputs["rebuildProtection"] is data
    volumes = rec.of_type("hcloud:index/volume:Volume")
    assert len(volumes) == len(load_stack(rec.stack).hosts_with_role("mariadb")) + len(load_stack(rec.stack).hosts_with_role("cassandra"))
    for v in volumes:
        assert v.protect and v.inputs["deleteProtection"] is True
    assert len(rec.of_type("hcloud:index/volumeAttachment:VolumeAttachment")) == len(volumes)


def test_hetzner_firewalls_expose_only_web_and_admin_ssh(rec):
    topo = load_stack(rec.stack)
    admin = sorted(topo.admin_cidrs)
    for fw in rec.of_type("hcloud:index/firewall:Firewall"):
        role = fw.inputs["labels"]["role"]
        rules = {(r["protocol"], r.get("port")): sorted(r["sourceIps"]) for r in fw.inputs["rules"]}
        assert all(r["direction"] == "in" for r in fw.inputs["rules"])
        assert rules[("tcp", "22")] == admin
        for (_proto, port), sources in rules.items():
            if port == "22":
                continue
            # nothing but 80/443 on the load balancers is reachable from outside
            assert role == "loadbalancer" and port in ("80", "443"), (role, port)
            assert sources == ["0.0.0.0/0", "::/0"]
        for port in ("3306", "6379", "26379", "9042", "7000", "9100", "8080", "9090"):
            assert ("tcp", port) not in rules, (role, port)


def test_floating_ip_assignment_ignores_server_id(rec):
    fip = rec.of_type("hcloud:index/floatingIp:FloatingIp")
    assert len(fip) == 1 and fip[0].inputs["type"] == "ipv4"
    assert fip[0].inputs["homeLocation"] == load_stack(rec.stack).floating_ip_home
    assignment = rec.named("floating-ip-assignment")
    assert assignment.ignore_changes == ["serverId"]
    first_lb = rec.named(f"{rec.stack}-lb1")
    assert assignment.inputs["serverId"] == int(rec.outputs["hosts"].value[f"{rec.stack}-lb1"]["server_id"])
    assert first_lb.inputs["labels"]["role"] == "loadbalancer"


def test_bucket_controls(rec):
    bucket = rec.of_type("aws:s3/bucket:Bucket")[0]
    assert bucket.inputs["objectLockEnabled"] is True and bucket.protect
    assert bucket.inputs.get("forceDestroy") is False
    provider = rec.of_type("pulumi:providers:aws")[0]
    assert provider.inputs["region"] == "eu-central-1"
    assert rec.named("backups-versioning").inputs["versioningConfiguration"]["status"] == "Enabled"
    sse = rec.named("backups-encryption").inputs["rules"][0]["applyServerSideEncryptionByDefault"]
    key = rec.of_type("aws:kms/key:Key")[0]
    assert sse["sseAlgorithm"] == "aws:kms" and sse["kmsMasterKeyId"].startswith("arn:aws:kms:eu-central-1")
    assert key.inputs["enableKeyRotation"] is True and key.protect
    lock = rec.named("backups-object-lock").inputs
    assert lock["objectLockEnabled"] == "Enabled"
    assert lock["rule"]["defaultRetention"] == {"mode": "COMPLIANCE", "days": load_stack(rec.stack).section("backup").retention_days}
    rule = rec.named("backups-lifecycle").inputs["rules"][0]
    assert rule["status"] == "Enabled"
    assert rule["noncurrentVersionExpiration"]["noncurrentDays"] > lock["rule"]["defaultRetention"]["days"]
    assert rule["transitions"][0]["storageClass"] == "GLACIER_IR"
    pab = rec.named("backups-public-access").inputs
    assert all(pab[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
    deny = policy(rec, "backups-policy")["Statement"]
    tls = next(s for s in deny if s["Sid"] == "DenyInsecureTransport")
    assert tls["Effect"] == "Deny" and tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def backup_hosts(stack):
    """The hosts that take backups (the monitoring host runs the backup role to test-restore only)."""
    topo = load_stack(stack)
    return sorted(h.name for h in topo.hosts if "backup" in topo.host_roles(h) and h.role != "monitoring")


def test_one_put_only_writer_per_backup_host(rec):
    hosts = backup_hosts(rec.stack)
    assert hosts and all(h.split("-", 1)[1].startswith(("db", "cass", "redis")) for h in hosts)
    users = {u.name: u.inputs["name"] for u in rec.of_type("aws:iam/user:User")}
    bucket = rec.of_type("aws:s3/bucket:Bucket")[0]
    bucket_arn = f"arn:aws:s3:::{bucket.inputs['bucketPrefix']}"
    key_arn = rec.outputs["backupKeyArn"].value
    for host in hosts:
        assert users[f"backup-writer-{host}"] == f"hastack-{rec.stack}-backup-{host}"
        doc = policy(rec, f"backup-writer-{host}-policy")
        statements = {s["Sid"]: s for s in doc["Statement"]}
        assert all(s["Effect"] == "Allow" for s in doc["Statement"]) and set(statements) == {"PutOwnBackups", "EncryptWithBackupKey"}
        put = statements["PutOwnBackups"]
        assert put["Action"] == ["s3:PutObject", "s3:AbortMultipartUpload"]
        # its own prefix, nothing else: no other host's, not the bucket, not the whole prefix
        assert put["Resource"].startswith(bucket_arn) and put["Resource"].endswith(f"/backups/{host}/*")
        kms = statements["EncryptWithBackupKey"]
        assert kms["Action"] == ["kms:GenerateDataKey", "kms:Decrypt"] and kms["Resource"] == key_arn
        assert kms["Condition"] == {"StringEquals": {"kms:ViaService": "s3.eu-central-1.amazonaws.com"}}
        for action in put["Action"] + kms["Action"]:
            assert not any(word in action for word in ("Get", "List", "Delete", "Bucket", "Retention", "LegalHold",
                                                       "Bypass", "Lifecycle", "*")), action
        text = json.dumps(doc)
        for other in hosts:
            if other != host:
                assert f"/{other}/" not in text


def test_a_new_backup_key_generation_makes_new_keys_under_new_names(prod_flat):
    """Raising hastack:backup.keyGeneration (hastack rotate backup-keys): every writer's and the reader's key is
    a new resource, so Pulumi creates it before the converge and deletes the old one at the end of the update."""
    first = {k.name for k in run("prod", prod_flat).of_type("aws:iam/accessKey:AccessKey")}
    prod_flat.setdefault("hastack:backup", {})["keyGeneration"] = 2
    second = run("prod", prod_flat)
    names = {k.name for k in second.of_type("aws:iam/accessKey:AccessKey")}
    assert "restore-reader-key" in first and "restore-reader-key-2" in names
    assert len(names) == len(first) and not names & first
    assert {k.inputs["user"] for k in second.of_type("aws:iam/accessKey:AccessKey")} == {
        u.inputs["name"] for u in second.of_type("aws:iam/user:User")}


def test_writer_policy_is_a_pure_function_of_its_prefix():
    from hastack.cloud.aws_backup import writer_policy

    doc = json.loads(writer_policy("arn:aws:s3:::b", "arn:aws:kms:eu-central-1:1:key/k", "backups/prod-db1/"))
    assert [s["Resource"] for s in doc["Statement"]] == ["arn:aws:s3:::b/backups/prod-db1/*", "arn:aws:kms:eu-central-1:1:key/k"]


def test_restore_reader_is_separate_and_read_only(rec):
    users = sorted(u.inputs["name"] for u in rec.of_type("aws:iam/user:User"))
    assert users == sorted([f"hastack-{rec.stack}-restore-reader"]
                           + [f"hastack-{rec.stack}-backup-{h}" for h in backup_hosts(rec.stack)])
    statements = {s["Sid"]: s for s in policy(rec, "restore-reader-policy")["Statement"]}
    assert all(s["Effect"] == "Allow" for s in statements.values())
    read, lst, kms = statements["ReadBackups"], statements["ListBackups"], statements["DecryptWithBackupKey"]
    assert read["Action"] == ["s3:GetObject", "s3:GetObjectVersion"] and read["Resource"].endswith("/backups/*")
    assert lst["Action"] == ["s3:ListBucket", "s3:ListBucketVersions"] and "/" not in lst["Resource"].split(":::")[1]
    assert lst["Condition"] == {"StringLike": {"s3:prefix": ["backups/*"]}}
    assert kms["Action"] == ["kms:Decrypt"] and kms["Resource"] == rec.outputs["backupKeyArn"].value
    assert len(statements) == 3


def test_key_policy_denies_disable_and_deletion_to_all_but_break_glass(rec):
    account = recording.ACCOUNT_ID
    role = rec.named("backup-break-glass")
    assert role.inputs["name"] == f"hastack-{rec.stack}-backup-break-glass"
    role_arn = f"arn:aws:iam::{account}:role/hastack/hastack-{rec.stack}-backup-break-glass"
    trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert trust == [{"Sid": "AccountWithMfa", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                      "Action": "sts:AssumeRole", "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "true"}}}]
    statements = {s["Sid"]: s for s in policy(rec, "backup-key")["Statement"]}
    # the account keeps administration: the key never becomes unmanageable
    root = statements["AccountAdministersKey"]
    assert root["Effect"] == "Allow" and root["Principal"] == {"AWS": f"arn:aws:iam::{account}:root"}
    assert root["Action"] == "kms:*"
    deny = statements["DenyKeyDestructionExceptBreakGlass"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == {"AWS": "*"} and deny["Resource"] == "*"
    assert sorted(deny["Action"]) == ["kms:DisableKey", "kms:ScheduleKeyDeletion"]
    # not PutKeyPolicy: KMS's lockout safety check would refuse the deployer (see key_policy)
    assert "kms:PutKeyPolicy" not in deny["Action"]
    assert deny["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": role_arn}}
    glass = statements["BreakGlassMayDisableOrDeleteKey"]
    assert glass["Effect"] == "Allow" and glass["Principal"] == {"AWS": role_arn}
    assert {"kms:DisableKey", "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion"} <= set(glass["Action"])
    assert all(s["Resource"] == "*" for s in statements.values())  # a key policy names its own key as "*"
    assert rec.named("backup-key").protect


def test_key_policy_is_a_pure_function():
    from hastack.cloud.aws_backup import key_policy

    doc = json.loads(key_policy("111122223333", "arn:aws:iam::111122223333:role/bg", ["arn:aws:iam::111122223333:user/ops"]))
    sids = [s["Sid"] for s in doc["Statement"]]
    assert sids == ["AccountAdministersKey", "KeyAdministrators", "BreakGlassMayDisableOrDeleteKey",
                    "DenyKeyDestructionExceptBreakGlass"]
    admins = doc["Statement"][1]
    assert admins["Principal"] == {"AWS": ["arn:aws:iam::111122223333:user/ops"]}
    assert "kms:ScheduleKeyDeletion" not in admins["Action"] and "kms:Disable*" not in admins["Action"]


def test_access_keys_only_as_secrets(rec):
    for key in rec.of_type("aws:iam/accessKey:AccessKey"):
        assert "secret" in key.secret_outputs
    assert rec.outputs["secrets"].secret


def test_no_secret_in_a_plain_output(rec):
    secret = rec.outputs["secrets"].value
    needles = [TOKEN, SEED, SECRETS["hcloud:token"], secret["restore_reader"]["secret_access_key"],
               *(w["secret_access_key"] for w in secret["backup_writers"].values())]
    assert sorted(secret["backup_writers"]) == backup_hosts(rec.stack)
    for name, out in rec.outputs.items():
        if out.secret:
            continue
        text = json.dumps(out.value)
        for needle in needles:
            assert needle not in text, (name, needle[:8])
    assert secret["failover_token"] == TOKEN


def test_hosts_output_has_groups_addresses_and_data(rec):
    hosts = rec.outputs["hosts"].value
    topo = load_stack(rec.stack)
    assert set(hosts) == {h.name for h in topo.hosts}
    lb = hosts[f"{rec.stack}-lb1"]
    assert lb["groups"][:2] == ["base", "loadbalancer"]
    assert lb["public_ipv4"] and lb["private_ip"] == topo.host(f"{rec.stack}-lb1").private_ip
    assert lb["data"]["vrrp_peer_ip"] == topo.host(f"{rec.stack}-lb2").private_ip
    db = hosts[f"{rec.stack}-db1"]
    assert "backup" in db["groups"] and db["volume_id"]
    assert rec.outputs["floatingIp"].value and not rec.outputs["floatingIp"].secret


def test_cloud_init_gives_admins_keys_and_no_password_login(rec):
    import yaml
    server = rec.of_type(SERVER)[0]
    doc = yaml.safe_load(server.inputs["userData"])
    topo = load_stack(rec.stack)
    assert doc["ssh_pwauth"] is False and doc["disable_root"] is True
    assert [u["name"] for u in doc["users"]] == [a.name for a in topo.admins]
    assert doc["users"][0]["ssh_authorized_keys"] == [topo.admins[0].ssh_key]
    sshd = doc["write_files"][0]
    assert "PasswordAuthentication no" in sshd["content"] and "PermitRootLogin no" in sshd["content"]


# ------------------------------------------------------------------ bad config: nothing registered


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["hastack:roles"]["cassandra"].update(count=2), "hastack:roles.cassandra.count = 2"),
    (lambda c: c["hastack:roles"]["mariadb"].update(count=3), "hastack:roles.mariadb.count = 3"),
    (lambda c: c["hastack:roles"]["loadbalancer"].update(count=1), "hastack:roles.loadbalancer.count = 1"),
    (lambda c: c["hastack:network"].update(subnet="192.168.0.0/24"), "must lie inside hastack:network.ipRange"),
    (lambda c: c["hastack:network"].update(ipRange="8.8.0.0/16", subnet="8.8.1.0/24"), "not a private range"),
    (lambda c: c.update({"hastack:locations": ["nbg1", "ber1"]}), "hastack:locations[1] = 'ber1': unknown location"),
    (lambda c: c["hastack:roles"]["app"].update(serverType="cx99"), "hastack:roles.app.serverType = 'cx99'"),
    (lambda c: c.update({"hastack:admins": []}), "hastack:admins = []"),
    (lambda c: c.update({"hastack:adminCidrs": ["0.0.0.0/0"]}), "would open SSH to the whole internet"),
    (lambda c: c["hastack:roles"]["redis"].update(names=["prod-db1", "prod-db9"]), "host name 'prod-db1' is also used"),
    (lambda c: c["hastack:roles"].update(webserver={"count": 1, "serverType": "cx22"}), "hastack:roles.webserver: unknown role"),
    (lambda c: c.update({"hastack:restoreFrom": "a b"}), "hastack:restoreFrom = 'a b': must name a stack"),
    (lambda c: c.update({"hastack:restoreFrom": "prod"}), "hastack:restoreFrom = 'prod': names this stack (prod)"),
])
def test_bad_config_fails_before_any_resource(prod_flat, mutate, message):
    mutate(prod_flat)
    with pytest.raises(pulumi.RunError) as exc:
        run("prod", prod_flat)
    assert message in str(exc.value)
    assert "invalid stack config" in str(exc.value)


def test_missing_secret_fails_before_any_resource(prod_flat):
    with pytest.raises(pulumi.RunError, match=r"hastack:failoverToken: required secret is not set"):
        run("prod", prod_flat, secrets={})


def test_a_stack_without_its_ca_stops_before_any_resource(prod_flat):
    secrets = {k: v for k, v in SECRETS.items() if k != "hastack:ca"}
    with pytest.raises(pulumi.RunError) as err:
        run("prod", prod_flat, secrets=secrets)
    assert "hastack:ca: required secret is not set; run `hastack ca store --stack prod`" in str(err.value)
    from pulumi.runtime import settings
    assert settings.SETTINGS.monitor.recording.resources == []


def test_the_ca_reaches_the_converge_as_a_secret_only(rec):
    conv = rec.named("converge")
    assert conv.inputs["outputs"]["secrets"]["ca"] == stack_ca.OUTPUT
    assert rec.outputs["secrets"].secret
    for name, out in rec.outputs.items():
        if not out.secret:
            assert "PRIVATE KEY" not in json.dumps(out.value, default=str), name


def test_failed_run_registers_nothing(prod_flat):
    prod_flat["hastack:roles"]["cassandra"]["count"] = 2
    with pytest.raises(pulumi.RunError) as err:
        run("prod", prod_flat)
    assert "hastack:roles.cassandra.count = 2: must be at least 3 and at most 60" in str(err.value)
    # the recorder of that failed run holds no resource at all
    from pulumi.runtime import settings
    assert settings.SETTINGS.monitor.recording.resources == []


def test_lab_stack_is_refused_by_pulumi_up():
    with pytest.raises(pulumi.RunError, match="use `hastack lab up`"):
        run("lab", secrets={})


# ------------------------------------------------------------------ the converge at the end of `pulumi up`


def test_pulumi_up_ends_with_a_converge_of_every_host(rec):
    from hastack.cloud.converge_resource import code_digest

    conv = rec.named("converge")
    assert conv.type == "pulumi-python:dynamic:Resource"
    assert set(conv.inputs["outputs"]["hosts"]) == {h.name for h in load_stack(rec.stack).hosts}
    assert conv.inputs["outputs"]["secrets"]["failover_token"] == TOKEN
    assert len(conv.inputs["digest"]) == 64
    assert conv.inputs["stack"] == rec.stack
    assert code_digest()  # roles and templates are part of what triggers it


def test_converge_can_be_turned_off(prod_flat):
    prod_flat["hastack:converge"] = False
    rec = run("prod", prod_flat)
    assert not [r for r in rec.resources if r.name == "converge"]


def test_converge_reruns_only_when_data_or_code_change():
    from hastack.cloud.converge_resource import ConvergeProvider

    p = ConvergeProvider()
    same = {"digest": "a", "ssh_user": ""}
    assert p.diff("id", same, dict(same)).changes is False
    assert p.diff("id", same, {"digest": "b", "ssh_user": ""}).changes is True
    assert p.diff("id", same, {"digest": "a", "ssh_user": "bob"}).changes is True


def test_code_digest_follows_templates_roles_and_the_code_the_converge_runs(tmp_path):
    import shutil

    from hastack.cloud.converge_resource import PROJECT_DIR, code_digest, converge_modules

    modules = converge_modules()
    names = {str(m.relative_to(PROJECT_DIR)) for m in modules}
    assert {"hastack/converge.py", "hastack/inventory.py", "hastack/pki.py", "hastack/secrets.py"} <= names
    assert not {"hastack/cli.py", "hastack/ci.py", "hastack/plan.py"} & names  # commands, not converge code
    for d in ("roles", "templates", "hastack"):
        shutil.copytree(PROJECT_DIR / d, tmp_path / d, ignore=shutil.ignore_patterns("__pycache__"))
    copied = [tmp_path / m.relative_to(PROJECT_DIR) for m in modules]
    before = code_digest(tmp_path, copied)
    assert before == code_digest(PROJECT_DIR, modules)
    for path, text in (("hastack/cli.py", "# a command changed\n"), ("templates/base/etc/hosts.j2", "changed\n"),
                       ("roles/mariadb/writer_agent.py", "# an agent changed\n"), ("hastack/pki.py", "# changed\n")):
        (tmp_path / path).write_text((tmp_path / path).read_text() + text)
        after = code_digest(tmp_path, copied)
        assert (after != before) is (path != "hastack/cli.py"), path
        before = after


def test_the_converge_digest_covers_the_hosts_the_secrets_and_the_code(prod_flat, monkeypatch):
    import hastack.program
    from hastack.cloud.converge_resource import code_digest, data_digest

    digested = []
    monkeypatch.setattr(hastack.program, "data_digest", lambda v: digested.append(v) or data_digest(v))
    rec = run("prod", prod_flat)
    [(hosts, secrets, code)] = digested
    assert set(hosts) == {h.name for h in load_stack("prod").hosts}
    assert secrets["seed"] == SEED and secrets["failover_token"] == TOKEN and secrets["ca"] == stack_ca.OUTPUT
    assert set(secrets["backup_writers"]) and secrets["restore_reader"]
    assert code == code_digest()
    assert rec.named("converge").inputs["digest"] == data_digest([hosts, secrets, code])


@pytest.mark.parametrize("key", ["hastack:secretSeedNext", "hastack:secretSeedPrevious"])
def test_a_seed_rotation_gives_the_converge_the_other_seed_as_a_secret(prod_flat, key):
    rec = run("prod", prod_flat, secrets={**SECRETS, key: "other-seed-31c"})
    secrets = rec.named("converge").inputs["outputs"]["secrets"]
    assert secrets["seed"] == SEED and secrets["seed_also"] == "other-seed-31c"
    assert rec.outputs["secrets"].secret
    assert "seed_also" not in run("prod", prod_flat).named("converge").inputs["outputs"]["secrets"]


@pytest.mark.parametrize("key", ["hastack:caNext", "hastack:caPrevious"])
def test_a_ca_rotation_gives_the_converge_the_other_cas_certificate_and_never_its_key(prod_flat, key):
    from hastack.pki import new_ca

    cert, private = new_ca("prod")
    rec = run("prod", prod_flat, secrets={**SECRETS, key: cert + private})
    secrets = rec.named("converge").inputs["outputs"]["secrets"]
    assert secrets["ca"] == stack_ca.OUTPUT and secrets["ca_also"] == [cert]
    assert private not in str(rec.named("converge").inputs)
    assert "ca_also" not in run("prod", prod_flat).named("converge").inputs["outputs"]["secrets"]


@pytest.mark.parametrize("both", [{"hastack:secretSeedNext": "n", "hastack:secretSeedPrevious": "p"},
                                  {"hastack:caNext": "n", "hastack:caPrevious": "p"}])
def test_a_rotation_with_both_other_values_stops_before_any_resource(prod_flat, both):
    both = {**SECRETS, **both}
    with pytest.raises(pulumi.RunError, match="both set"):
        run("prod", prod_flat, secrets=both)
    from pulumi.runtime import settings
    assert settings.SETTINGS.monitor.recording.resources == []


@pytest.mark.parametrize("key", ["hcloud:token", "aws:secretKey", "aws:accessKey"])
def test_provider_credentials_in_plain_text_fail_before_any_resource(prod_flat, key):
    prod_flat[key] = "AKIAEXAMPLEVALUE"
    with pytest.raises(pulumi.RunError) as err:
        run("prod", prod_flat, secrets={k: v for k, v in SECRETS.items() if k != key})
    assert f"{key}: is stored in plain text; remove it and run `pulumi config set --secret {key} <value>`" in str(err.value)
    assert "AKIAEXAMPLEVALUE" not in str(err.value)
    from pulumi.runtime import settings
    assert settings.SETTINGS.monitor.recording.resources == []


# ------------------------------------------------------------------ restoring from another stack

# prod's outputs as its stack reference returns them (hastack.outputs.stack_outputs)
PROD_OUTPUTS = {
    "hosts": {"prod-db1": {"groups": ["base", "mariadb", "backup", "nbg1"], "private_ip": "10.20.1.60"}},
    "floatingIp": "203.0.113.10",
    "floatingIpId": "7",
    "backupBucket": "hastack-prod-backups-20260101",
    "backupRegion": "eu-central-1",
    "backupKeyArn": "arn:aws:kms:eu-central-1:000000000000:key/prod",
    "secrets": {
        "failover_token": "prod-failover-token",
        "seed": "prod-seed",
        "backup_writers": {"prod-db1": {"access_key_id": "AKIAPRODDB1", "secret_access_key": "prod-db1-writer-secret"}},
        "restore_reader": {"access_key_id": "AKIAPRODREADER", "secret_access_key": "prod-reader-secret"},
    },
}


def test_dr_exports_prods_bucket_and_reader_as_a_secret():
    rec = run("dr", references={"organization/hastack/prod": PROD_OUTPUTS})
    # a bare name is a stack of this organization and project
    assert [(r.type, r.inputs["name"]) for r in rec.reads] == [("pulumi:pulumi:StackReference", "organization/hastack/prod")]
    source = rec.outputs["restoreSource"]
    assert source.secret
    assert source.value == {
        "stack": "prod",
        "backupBucket": "hastack-prod-backups-20260101",
        "backupRegion": "eu-central-1",
        "secrets": {"restore_reader": {"access_key_id": "AKIAPRODREADER", "secret_access_key": "prod-reader-secret"}},
    }
    # the reader only: prod's seed, failover token and writers stay in prod
    text = json.dumps({name: out.value for name, out in rec.outputs.items()})
    for needle in ("prod-seed", "prod-failover-token", "prod-db1-writer-secret"):
        assert needle not in text
    # dr keeps its own bucket for its own backups
    assert rec.outputs["backupBucket"].value.startswith("hastack-dr-backups-")
    assert "restoreSource" not in rec.named("converge").inputs["outputs"]


def test_restore_source_is_what_a_restore_from_the_source_reads():
    from roles.backup.restore import source_for

    rec = run("dr", references={"organization/hastack/prod": PROD_OUTPUTS})
    outputs = {name: out.value for name, out in rec.outputs.items()}
    source = source_for("dr", outputs, "prod")
    assert source.stack == "prod" and source.bucket == "hastack-prod-backups-20260101"
    assert source.outputs["secrets"]["restore_reader"]["access_key_id"] == "AKIAPRODREADER"
    assert source.outputs["backupRegion"] == "eu-central-1"


def test_a_stack_reference_is_used_as_given():
    flat = read_stack_file("dr")[0]
    flat["hastack:restoreFrom"] = "acme/hastack/prod"
    rec = run("dr", flat, references={"acme/hastack/prod": PROD_OUTPUTS})
    assert [r.inputs["name"] for r in rec.reads] == ["acme/hastack/prod"]
    assert rec.outputs["restoreSource"].value["stack"] == "acme/hastack/prod"
    assert rec.outputs["restoreSource"].value["backupBucket"] == "hastack-prod-backups-20260101"


@pytest.mark.parametrize("stack", ["prod", "staging"])
def test_a_stack_without_restore_from_exports_no_restore_source(stack):
    rec = run(stack)
    assert "restoreSource" not in rec.outputs
    assert rec.reads == []
    for host in load_stack(stack).hosts_with_role("mariadb"):
        assert rec.outputs["hosts"].value[host.name]["data"]["mariadb_hold_new_pair"] is False


def test_a_restored_stacks_mariadb_hosts_hold_a_new_pair():
    rec = run("dr", references={"organization/hastack/prod": PROD_OUTPUTS})
    hosts = rec.outputs["hosts"].value
    db = [name for name, h in hosts.items() if "mariadb" in h["groups"]]
    assert db == ["dr-db1", "dr-db2"]
    assert all(hosts[name]["data"]["mariadb_hold_new_pair"] is True for name in db)
    assert not any("mariadb_hold_new_pair" in h["data"] for name, h in hosts.items() if name not in db)


def test_a_source_without_backups_fails_naming_the_key():
    outputs = {k: v for k, v in PROD_OUTPUTS.items() if k not in ("backupBucket", "backupRegion", "secrets")}
    with pytest.raises(pulumi.RunError) as err:
        run("dr", references={"organization/hastack/prod": outputs})
    assert str(err.value) == ("hastack:restoreFrom = 'prod': that stack's outputs have no backupBucket, backupRegion, "
                              "secrets.restore_reader; it must be a hastack stack on Hetzner that has run `pulumi up`")


def test_restore_from_naming_this_stack_by_reference_is_refused(prod_flat):
    prod_flat["hastack:restoreFrom"] = "acme/hastack/prod"
    with pytest.raises(pulumi.RunError) as err:
        run("prod", prod_flat)
    assert "hastack:restoreFrom = 'acme/hastack/prod': names this stack (prod)" in str(err.value)
    from pulumi.runtime import settings
    assert settings.SETTINGS.monitor.recording.resources == []
    assert settings.SETTINGS.monitor.recording.reads == []
