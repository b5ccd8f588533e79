"""Run the Pulumi program under a recording engine: no cloud, no Pulumi CLI.

Every resource the program registers is recorded with its inputs and the
options that matter for review (protect, ignore_changes, parent, secret
outputs), and which resources each input is computed from (the engine's
property dependencies, which the policy rules follow from a bucket's
configuration to its bucket); the stack's exports are resolved and marked
secret or plain.
Stack references are answered with the outputs a run is given, or with a
plausible hastack stack's. Used by `hastack plan` and by the tests.
"""

from __future__ import annotations

import json
import runpy
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import rpc
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.stack import wait_for_rpcs
from pulumi.runtime.sync_await import _sync_await

from hastack.stackfile import PROJECT_DIR

PROJECT = "hastack"

# The AWS account the mocks answer for (aws.get_caller_identity).
ACCOUNT_ID = "000000000000"

# pulumi.get_organization() under the mocks: what a self-managed backend reports.
ORGANIZATION = "organization"

# Placeholder values a plan shows for secrets it cannot decrypt.
PLACEHOLDER_SECRET = "<secret>"  # nosec B105  # the text shown in place of a secret, not one


@dataclass
class RecordedResource:
    type: str
    name: str
    urn: str
    parent: str
    inputs: dict[str, Any]
    protect: bool
    ignore_changes: list[str]
    secret_outputs: list[str]
    provider: str
    # property -> URNs of the resources its value is computed from (the engine's property dependencies)
    property_dependencies: dict[str, list[str]] = field(default_factory=dict)

    @property
    def labels(self) -> dict[str, str]:
        return self.inputs.get("labels") or self.inputs.get("tags") or {}


@dataclass
class Output:
    value: Any
    secret: bool


@dataclass
class Recording:
    stack: str
    resources: list[RecordedResource] = field(default_factory=list)
    # what the program reads rather than creates: stack references, by the stack they name
    reads: list[RecordedResource] = field(default_factory=list)
    outputs: dict[str, Output] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[RecordedResource]:
        return [r for r in self.resources if r.type == type_]

    def named(self, name: str) -> RecordedResource:
        matches = [r for r in self.resources if r.name == name]
        if len(matches) != 1:
            raise KeyError(f"{len(matches)} resources named {name!r}")
        return matches[0]


def reference_outputs(name: str) -> dict[str, Any]:
    """What a referenced stack answers when a run is not given its outputs: a hastack
    stack's backup bucket and restore reader, the reader's key as placeholders."""
    stack = name.rsplit("/", 1)[-1]
    return {
        "backupBucket": f"hastack-{stack}-backups-00000000",
        "backupRegion": "eu-central-1",
        "secrets": {"restore_reader": {"access_key_id": PLACEHOLDER_SECRET, "secret_access_key": PLACEHOLDER_SECRET}},
    }


class _Mocks(pulumi.runtime.Mocks):
    """Plausible provider answers: numeric ids, documentation-range addresses."""

    def __init__(self, references: dict[str, dict[str, Any]] | None = None) -> None:
        self.counter = 0
        self.lock = threading.Lock()
        self.references = references or {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        with self.lock:
            self.counter += 1
            n = self.counter
        state = dict(args.inputs)
        t = args.typ
        if t == "hcloud:index/server:Server":
            state.update(ipv4_address=f"192.0.2.{n % 250 + 1}", ipv6_address=f"2001:db8::{n:x}", status="running")
        elif t == "hcloud:index/floatingIp:FloatingIp":
            state.update(ip_address="203.0.113.10")
        elif t == "aws:s3/bucket:Bucket":
            name = f"{state.get('bucketPrefix', 'bucket-')}{n:08d}"
            state.update(bucket=name, arn=f"arn:aws:s3:::{name}")
        elif t == "aws:kms/key:Key":
            state.update(arn=f"arn:aws:kms:eu-central-1:{ACCOUNT_ID}:key/{n:08d}", keyId=f"{n:08d}")
        elif t == "aws:iam/user:User":
            state.update(arn=f"arn:aws:iam::{ACCOUNT_ID}:user{state.get('path', '/')}{state.get('name')}")
        elif t == "aws:iam/role:Role":
            state.update(arn=f"arn:aws:iam::{ACCOUNT_ID}:role{state.get('path', '/')}{state.get('name')}")
        elif t == "aws:iam/accessKey:AccessKey":
            state.update(secret=f"mock-secret-access-key-{n}")
        elif t == "pulumi:pulumi:StackReference":
            name = state["name"]
            outputs = self.references[name] if name in self.references else reference_outputs(name)
            # as the engine does: which of the stack's outputs are secrets
            secret = [k for k in ("secrets", "restoreSource") if k in outputs]
            return name, {"name": name, "outputs": outputs, "secretOutputNames": secret}
        return str(n), state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":  # nosec B105  # a provider function's name
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/deployer",
                    "userId": "AIDAEXAMPLEDEPLOYER", "id": ACCOUNT_ID}
        raise RuntimeError(f"the program made an unexpected provider call: {args.token}")


class _Monitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks: _Mocks, recording: Recording):
        super().__init__(mocks)
        self.recording = recording
        self.lock = threading.Lock()

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs = rpc.deserialize_properties(request.object)
            with self.lock:
                self.recording.resources.append(RecordedResource(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    inputs=_plain(inputs),
                    protect=bool(request.protect),
                    ignore_changes=list(request.ignoreChanges),
                    secret_outputs=list(request.additionalSecretOutputs),
                    provider=request.provider,
                    property_dependencies={k: list(v.urns) for k, v in request.propertyDependencies.items()
                                           if v.urns},
                ))
        return response

    def ReadResource(self, request):
        response = super().ReadResource(request)
        inputs = rpc.deserialize_properties(request.properties)
        with self.lock:
            self.recording.reads.append(RecordedResource(
                type=request.type,
                name=request.name,
                urn=response.urn,
                parent=request.parent,
                inputs=_plain(inputs),
                protect=False,
                ignore_changes=[],
                secret_outputs=list(request.additionalSecretOutputs),
                provider=request.provider,
            ))
        return response


SECRET_SIG = ("4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270")


def _plain(value: Any) -> Any:
    """Unwrap Pulumi's secret markers in recorded inputs."""
    if isinstance(value, dict) and value.get(SECRET_SIG[0]) == SECRET_SIG[1]:
        return _plain(value.get("value"))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def flatten_config(config: dict[str, Any]) -> dict[str, str]:
    """Stack-file values -> the engine's flat string map (objects as JSON)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}


def run(stack: str, config: dict[str, Any], secrets: dict[str, str] | None = None,
        program: Path = PROJECT_DIR / "__main__.py",
        references: dict[str, dict[str, Any]] | None = None) -> Recording:
    """Run the program for ``stack`` with ``config`` (namespace:key -> value) and
    ``secrets`` (namespace:key -> value, passed as Pulumi secrets). ``references``:
    the outputs of stacks the program references (org/project/stack -> outputs)."""
    secrets = secrets or {}
    recording = Recording(stack=stack)
    mocks = _Mocks(references)
    pulumi_settings.ROOT.set(None)  # a fresh root stack for every run
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False,
                             monitor=_Monitor(mocks, recording), organization=ORGANIZATION)
    pulumi.runtime.set_all_config(flatten_config({**config, **secrets}), secret_keys=list(secrets))
    pulumi_settings.SETTINGS.rpc_manager.clear()

    error: BaseException | None = None
    try:
        runpy.run_path(str(program), run_name="__main__")
    except BaseException as e:  # noqa: BLE001 - re-raised after the engine settles
        error = e
    _sync_await(wait_for_rpcs())
    if error is not None:
        raise error

    root = pulumi_settings.get_root_resource()
    for name, value in getattr(root, "outputs", {}).items():
        out = pulumi.Output.from_input(value)
        recording.outputs[name] = Output(
            value=_sync_await(out.future(with_unknowns=False)),
            secret=bool(_sync_await(out.is_secret())),
        )
    return recording
