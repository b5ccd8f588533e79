"""The rules: hastack's invariants, each small and on its own.

Properties are read through ``Mapping``/``Sequence`` only, never copied whole:
the policy pack hands over pulumi-policy's proxies, which raise on a value that
is unknown during a preview (pulumi-policy then reports that the rule could not
run yet, rather than the rule judging a placeholder).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Iterable, Iterator

from hastack.policy import Resource, ResourceCheck, ResourceRule, StackCheck, StackFacts, StackRule

RULES: list[ResourceRule | StackRule] = []


def resource_rule(name: str, description: str, *types: str) -> Callable[[ResourceCheck], ResourceCheck]:
    def register(check: ResourceCheck) -> ResourceCheck:
        RULES.append(ResourceRule(name, description, types, check))
        return check
    return register


def stack_rule(name: str, description: str) -> Callable[[StackCheck], StackCheck]:
    def register(check: StackCheck) -> StackCheck:
        RULES.append(StackRule(name, description, check))
        return check
    return register


# ---------------------------------------------------------------- resource types

SERVER = "hcloud:index/server:Server"
VOLUME = "hcloud:index/volume:Volume"
FIREWALL = "hcloud:index/firewall:Firewall"
PLACEMENT_GROUP = "hcloud:index/placementGroup:PlacementGroup"
FLOATING_IP = "hcloud:index/floatingIp:FloatingIp"
FLOATING_IP_ASSIGNMENT = "hcloud:index/floatingIpAssignment:FloatingIpAssignment"


def _s3(kind: str) -> tuple[str, ...]:
    """pulumi-aws v7's type for an S3 bucket resource, and its deprecated ...V2 alias."""
    lower = kind[0].lower() + kind[1:]
    return f"aws:s3/{lower}:{kind}", f"aws:s3/{lower}V2:{kind}V2"


BUCKET = _s3("Bucket")
VERSIONING = _s3("BucketVersioning")
OBJECT_LOCK = _s3("BucketObjectLockConfiguration")
ENCRYPTION = _s3("BucketServerSideEncryptionConfiguration")
PUBLIC_ACCESS_BLOCK = ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",)
BUCKET_POLICY = ("aws:s3/bucketPolicy:BucketPolicy",)
KMS_KEY = "aws:kms/key:Key"
KMS_ALIAS = "aws:kms/alias:Alias"
IAM_USER = "aws:iam/user:User"
IAM_ROLE = "aws:iam/role:Role"
IAM_POLICY = "aws:iam/policy:Policy"
USER_POLICY = "aws:iam/userPolicy:UserPolicy"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
GROUP_POLICY = "aws:iam/groupPolicy:GroupPolicy"
USER_POLICY_ATTACHMENT = "aws:iam/userPolicyAttachment:UserPolicyAttachment"
ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"

# Hetzner Cloud's locations in the EU: Falkenstein, Nuremberg (Germany), Helsinki (Finland).
EU_LOCATIONS = ("fsn1", "nbg1", "hel1")
WEB_PORTS = ("80", "443")
SSH_PORT = 22
WORLD = ("0.0.0.0/0", "::/0")

# ---------------------------------------------------------------- helpers


def _items(value: Any) -> list[Any]:
    """A property that may be one value or a list of them (IAM's Action, Resource, Statement)."""
    if value is None:
        return []
    if isinstance(value, (str, Mapping)):
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def _of_types(resources: Sequence[Resource], types: str | tuple[str, ...]) -> list[Resource]:
    types = (types,) if isinstance(types, str) else types
    return [r for r in resources if r.type in types]


def _by_urn(resources: Sequence[Resource]) -> dict[str, Resource]:
    return {r.urn: r for r in resources if r.urn}


def _referenced(resource: Resource, prop: str, targets: Sequence[Resource], index: dict[str, Resource]) -> list[Resource]:
    """The resources among ``targets`` that ``resource.<prop>`` refers to: through the engine's
    property dependencies (a value computed from their outputs), or a literal equal to their id or name."""
    wanted = {t.urn for t in targets}
    found = [index[u] for u in resource.depends_on(prop) if u in wanted]
    if found:
        return found
    value = resource.get(prop)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return [t for t in targets if str(value) in (str(t.get("id")), str(t.get("bucket")), str(t.get("name")))]
    return []


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _outside_admin_networks(rule: dict, facts: StackFacts) -> list[str]:
    """The rule's sources that are not inside an admin network."""
    return [s for s in _items(rule.get("sourceIps")) if not _in_admin_networks(s, facts.admin_cidrs)]


def _in_admin_networks(source: str, admin_cidrs: Sequence[str]) -> bool:
    try:
        net = ipaddress.ip_network(source, strict=False)
    except ValueError:
        return False
    for cidr in admin_cidrs:
        admin = ipaddress.ip_network(cidr, strict=False)
        if admin.version == net.version and net.subnet_of(admin):
            return True
    return False


def _port_range(rule: Mapping[str, Any]) -> tuple[int, int] | None:
    """The ports a tcp/udp firewall rule opens, as a range; None for protocols without ports."""
    if rule.get("protocol") not in ("tcp", "udp"):
        return None
    port = rule.get("port")
    if port is None or str(port) == "any":
        return 1, 65535
    low, _, high = str(port).partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        return 1, 65535  # unreadable: assume the worst


def _describe(rule: Mapping[str, Any], index: int) -> str:
    what = f"{rule.get('protocol')} {rule.get('port')}" if rule.get("port") else str(rule.get("protocol"))
    label = f" ({rule.get('description')})" if rule.get("description") else ""
    return f"rule {index}{label}, {what}"


def _inbound(firewall: Resource) -> Iterator[tuple[int, Mapping[str, Any]]]:
    for i, rule in enumerate(_items(firewall.get("rules"))):
        if isinstance(rule, Mapping) and rule.get("direction", "in") == "in":
            yield i, rule


def _document(value: Any) -> Mapping[str, Any] | None:
    """An IAM policy document, given as JSON text or as a mapping; None when unreadable."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str):
        try:
            doc = json.loads(value)
        except ValueError:
            return None
        return doc if isinstance(doc, Mapping) else None
    return None


def _statements(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [s for s in _items(doc.get("Statement")) if isinstance(s, Mapping)]


def _sid(statement: Mapping[str, Any], index: int) -> str:
    return f"statement {statement['Sid']!r}" if statement.get("Sid") else f"statement {index}"


def _grants(pattern: str, action: str) -> bool:
    """Whether an IAM action pattern (``s3:*``, ``s3:Get*``) covers ``action``; IAM compares case-insensitively."""
    return fnmatch.fnmatchcase(action.lower(), str(pattern).lower())


def _policy_documents(resource: Resource) -> list[tuple[str, Any]]:
    """(where, document) for every identity policy document a resource carries."""
    if resource.type in (USER_POLICY, ROLE_POLICY, GROUP_POLICY, IAM_POLICY):
        return [("policy", resource.get("policy"))]
    if resource.type == IAM_ROLE:
        docs = [("assumeRolePolicy", resource.get("assumeRolePolicy"))]
        for i, inline in enumerate(_items(resource.get("inlinePolicies"))):
            if isinstance(inline, Mapping) and inline.get("policy") is not None:
                docs.append((f"inlinePolicies[{i}] {inline.get('name') or ''}".rstrip(), inline.get("policy")))
        return docs
    return []


# ---------------------------------------------------------------- data is protected


@resource_rule("data-servers-protected",
               "Servers of a data role (their placement has a data volume: MariaDB, Cassandra) are protected: "
               "Pulumi protect, Hetzner delete and rebuild protection.", SERVER)
def data_servers_protected(server: Resource, facts: StackFacts) -> Iterable[str]:
    labels = server.get("labels") or {}
    role = labels.get("role") if isinstance(labels, Mapping) else None
    if not role:
        yield ("has no 'role' label, so whether it holds data cannot be told; label it with its role "
               f"(data roles: {', '.join(sorted(facts.data_roles))})")
        return
    if role not in facts.data_roles:
        return
    if not server.protect:
        yield f"is a {role} server (data) without Pulumi protect; valid: protect=True"
    for prop in ("deleteProtection", "rebuildProtection"):
        if server.get(prop) is not True:
            yield f"is a {role} server (data) with {prop} = {server.get(prop)!r}; valid: {prop} = True"


@resource_rule("data-volumes-protected",
               "Volumes (they exist to hold data) are protected: Pulumi protect and Hetzner delete protection.",
               VOLUME)
def data_volumes_protected(volume: Resource, facts: StackFacts) -> Iterable[str]:
    if not volume.protect:
        yield "is a data volume without Pulumi protect; valid: protect=True"
    if volume.get("deleteProtection") is not True:
        yield f"is a data volume with deleteProtection = {volume.get('deleteProtection')!r}; valid: deleteProtection = True"


# ---------------------------------------------------------------- what the world reaches


@resource_rule("world-reaches-web-only",
               "Beyond the admin networks, a Hetzner firewall lets in nothing but tcp 80 and 443 "
               "(SSH rules are ssh-from-admin-networks-only's).", FIREWALL)
def world_reaches_web_only(firewall: Resource, facts: StackFacts) -> Iterable[str]:
    for i, rule in _inbound(firewall):
        if rule.get("protocol") == "tcp" and str(rule.get("port")) == str(SSH_PORT):
            continue
        outside = _outside_admin_networks(rule, facts)
        if not outside:
            continue
        if rule.get("protocol") == "tcp" and str(rule.get("port")) in WEB_PORTS:
            continue
        yield (f"{_describe(rule, i)}, is open to {', '.join(outside)} (outside the admin networks "
               f"{', '.join(facts.admin_cidrs)}); valid from there: tcp 80 and tcp 443 only")


@resource_rule("ssh-from-admin-networks-only",
               "A Hetzner firewall rule that reaches SSH (tcp 22) admits the admin networks "
               "(hastack:adminCidrs) and nothing else.", FIREWALL)
def ssh_from_admin_networks_only(firewall: Resource, facts: StackFacts) -> Iterable[str]:
    for i, rule in _inbound(firewall):
        ports = _port_range(rule)
        if rule.get("protocol") != "tcp" or ports is None or not ports[0] <= SSH_PORT <= ports[1]:
            continue
        outside = _outside_admin_networks(rule, facts)
        if outside:
            yield (f"{_describe(rule, i)}, lets {', '.join(outside)} reach SSH; valid sources: the admin "
                   f"networks {', '.join(facts.admin_cidrs)} (hastack:adminCidrs) or ranges inside them")


@resource_rule("servers-behind-firewall",
               "Every server has a Hetzner firewall attached (firewallIds): without one, every port of its "
               "public interface is open.", SERVER)
def servers_behind_firewall(server: Resource, facts: StackFacts) -> Iterable[str]:
    ids = server.get("firewallIds")  # counted, not read: during a preview the ids are not known yet
    if ids is None or isinstance(ids, str) or len(ids) == 0:
        yield "has no firewall (firewallIds is empty): every port is open to the world; valid: its role's firewall"


# ---------------------------------------------------------------- where servers run


def _location(resource: Resource, prop: str) -> str | None:
    location = resource.get(prop)
    if not location and resource.get("datacenter"):  # a server may name a datacenter (fsn1-dc14) instead
        location = str(resource.get("datacenter")).split("-")[0]
    return location


@resource_rule("eu-locations-only",
               f"Servers, volumes and floating IPs are in Hetzner's EU locations ({', '.join(EU_LOCATIONS)}).",
               SERVER, VOLUME, FLOATING_IP)
def eu_locations_only(resource: Resource, facts: StackFacts) -> Iterable[str]:
    prop = "homeLocation" if resource.type == FLOATING_IP else "location"
    location = _location(resource, prop)
    if not location:
        if resource.type != SERVER and resource.get("serverId") is not None:
            return  # it follows its server, which this rule checks
        yield f"has no {prop}: Hetzner would choose one; valid: {', '.join(EU_LOCATIONS)}"
    elif location not in EU_LOCATIONS:
        yield f"{prop} {location!r} is outside the EU; valid: {', '.join(EU_LOCATIONS)}"


@stack_rule("servers-spread",
            "Every server is in a placement group of this stack of type 'spread' (its hosts on different "
            "physical machines).")
def servers_spread(resources: Sequence[Resource], facts: StackFacts) -> Iterable[tuple[Resource, str]]:
    groups = _of_types(resources, PLACEMENT_GROUP)
    index = _by_urn(resources)
    for server in _of_types(resources, SERVER):
        if server.get("placementGroupId") is None:
            yield server, "is in no placement group; valid: a placement group of type 'spread'"
            continue
        found = _referenced(server, "placementGroupId", groups, index)
        if not found:
            yield server, ("is in a placement group that is not a resource of this stack, so its type cannot be "
                           "checked; valid: a placement group of this stack of type 'spread'")
        for group in found:
            if group.get("type") != "spread":
                yield server, (f"is in placement group {group.name!r} of type {group.get('type')!r}; "
                               "valid: type 'spread'")


@resource_rule("floating-ip-assignment-ignores-server-id",
               "The floating IP's assignment ignores changes to serverId: after a failover, `pulumi up` "
               "must not move the address back.", FLOATING_IP_ASSIGNMENT, FLOATING_IP)
def floating_ip_ignores_server_id(resource: Resource, facts: StackFacts) -> Iterable[str]:
    if resource.type == FLOATING_IP and resource.get("serverId") is None:
        return  # not assigned here (a FloatingIpAssignment does it)
    if "serverId" not in resource.ignore_changes:
        yield ("assigns the floating IP without ignore_changes on serverId: `pulumi up` after a failover "
               f"would move it back (ignore_changes: {list(resource.ignore_changes)}); valid: "
               "ignore_changes=['server_id']")


# ---------------------------------------------------------------- the backup bucket


def _bucket_configs(resources: Sequence[Resource], types: tuple[str, ...]) -> Iterator[tuple[Resource, list[Resource]]]:
    """Each bucket of the stack, with its configuration resources of ``types``."""
    index = _by_urn(resources)
    buckets = _of_types(resources, BUCKET)
    configs = _of_types(resources, types)
    for bucket in buckets:
        yield bucket, [c for c in configs if bucket.urn in {b.urn for b in _referenced(c, "bucket", buckets, index)}]


def _missing(kind: str, example: str) -> str:
    return f"has no {kind}; valid: one {example} for this bucket"


@stack_rule("backup-bucket-versioned", "The backup bucket has versioning enabled (BucketVersioning, status Enabled).")
def backup_bucket_versioned(resources: Sequence[Resource], facts: StackFacts) -> Iterable[tuple[Resource, str]]:
    for bucket, configs in _bucket_configs(resources, VERSIONING):
        if not configs:
            yield bucket, _missing("versioning", "aws.s3.BucketVersioning with status 'Enabled'")
        for config in configs:
            status = (config.get("versioningConfiguration") or {}).get("status")
            if status != "Enabled":
                yield config, f"sets versioning status {status!r} for bucket {bucket.name!r}; valid: 'Enabled'"


@stack_rule("backup-bucket-object-lock-compliance",
            "The backup bucket has object lock enabled, with a default retention in COMPLIANCE mode "
            "(no one, root included, deletes a locked version early).")
def backup_bucket_object_lock(resources: Sequence[Resource], facts: StackFacts) -> Iterable[tuple[Resource, str]]:
    for bucket, configs in _bucket_configs(resources, OBJECT_LOCK):
        if not _is_true(bucket.get("objectLockEnabled")):
            yield bucket, (f"has objectLockEnabled = {bucket.get('objectLockEnabled')!r}; valid: True "
                           "(object lock on the bucket)")
        if not configs:
            yield bucket, _missing("object lock configuration", "aws.s3.BucketObjectLockConfiguration with a "
                                   "default retention in COMPLIANCE mode")
        for config in configs:
            retention = ((config.get("rule") or {}).get("defaultRetention") or {})
            mode = retention.get("mode")
            if config.get("objectLockEnabled", "Enabled") != "Enabled":
                yield config, (f"sets objectLockEnabled {config.get('objectLockEnabled')!r} for bucket "
                               f"{bucket.name!r}; valid: 'Enabled'")
            if mode != "COMPLIANCE":
                yield config, (f"has default retention mode {mode!r} for bucket {bucket.name!r}; valid: "
                               "'COMPLIANCE' (GOVERNANCE can be bypassed, none keeps nothing)")
            elif not (retention.get("days") or retention.get("years")):
                yield config, "has a COMPLIANCE retention of no length; valid: days (or years) > 0"


def _keys_of(config: Resource, index: dict[str, Resource]) -> list[Resource]:
    """The KMS keys a bucket encryption configuration uses, directly or through an alias of this stack."""
    keys: list[Resource] = []
    for urn in config.depends_on("rules"):
        target = index.get(urn)
        if target is None:
            continue
        if target.type == KMS_KEY:
            keys.append(target)
        elif target.type == KMS_ALIAS:
            keys.extend(index[u] for u in target.depends_on("targetKeyId") if u in index and index[u].type == KMS_KEY)
    return keys


@stack_rule("backup-bucket-sse-kms-rotated",
            "The backup bucket encrypts with SSE-KMS under a KMS key of this stack that rotates "
            "(enableKeyRotation).")
def backup_bucket_sse_kms(resources: Sequence[Resource], facts: StackFacts) -> Iterable[tuple[Resource, str]]:
    index = _by_urn(resources)
    for bucket, configs in _bucket_configs(resources, ENCRYPTION):
        if not configs:
            yield bucket, _missing("default encryption", "aws.s3.BucketServerSideEncryptionConfiguration with "
                                   "sse_algorithm 'aws:kms' and a rotating key of this stack")
        for config in configs:
            rules = [r for r in _items(config.get("rules")) if isinstance(r, Mapping)]
            defaults = [r.get("applyServerSideEncryptionByDefault") or {} for r in rules]
            if not defaults:
                yield config, "has no applyServerSideEncryptionByDefault rule; valid: sse_algorithm 'aws:kms'"
            for default in defaults:
                algorithm = default.get("sseAlgorithm")
                if algorithm not in ("aws:kms", "aws:kms:dsse"):
                    yield config, (f"encrypts bucket {bucket.name!r} with {algorithm!r}; valid: 'aws:kms' "
                                   "(SSE-KMS, a key this stack controls)")
                elif not default.get("kmsMasterKeyId"):
                    yield config, "uses SSE-KMS without kmsMasterKeyId (the AWS managed key); valid: this stack's key"
            keys = _keys_of(config, index)
            if any(d.get("sseAlgorithm") in ("aws:kms", "aws:kms:dsse") and d.get("kmsMasterKeyId") for d in defaults) \
                    and not keys:
                yield config, ("encrypts with a key that is not a KMS key of this stack, so its rotation cannot "
                               "be checked; valid: an aws.kms.Key of this stack with enable_key_rotation=True")
            for key in keys:
                if key.get("enableKeyRotation") is not True:
                    yield key, (f"encrypts bucket {bucket.name!r} with enableKeyRotation = "
                                f"{key.get('enableKeyRotation')!r}; valid: True")


@stack_rule("backup-bucket-public-access-blocked",
            "The backup bucket has a public access block with all four settings on.")
def backup_bucket_not_public(resources: Sequence[Resource], facts: StackFacts) -> Iterable[tuple[Resource, str]]:
    settings = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    for bucket, configs in _bucket_configs(resources, PUBLIC_ACCESS_BLOCK):
        if not configs:
            yield bucket, _missing("public access block", "aws.s3.BucketPublicAccessBlock with "
                                   + ", ".join(settings) + " all True")
        for config in configs:
            off = [s for s in settings if config.get(s) is not True]
            if off:
                yield config, f"leaves {', '.join(off)} off for bucket {bucket.name!r}; valid: all four True"


def _denies_plain_http(statement: Mapping[str, Any]) -> bool:
    if statement.get("Effect") != "Deny":
        return False
    principal = statement.get("Principal")
    if isinstance(principal, Mapping):
        principal = principal.get("AWS")
    if "*" not in _items(principal):
        return False
    if not any(a in ("*", "s3:*") for a in _items(statement.get("Action"))):
        return False
    resources = [str(r) for r in _items(statement.get("Resource"))]
    if "*" not in resources and not (any(r.endswith("/*") for r in resources)
                                     and any(r.startswith("arn:aws:s3:::") and "/" not in r for r in resources)):
        return False
    secure = ((statement.get("Condition") or {}).get("Bool") or {}).get("aws:SecureTransport")
    return [str(v).lower() for v in _items(secure)] == ["false"]


@stack_rule("backup-bucket-tls-only",
            "The backup bucket's policy denies every S3 action on the bucket and its objects to everyone "
            "over plain HTTP (aws:SecureTransport false).")
def backup_bucket_tls_only(resources: Sequence[Resource], facts: StackFacts) -> Iterable[tuple[Resource, str]]:
    example = ('{"Effect": "Deny", "Principal": "*", "Action": "s3:*", "Resource": [<bucket ARN>, <bucket ARN>/*], '
               '"Condition": {"Bool": {"aws:SecureTransport": "false"}}}')
    for bucket, policies in _bucket_configs(resources, BUCKET_POLICY):
        if not policies:
            yield bucket, _missing("bucket policy", f"aws.s3.BucketPolicy with the statement {example}")
        for policy in policies:
            doc = _document(policy.get("policy"))
            if doc is None:
                yield policy, "has a policy that is not a JSON policy document"
            elif not any(_denies_plain_http(s) for s in _statements(doc)):
                yield policy, f"does not deny plain HTTP to bucket {bucket.name!r}; valid: a statement {example}"


@resource_rule("backup-bucket-and-key-protected",
               "The backup bucket and its KMS key are protected (Pulumi protect; the bucket without "
               "forceDestroy): losing either loses the backups.", *BUCKET, KMS_KEY)
def backup_bucket_and_key_protected(resource: Resource, facts: StackFacts) -> Iterable[str]:
    what = "the backups' KMS key" if resource.type == KMS_KEY else "a backup bucket"
    if not resource.protect:
        yield f"is {what} without Pulumi protect; valid: protect=True"
    if resource.type != KMS_KEY and resource.get("forceDestroy") is True:
        yield "has forceDestroy = True (a destroy would empty it); valid: False"


# ---------------------------------------------------------------- IAM


@resource_rule("iam-no-wildcard-actions",
               "No IAM policy statement allows an action with a wildcard ('*', 's3:*', 's3:Get*') or by "
               "NotAction: each names the actions it needs.",
               USER_POLICY, ROLE_POLICY, GROUP_POLICY, IAM_POLICY, IAM_ROLE)
def iam_no_wildcard_actions(resource: Resource, facts: StackFacts) -> Iterable[str]:
    for where, value in _policy_documents(resource):
        if value is None:
            continue
        doc = _document(value)
        if doc is None:
            yield f"{where} is not a JSON policy document"
            continue
        for i, statement in enumerate(_statements(doc)):
            if statement.get("Effect") != "Allow":
                continue
            if statement.get("NotAction") is not None:
                yield f"{where}, {_sid(statement, i)}: allows by NotAction (everything but a list); valid: Action"
            wild = [str(a) for a in _items(statement.get("Action")) if "*" in str(a) or "?" in str(a)]
            if wild:
                yield (f"{where}, {_sid(statement, i)}: allows {', '.join(wild)}; a wildcard grants every matching "
                       "action, present and future; valid: the actions it needs, by name (e.g. s3:PutObject)")


# What reads or deletes backups (or opens the way to deleting them): a writer may do none of it.
READ_OR_DELETE = (
    "s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectAttributes", "s3:GetObjectVersionAttributes",
    "s3:ListBucket", "s3:ListBucketVersions", "s3:ListMultipartUploadParts",
    "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:DeleteBucket", "s3:BypassGovernanceRetention",
    "s3:PutLifecycleConfiguration", "s3:PutBucketVersioning", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy",
    "s3:PutBucketObjectLockConfiguration",
)
WRITE = "s3:PutObject"


def _identity_documents(resources: Sequence[Resource]) -> dict[str, list[tuple[Resource, Any]]]:
    """Identity URN -> (the resource carrying it, document) for every policy document it gets;
    a document that cannot be read (an attached policy defined outside this stack) is None."""
    index = _by_urn(resources)
    users, roles = _of_types(resources, IAM_USER), _of_types(resources, IAM_ROLE)
    managed = _of_types(resources, IAM_POLICY)
    docs: dict[str, list[tuple[Resource, Any]]] = {r.urn: [] for r in users + roles}
    for role in roles:
        docs[role.urn].extend((role, value) for where, value in _policy_documents(role) if where != "assumeRolePolicy")
    for resource in resources:
        if resource.type in (USER_POLICY, ROLE_POLICY):
            owners = _referenced(resource, "user" if resource.type == USER_POLICY else "role",
                                 users if resource.type == USER_POLICY else roles, index)
            for owner in owners:
                docs[owner.urn].append((resource, resource.get("policy")))
        elif resource.type in (USER_POLICY_ATTACHMENT, ROLE_POLICY_ATTACHMENT):
            owners = _referenced(resource, "user" if resource.type == USER_POLICY_ATTACHMENT else "role",
                                 users if resource.type == USER_POLICY_ATTACHMENT else roles, index)
            policies = _referenced(resource, "policyArn", managed, index)
            for owner in owners:
                docs[owner.urn].extend((p, p.get("policy")) for p in policies)
                if not policies:
                    docs[owner.urn].append((resource, None))
    return docs


@stack_rule("backup-writer-put-only",
            "An identity that may write backups (s3:PutObject) may not read, list or delete any, nor change "
            "what keeps them (lifecycle, versioning, bucket policy, object lock).")
def backup_writer_put_only(resources: Sequence[Resource], facts: StackFacts) -> Iterable[tuple[Resource, str]]:
    index = _by_urn(resources)
    for urn, documents in _identity_documents(resources).items():
        identity = index[urn]
        allowed: list[tuple[Resource, str, str]] = []  # (carrier, statement, action pattern)
        unreadable = [carrier for carrier, value in documents if _document(value) is None]
        for carrier, value in documents:
            doc = _document(value)
            for i, statement in enumerate(_statements(doc) if doc is not None else []):
                if statement.get("Effect") == "Allow":
                    allowed.extend((carrier, _sid(statement, i), str(a)) for a in _items(statement.get("Action")))
        if not any(_grants(pattern, WRITE) for _, _, pattern in allowed):
            continue
        for carrier, sid, pattern in allowed:
            forbidden = [a for a in READ_OR_DELETE if _grants(pattern, a)]
            if forbidden:
                yield carrier, (f"{sid} allows backup writer {identity.name!r} {pattern}, which reads or deletes "
                                f"backups ({', '.join(forbidden[:4])}{', ...' if len(forbidden) > 4 else ''}); valid "
                                "for a writer: s3:PutObject and s3:AbortMultipartUpload only (reading is the "
                                "restore reader's)")
        for carrier in unreadable:
            yield carrier, (f"gives backup writer {identity.name!r} a policy whose statements cannot be read here "
                            "(not a policy document of this stack); valid: the writer's own inline policy")
