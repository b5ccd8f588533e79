"""The policy rules (hastack.policy): each rule rejects a violating resource and accepts a
compliant one; the real stacks are clean; the policy pack (policy/, hastack.policy.pack)
reports what `hastack plan` reports; `hastack plan` fails on a violation."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hastack import policy
from hastack.model import LOCATIONS
from hastack.plan import make_plan
from hastack.policy import Resource, StackFacts, evaluate
from hastack.policy import rules as R

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "203.0.113.0/24"
FACTS = StackFacts(admin_cidrs=(ADMIN,))
CLEAN_STACKS = ["prod", "staging", "dr", "example"]


def rule(name: str):
    return next(r for r in policy.all_rules() if r.name == name)


def check(name: str, resources: list[Resource]) -> list[policy.Violation]:
    found = evaluate(resources, FACTS, [rule(name)])
    assert all(v.rule == name for v in found)
    return found


# ---------------------------------------------------------------- resources made by hand


def server(name="db1", role="mariadb", protect=True, **props) -> Resource:
    base = {"name": name, "location": "fsn1", "labels": {"stack": "t", "role": role}, "firewallIds": [1],
            "placementGroupId": 7, "deleteProtection": protect, "rebuildProtection": protect}
    deps = {"placementGroupId": ("urn:group",)} if "placementGroupId" not in props else {}
    return Resource(R.SERVER, name, {**base, **props}, protect=protect, property_dependencies=deps)


def group(type_="spread") -> Resource:
    return Resource(R.PLACEMENT_GROUP, "spread-mariadb-1", {"type": type_}, urn="urn:group")


def firewall(*rules: tuple[str, str | None, list[str]]) -> Resource:
    return Resource(R.FIREWALL, "firewall-loadbalancer", {"rules": [
        {"direction": "in", "protocol": proto, "port": port, "sourceIps": sources} for proto, port, sources in rules]})


WEB_FIREWALL = firewall(("tcp", "22", [ADMIN]), ("tcp", "80", list(R.WORLD)), ("tcp", "443", list(R.WORLD)),
                        ("tcp", "9090", ["203.0.113.7/32"]))


def user_policy(*actions: str, name="writer-policy") -> Resource:
    doc = {"Version": "2012-10-17", "Statement": [{"Sid": "S", "Effect": "Allow", "Action": list(actions),
                                                    "Resource": "arn:aws:s3:::b/*"}]}
    return Resource(R.USER_POLICY, name, {"user": "hastack-t-backup-t-db1", "policy": json.dumps(doc)})


# ---------------------------------------------------------------- resources of the prod plan, changed


@pytest.fixture(scope="module")
def prod() -> list[Resource]:
    return policy.from_recording(make_plan("prod").recording)


def changed(resources: list[Resource], name: str, props: dict | None = None, **fields) -> list[Resource]:
    """``resources`` with the one named ``name`` changed: ``props`` merged into its properties
    (a value of None removes the property), ``fields`` replaced (protect, ignore_changes)."""
    assert sum(r.name == name for r in resources) == 1, name
    out = []
    for r in resources:
        if r.name == name:
            merged = {k: v for k, v in {**r.props, **(props or {})}.items() if v is not None}
            r = dataclasses.replace(r, props=merged, **fields)
        out.append(r)
    return out


def without(resources: list[Resource], name: str) -> list[Resource]:
    assert any(r.name == name for r in resources), name
    return [r for r in resources if r.name != name]


def with_document(resources: list[Resource], name: str, edit) -> list[Resource]:
    """``resources`` with the JSON policy document of ``name`` edited by ``edit(doc)``."""
    doc = json.loads(next(r for r in resources if r.name == name).props["policy"])
    edit(doc)
    return changed(resources, name, {"policy": json.dumps(doc)})


def _add_read(doc):
    doc["Statement"][0]["Action"].append("s3:GetObject")


def _drop_tls(doc):
    doc["Statement"] = [s for s in doc["Statement"] if s["Sid"] != "DenyInsecureTransport"]


# ---------------------------------------------------------------- one case per rule

# rule -> (compliant resources, violating resources, the offending resource, a fragment of its message);
# a callable takes the prod plan's resources
CASES = {
    "data-servers-protected": (
        [server(), server("app1", role="app", protect=False)],
        [server(rebuildProtection=False)], "db1", "rebuildProtection = False; valid: rebuildProtection = True"),
    "data-volumes-protected": (
        [Resource(R.VOLUME, "db1-data", {"location": "fsn1", "deleteProtection": True}, protect=True)],
        [Resource(R.VOLUME, "db1-data", {"location": "fsn1", "deleteProtection": True}, protect=False)],
        "db1-data", "without Pulumi protect; valid: protect=True"),
    "world-reaches-web-only": (
        [WEB_FIREWALL],
        [firewall(("tcp", "9090", ["0.0.0.0/0"]))], "firewall-loadbalancer",
        "tcp 9090, is open to 0.0.0.0/0 (outside the admin networks 203.0.113.0/24); valid from there: tcp 80 and tcp 443"),
    "ssh-from-admin-networks-only": (
        [WEB_FIREWALL, firewall(("tcp", "22", ["203.0.113.128/25"]))],
        [firewall(("tcp", "20-30", [ADMIN, "198.51.100.0/24"]))], "firewall-loadbalancer",
        "lets 198.51.100.0/24 reach SSH; valid sources: the admin networks 203.0.113.0/24"),
    "servers-behind-firewall": (
        [server()], [server(firewallIds=[])], "db1", "has no firewall"),
    "eu-locations-only": (
        [server(location="hel1"), Resource(R.VOLUME, "db1-data", {"location": "nbg1"}),
         Resource(R.FLOATING_IP, "floating-ip", {"homeLocation": "fsn1"})],
        [server(location="ash")], "db1", "location 'ash' is outside the EU; valid: fsn1, nbg1, hel1"),
    "servers-spread": (
        [server(), group()], [server(), group("anti-affinity")], "db1",
        "placement group 'spread-mariadb-1' of type 'anti-affinity'; valid: type 'spread'"),
    "floating-ip-assignment-ignores-server-id": (
        [Resource(R.FLOATING_IP_ASSIGNMENT, "floating-ip-assignment", {"serverId": 1}, ignore_changes=("serverId",))],
        [Resource(R.FLOATING_IP_ASSIGNMENT, "floating-ip-assignment", {"serverId": 1})],
        "floating-ip-assignment", "without ignore_changes on serverId"),
    "backup-bucket-versioned": (
        lambda prod: prod,
        lambda prod: changed(prod, "backups-versioning", {"versioningConfiguration": {"status": "Suspended"}}),
        "backups-versioning", "status 'Suspended' for bucket 'backups'; valid: 'Enabled'"),
    "backup-bucket-object-lock-compliance": (
        lambda prod: prod,
        lambda prod: changed(prod, "backups-object-lock",
                             {"rule": {"defaultRetention": {"mode": "GOVERNANCE", "days": 35}}}),
        "backups-object-lock", "mode 'GOVERNANCE' for bucket 'backups'; valid: 'COMPLIANCE'"),
    "backup-bucket-sse-kms-rotated": (
        lambda prod: prod,
        lambda prod: changed(prod, "backup-key", {"enableKeyRotation": False}),
        "backup-key", "enableKeyRotation = False; valid: True"),
    "backup-bucket-public-access-blocked": (
        lambda prod: prod,
        lambda prod: changed(prod, "backups-public-access", {"restrictPublicBuckets": False}),
        "backups-public-access", "leaves restrictPublicBuckets off"),
    "backup-bucket-tls-only": (
        lambda prod: prod,
        lambda prod: with_document(prod, "backups-policy", _drop_tls),
        "backups-policy", "does not deny plain HTTP to bucket 'backups'"),
    "backup-bucket-and-key-protected": (
        lambda prod: prod,
        lambda prod: changed(prod, "backups", protect=False),
        "backups", "a backup bucket without Pulumi protect"),
    "iam-no-wildcard-actions": (
        [user_policy("s3:PutObject", "s3:AbortMultipartUpload")],
        [user_policy("s3:PutObject", "s3:Get*")], "writer-policy",
        "statement 'S': allows s3:Get*; a wildcard grants every matching action"),
    "backup-writer-put-only": (
        lambda prod: prod,
        lambda prod: with_document(prod, "backup-writer-prod-db1-policy", _add_read),
        "backup-writer-prod-db1-policy",
        "allows backup writer 'backup-writer-prod-db1' s3:GetObject, which reads or deletes backups"),
}


def _resources(given, prod):
    return given(prod) if callable(given) else given


def test_every_rule_has_a_case_and_a_kebab_case_name_and_a_description():
    names = [r.name for r in policy.all_rules()]
    assert sorted(names) == sorted(CASES) and len(set(names)) == len(names)
    for r in policy.all_rules():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)+", r.name), r.name
        assert len(r.description) > 30, r.name


@pytest.mark.parametrize("name", CASES)
def test_rule_accepts_a_compliant_resource(name, prod):
    compliant, _, _, _ = CASES[name]
    assert check(name, _resources(compliant, prod)) == []


@pytest.mark.parametrize("name", CASES)
def test_rule_rejects_a_violating_resource_naming_it(name, prod):
    _, violating, offender, fragment = CASES[name]
    found = check(name, _resources(violating, prod))
    assert found, f"{name} accepted a violating resource"
    assert [v for v in found if v.resource_name == offender and fragment in v.message], [str(v) for v in found]
    # the rule's own verdict on the unchanged resources was clean: the change is what it caught
    assert all(v.resource_name == offender for v in found), [str(v) for v in found]


# ---------------------------------------------------------------- edges of single rules


def test_data_roles_come_from_the_roles_placement():
    assert policy.data_roles() == {"mariadb", "cassandra"}
    assert check("data-servers-protected", [server("cass1", role="cassandra", protect=False)])
    # not data: another role may be unprotected
    assert not check("data-servers-protected", [server("redis1", role="redis", protect=False)])


def test_a_server_without_a_role_label_cannot_escape_data_protection():
    found = check("data-servers-protected", [server(labels={"stack": "t"}, protect=False)])
    assert len(found) == 1 and "has no 'role' label" in found[0].message


def test_each_missing_protection_of_a_data_server_is_named():
    found = check("data-servers-protected", [server(protect=False)])
    assert [m.message.split(";")[0] for m in found] == [
        "is a mariadb server (data) without Pulumi protect",
        "is a mariadb server (data) with deleteProtection = False",
        "is a mariadb server (data) with rebuildProtection = False"]


def test_eu_locations_are_hetzners_eu_central_locations():
    assert set(R.EU_LOCATIONS) == {"fsn1", "nbg1", "hel1"}
    assert set(R.EU_LOCATIONS) == {loc for loc, zone in LOCATIONS.items() if zone == "eu-central"}
    for outside in ("ash", "hil", "sin"):
        assert check("eu-locations-only", [Resource(R.FLOATING_IP, "fip", {"homeLocation": outside})])
    # a server named by datacenter instead of location
    assert check("eu-locations-only", [Resource(R.SERVER, "s", {"datacenter": "ash-dc1"})])
    assert not check("eu-locations-only", [Resource(R.SERVER, "s", {"datacenter": "fsn1-dc14"})])


def test_ssh_reached_through_a_wide_port_range_or_any_port_counts():
    assert check("ssh-from-admin-networks-only", [firewall(("tcp", "any", ["0.0.0.0/0"]))])
    assert check("ssh-from-admin-networks-only", [firewall(("tcp", None, ["::/0"]))])
    assert not check("ssh-from-admin-networks-only", [firewall(("tcp", "23-79", ["0.0.0.0/0"]))])
    assert not check("ssh-from-admin-networks-only", [firewall(("udp", "22", ["0.0.0.0/0"]))])


def test_world_rule_leaves_ssh_to_the_ssh_rule_and_allows_admin_ports():
    ssh_world = [firewall(("tcp", "22", ["0.0.0.0/0"]))]
    assert not check("world-reaches-web-only", ssh_world) and check("ssh-from-admin-networks-only", ssh_world)
    # anything else beyond the admin networks: icmp, udp, a web port over udp
    for proto, port in (("icmp", None), ("udp", "443"), ("tcp", "8443")):
        assert check("world-reaches-web-only", [firewall((proto, port, ["198.51.100.9/32"]))]), (proto, port)
    # outbound rules are not what the world reaches
    out = Resource(R.FIREWALL, "fw", {"rules": [{"direction": "out", "protocol": "tcp", "port": "25",
                                                "destinationIps": ["0.0.0.0/0"]}]})
    assert not check("world-reaches-web-only", [out])


def test_a_floating_ip_assigned_on_itself_must_ignore_server_id_too():
    assigned = Resource(R.FLOATING_IP, "fip", {"homeLocation": "fsn1", "serverId": 5})
    assert check("floating-ip-assignment-ignores-server-id", [assigned])
    assert not check("floating-ip-assignment-ignores-server-id",
                     [dataclasses.replace(assigned, ignore_changes=("serverId",))])
    assert not check("floating-ip-assignment-ignores-server-id", [Resource(R.FLOATING_IP, "fip", {})])


def test_a_server_outside_the_stacks_placement_groups_is_refused(prod):
    found = check("servers-spread", changed(prod, "prod-db1", {"placementGroupId": None}))
    assert [(v.resource_name, v.message) for v in found] == [
        ("prod-db1", "is in no placement group; valid: a placement group of type 'spread'")]
    literal = [server(placementGroupId=12345)]  # an id made by hand: no group of this stack
    assert "not a resource of this stack" in check("servers-spread", literal)[0].message


@pytest.mark.parametrize("kind, fragment", [
    ("backups-versioning", "has no versioning"),
    ("backups-object-lock", "has no object lock configuration"),
    ("backups-encryption", "has no default encryption"),
    ("backups-public-access", "has no public access block"),
    ("backups-policy", "has no bucket policy"),
])
def test_a_bucket_without_one_of_its_controls_is_refused(prod, kind, fragment):
    found = evaluate(without(prod, kind), FACTS)
    assert [(v.resource_name, fragment in v.message) for v in found] == [("backups", True)], [str(v) for v in found]


def test_the_bucket_itself_must_have_object_lock(prod):
    found = check("backup-bucket-object-lock-compliance", changed(prod, "backups", {"objectLockEnabled": False}))
    assert [v.resource_name for v in found] == ["backups"] and "objectLockEnabled = False" in found[0].message


def test_sse_must_be_kms_with_this_stacks_key(prod):
    def encryption(default):
        deps = {"bucket": next(r for r in prod if r.name == "backups-encryption").depends_on("bucket")}
        return changed(prod, "backups-encryption", {"rules": [{"applyServerSideEncryptionByDefault": default}]},
                       property_dependencies=deps)

    aes = check("backup-bucket-sse-kms-rotated", encryption({"sseAlgorithm": "AES256"}))
    assert [v.message for v in aes] == ["encrypts bucket 'backups' with 'AES256'; valid: 'aws:kms' (SSE-KMS, a key "
                                        "this stack controls)"]
    aws_managed = check("backup-bucket-sse-kms-rotated", encryption({"sseAlgorithm": "aws:kms",
                                                                     "kmsMasterKeyId": "alias/aws/s3"}))
    assert [v.resource_name for v in aws_managed] == ["backups-encryption"]
    assert "not a KMS key of this stack, so its rotation cannot be checked" in aws_managed[0].message
    no_key = check("backup-bucket-sse-kms-rotated", encryption({"sseAlgorithm": "aws:kms"}))
    assert "without kmsMasterKeyId" in no_key[0].message


def test_force_destroy_on_the_bucket_is_refused(prod):
    found = check("backup-bucket-and-key-protected", changed(prod, "backups", {"forceDestroy": True}))
    assert [v.message for v in found] == ["has forceDestroy = True (a destroy would empty it); valid: False"]


def test_tls_statement_must_cover_bucket_and_objects(prod):
    def objects_only(doc):
        tls = next(s for s in doc["Statement"] if s["Sid"] == "DenyInsecureTransport")
        tls["Resource"] = [r for r in tls["Resource"] if r.endswith("/*")]

    assert check("backup-bucket-tls-only", with_document(prod, "backups-policy", objects_only))


def test_wildcards_and_not_action_in_any_iam_document(prod):
    assert check("iam-no-wildcard-actions", [user_policy("*")])
    not_action = {"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]}
    found = check("iam-no-wildcard-actions", [Resource(R.IAM_POLICY, "p", {"policy": json.dumps(not_action)})])
    assert "NotAction" in found[0].message
    inline = {"inlinePolicies": [{"name": "keys", "policy": json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]})}]}
    assert "inlinePolicies[0] keys" in check("iam-no-wildcard-actions", [Resource(R.IAM_ROLE, "r", inline)])[0].message
    # a Deny may use wildcards; the trust policy of the break-glass role is clean
    deny = {"Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]}
    assert not check("iam-no-wildcard-actions", [Resource(R.USER_POLICY, "d", {"policy": json.dumps(deny)})])
    assert not check("iam-no-wildcard-actions", prod)


def test_the_restore_reader_reads_without_being_a_writer(prod):
    """The reader may read (it writes nothing); the writer rule is about identities that write."""
    assert not check("backup-writer-put-only", prod)
    found = check("backup-writer-put-only",
                  with_document(prod, "restore-reader-policy", lambda d: d["Statement"][0]["Action"].append("s3:PutObject")))
    assert {v.resource_name for v in found} == {"restore-reader-policy"}


def test_a_writer_with_a_wildcard_or_a_policy_from_elsewhere_is_refused(prod):
    def wildcard(doc):
        doc["Statement"][0]["Action"] = "s3:*"

    found = check("backup-writer-put-only", with_document(prod, "backup-writer-prod-cass1-policy", wildcard))
    assert len(found) == 1 and "s3:GetObject, s3:GetObjectVersion" in found[0].message
    writer = next(r for r in prod if r.name == "backup-writer-prod-db1")
    attachment = Resource(R.USER_POLICY_ATTACHMENT, "extra", {"user": writer.props["name"],
                                                              "policyArn": "arn:aws:iam::aws:policy/AmazonS3FullAccess"})
    found = check("backup-writer-put-only", prod + [attachment])
    assert [v.resource_name for v in found] == ["extra"] and "cannot be read here" in found[0].message


def test_a_violation_names_rule_resource_and_what_is_valid():
    v = check("eu-locations-only", [server(location="sin")])[0]
    assert str(v) == ("[eu-locations-only] hcloud:index/server:Server 'db1': location 'sin' is outside the EU; "
                      "valid: fsn1, nbg1, hel1")


# ---------------------------------------------------------------- the real stacks


@pytest.mark.parametrize("stack", CLEAN_STACKS)
def test_the_stacks_plans_violate_no_rule(stack):
    plan = make_plan(stack)
    assert plan.violations() == [], [str(v) for v in plan.violations()]
    # what `hastack plan` evaluates: the recording's resources, the topology's facts
    assert plan.violations() == evaluate(policy.from_recording(plan.recording), StackFacts.of(plan.topology))


def test_facts_come_from_the_topology():
    plan = make_plan("example")
    facts = StackFacts.of(plan.topology)
    assert facts.admin_cidrs == ("203.0.113.0/24", "198.51.100.7/32")
    fw = next(r for r in policy.from_recording(plan.recording) if r.name == "firewall-app")
    ssh = [r for r in fw.props["rules"] if r["port"] == "22"]
    assert ssh and all(set(r["sourceIps"]) == set(facts.admin_cidrs) for r in ssh)


# ---------------------------------------------------------------- the policy pack


def policy_resources(resources: list[Resource]):
    """The resources as pulumi-policy hands them to a stack policy (and, one at a time, to a
    resource policy): PolicyResource with PolicyResourceOptions, property dependencies as resources."""
    from pulumi_policy import PolicyCustomTimeouts, PolicyResource, PolicyResourceOptions
    from pulumi_policy.proxy import unknown_checking_proxy

    made = {r.urn: PolicyResource(r.type, unknown_checking_proxy(json.loads(json.dumps(dict(r.props)))), r.urn, r.name,
                                  PolicyResourceOptions(r.protect, list(r.ignore_changes), None, [],
                                                        PolicyCustomTimeouts(0, 0, 0), [], None),
                                  None, None, [], {}) for r in resources}
    for r in resources:
        made[r.urn].property_dependencies = {k: [made[u] for u in urns if u in made]
                                             for k, urns in r.property_dependencies.items()}
    return list(made.values())


def broken_prod(prod: list[Resource]) -> list[Resource]:
    """prod with violations of resource rules and of stack rules."""
    resources = changed(prod, "prod-db1", {"location": "ash", "rebuildProtection": False})
    resources = changed(resources, "floating-ip-assignment", ignore_changes=())
    resources = changed(resources, "backups-versioning", {"versioningConfiguration": {"status": "Suspended"}})
    resources = with_document(resources, "backup-writer-prod-db1-policy", _add_read)
    return changed(resources, "firewall-app", {"rules": [
        {"direction": "in", "protocol": "tcp", "port": "22", "sourceIps": ["0.0.0.0/0"]}]})


def test_the_pack_has_one_mandatory_policy_per_rule():
    from pulumi_policy import EnforcementLevel, ResourceValidationPolicy, StackValidationPolicy

    from hastack.policy.pack import policies

    pack = policies(lambda: FACTS)
    assert [(p.name, p.description) for p in pack] == [(r.name, r.description) for r in policy.all_rules()]
    assert all(p.enforcement_level == EnforcementLevel.MANDATORY for p in pack)
    for p, r in zip(pack, policy.all_rules(), strict=True):
        expected = ResourceValidationPolicy if isinstance(r, policy.ResourceRule) else StackValidationPolicy
        assert isinstance(p, expected), p.name


def test_the_pack_reports_what_the_plan_reports(prod):
    from hastack.policy.pack import message_of, policies, violations_reported

    resources = broken_prod(prod)
    expected = evaluate(resources, FACTS)
    assert {v.rule for v in expected} == {"data-servers-protected", "eu-locations-only",
                                          "floating-ip-assignment-ignores-server-id", "backup-bucket-versioned",
                                          "backup-writer-put-only", "ssh-from-admin-networks-only"}
    reported = violations_reported(policies(lambda: FACTS), policy_resources(resources))
    assert sorted(reported) == sorted((v.rule, message_of(v)) for v in expected)
    assert violations_reported(policies(lambda: FACTS), policy_resources(prod)) == []


def test_a_value_unknown_during_preview_is_not_judged():
    """pulumi-policy raises UnknownValueError on a value a preview cannot know yet (and reports
    that the policy could not run); a rule must not take the placeholder for a location."""
    from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs
    from pulumi_policy.proxy import (UNKNOWN_NUMBER_VALUE, UNKNOWN_STRING_VALUE, UnknownValueError,
                                     unknown_checking_proxy)

    from hastack.policy.pack import policies

    eu = next(p for p in policies(lambda: FACTS) if p.name == "eu-locations-only")
    opts = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
    args = ResourceValidationArgs(R.VOLUME, unknown_checking_proxy({"location": UNKNOWN_STRING_VALUE}), "urn:v", "v",
                                  opts, None)
    with pytest.raises(UnknownValueError):
        eu.validate(args, lambda message, urn=None: pytest.fail(message))
    # a list whose items are not known yet still has a length: the server has a firewall
    firewalled = next(p for p in policies(lambda: FACTS) if p.name == "servers-behind-firewall")
    props = unknown_checking_proxy({**server().props, "firewallIds": [UNKNOWN_NUMBER_VALUE]})
    firewalled.validate(ResourceValidationArgs(R.SERVER, props, "urn:s", "s", opts, None),
                        lambda message, urn=None: pytest.fail(message))


def _pack_process(stack: str):
    """policy/__main__.py as the Pulumi CLI starts it: the stack's config in PULUMI_CONFIG."""
    from hastack.stackfile import read_stack_file

    flat, secret_keys = read_stack_file(stack)
    config = {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat.items() if k not in secret_keys}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PULUMI_CONFIG": json.dumps(config),
           "PULUMI_PROJECT": "hastack", "PULUMI_STACK": stack, "PULUMI_DRY_RUN": "true"}
    # unbuffered (as the CLI runs a Python pack): the pack prints its port and serves until stopped
    proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "policy" / "__main__.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT / "policy")
    return proc, int(proc.stdout.readline())


def test_the_pack_over_grpc_as_the_engine_calls_it(prod):
    """The pack as a process (policy/__main__.py), asked over gRPC what the engine asks:
    its policies, a resource before it is created (Analyze), the whole stack (AnalyzeStack)."""
    import grpc
    from google.protobuf import empty_pb2, json_format, struct_pb2
    from pulumi.runtime.proto import analyzer_pb2 as pb
    from pulumi.runtime.proto import analyzer_pb2_grpc

    from hastack.policy.pack import message_of

    def message(r: Resource):
        props = json_format.ParseDict(json.loads(json.dumps(dict(r.props))), struct_pb2.Struct())
        options = pb.AnalyzerResourceOptions(protect=r.protect, ignoreChanges=list(r.ignore_changes))
        return props, options

    proc, port = _pack_process("prod")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analyzer_pb2_grpc.AnalyzerStub(channel)
            info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=30)
            assert info.name == "hastack"
            assert [p.name for p in info.policies] == [r.name for r in policy.all_rules()]
            assert {p.enforcementLevel for p in info.policies} == {pb.MANDATORY}

            resources = broken_prod(prod)
            expected = evaluate(resources, StackFacts.of(make_plan("prod").topology))
            got = []
            for r in resources:
                props, options = message(r)
                response = stub.Analyze(pb.AnalyzeRequest(type=r.type, properties=props, urn=r.urn, name=r.name,
                                                          options=options), timeout=30)
                got.extend((d.policyName, d.message, d.urn or r.urn) for d in response.diagnostics)
            stack = []
            for r in resources:
                props, options = message(r)
                stack.append(pb.AnalyzerResource(
                    type=r.type, properties=props, urn=r.urn, name=r.name, options=options,
                    propertyDependencies={k: pb.AnalyzerPropertyDependencies(urns=list(v))
                                          for k, v in r.property_dependencies.items()}))
            response = stub.AnalyzeStack(pb.AnalyzeStackRequest(resources=stack), timeout=60)
            got.extend((d.policyName, d.message, d.urn) for d in response.diagnostics)
            assert all(d.enforcementLevel == pb.MANDATORY for d in response.diagnostics)
    finally:
        proc.kill()
        proc.wait()
    # pulumi-policy puts the policy's description before the message it is given
    described = {r.name: r.description for r in policy.all_rules()}
    assert sorted(got) == sorted((v.rule, f"{described[v.rule]}\n{message_of(v)}", v.urn) for v in expected)
    # the SSH rule's admin networks came from the stack's config (hastack:adminCidrs of prod)
    assert any(rule == "ssh-from-admin-networks-only" and "203.0.113.0/24" in m for rule, m, _ in got)


def test_the_packs_requirements_are_the_projects_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines() + project:
        name, _, version = line.split("#")[0].strip().partition("==")
        if version:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    required = [line.strip() for line in (ROOT / "policy" / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert "-c ../constraints.txt" in required
    listed = [line.partition("==") for line in required if "==" in line]
    assert {n for n, _, _ in listed} >= {"pulumi-policy", "pulumi", "pydantic"}
    for name, _, version in listed:
        assert pins[re.sub(r"[-_.]+", "-", name).lower()] == version, name
    pack = (ROOT / "policy" / "PulumiPolicy.yaml").read_text()
    assert "name: python" in pack and "virtualenv: venv" in pack


# ---------------------------------------------------------------- hastack plan


def hastack(*args):
    return subprocess.run([sys.executable, "-m", "hastack.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})


def test_plan_of_a_clean_stack_says_so():
    proc = hastack("plan", "--stack", "staging")
    assert proc.returncode == 0, proc.stderr
    assert f"policy: {len(policy.all_rules())} rules, 0 violations" in proc.stdout


def test_plan_fails_on_a_stack_file_edited_to_violate_a_rule(tmp_path):
    """Through the stack file: prod moved to Ashburn (hastack:locations: [ash]). The model
    accepts it (one location, one network zone), the rule eu-locations-only does not."""
    text = (ROOT / "stacks" / "Pulumi.prod.yaml").read_text()
    assert "hastack:locations: [nbg1, fsn1]" in text
    (tmp_path / "Pulumi.prod.yaml").write_text(text.replace("hastack:locations: [nbg1, fsn1]",
                                                            "hastack:locations: [ash]"))
    proc = hastack("plan", "--stack", "prod", "--stacks-dir", str(tmp_path))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    assert ("eu-locations-only: hcloud:index/server:Server 'prod-db1': location 'ash' is outside the EU; "
            "valid: fsn1, nbg1, hel1") in proc.stdout
    assert "eu-locations-only: hcloud:index/volume:Volume 'prod-cass1-data'" in proc.stdout
    # 13 servers, 5 volumes, the floating IP
    assert f"policy: {len(policy.all_rules())} rules, 19 violations" in proc.stdout
    assert "violates 1 policy rule(s): eu-locations-only" in proc.stderr
    # the same stack as it is in stacks/ passes
    shutil.copy(ROOT / "stacks" / "Pulumi.prod.yaml", tmp_path / "Pulumi.prod.yaml")
    assert hastack("plan", "--stack", "prod", "--stacks-dir", str(tmp_path)).returncode == 0
