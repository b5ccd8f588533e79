"""Offline plan: what `pulumi up` would create for a stack, without cloud or CLI."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from hastack import policy, recording
from hastack.stackfile import load_stack, read_stack_file
from hastack.model import REQUIRED_SECRETS, Topology


@dataclass
class Plan:
    topology: Topology
    recording: recording.Recording

    def counts(self) -> Counter[tuple[str, str]]:
        """(resource type, role) -> count; components and providers are left out."""
        counts: Counter[tuple[str, str]] = Counter()
        for r in self.recording.resources:
            if r.type.startswith("hastack:") or r.type.startswith("pulumi:providers:"):
                continue
            role = r.labels.get("role") or ("backup" if r.type.startswith("aws:") else "-")
            counts[(r.type, role)] += 1
        return counts

    def violations(self) -> list[policy.Violation]:
        """What the policy rules (hastack.policy, the policy pack's) find in the recorded resources."""
        return policy.evaluate(policy.from_recording(self.recording), policy.StackFacts.of(self.topology))


def make_plan(stack: str, stacks_dir: Path | None = None) -> Plan:
    """Run the program for ``stack`` (stacks/Pulumi.<stack>.yaml, or the one in ``stacks_dir``)."""
    flat, secret_keys = read_stack_file(stack, stacks_dir)
    if flat.get("hastack:provider", "hetzner") != "hetzner":
        raise ValueError(f"stack {stack!r} runs on local machines (hastack:provider {flat['hastack:provider']!r}); "
                         "it has no cloud resources to plan")
    topo = load_stack(stack, require_secrets=False, stacks_dir=stacks_dir)
    plain = {k: v for k, v in flat.items() if k not in secret_keys}
    # Secrets cannot be decrypted here; the program sees placeholders.
    secrets = {k: recording.PLACEHOLDER_SECRET for k in set(secret_keys) | set(REQUIRED_SECRETS[topo.provider])}
    return Plan(topo, recording.run(stack, plain, secrets))


def print_plan(plan: Plan, console: Console) -> None:
    topo = plan.topology
    console.print(f"[bold]Stack {topo.stack}[/bold]: {len(topo.hosts)} hosts in {', '.join(topo.locations)} "
                  f"(network {topo.ip_range}, subnet {topo.subnet}), backups in {topo.section('backup').region}")
    if topo.restore_from is not None:
        console.print(f"Restores from stack [bold]{topo.restore_from}[/bold]: its bucket and restore reader are read "
                      "through a stack reference into the secret output restoreSource")

    counts = plan.counts()
    table = Table(title="Resources `pulumi up` would create")
    table.add_column("type")
    table.add_column("role")
    table.add_column("count", justify="right")
    for (type_, role), n in sorted(counts.items()):
        table.add_row(type_, role, str(n))
    table.add_row("[bold]total[/bold]", "", f"[bold]{sum(counts.values())}[/bold]")
    console.print(table)

    hosts = Table(title="Hosts")
    for col in ("host", "role", "location", "server type", "private IP", "volume GB", "protected"):
        hosts.add_column(col)
    for h in topo.hosts:
        rec = plan.recording.named(h.name)
        hosts.add_row(h.name, h.role, h.location, h.server_type, h.private_ip,
                      str(h.volume_size or "-"), "yes" if rec.protect else "no")
    console.print(hosts)

    fw = Table(title="Hetzner firewall (public interface; everything not listed is dropped)")
    for col in ("role", "rule", "protocol", "port", "allowed from"):
        fw.add_column(col)
    for role in topo.roles_in_use:
        for rule in topo.public_rules(role):
            fw.add_row(role, rule.port.name, rule.port.protocol, str(rule.port.port or "-"), ", ".join(rule.cidrs))
    console.print(fw)

    nft = Table(title="Host firewall (nftables on every host, private network included; default drop)")
    for col in ("role", "rule", "protocol", "port", "allowed from"):
        nft.add_column(col)
    for role in topo.roles_in_use:
        for rule in topo.host_rules(topo.hosts_with_role(role)[0]):
            sources = ", ".join(rule.port.sources)
            nft.add_row(role, rule.port.name, rule.port.protocol, str(rule.port.port or "-"), sources)
    console.print(nft)

    for key in topo.secrets_missing:
        console.print(f"[yellow]warning[/yellow]: secret {key} is not set; before `pulumi up` run "
                      f"`pulumi config set --secret {key} <value>`")


def print_policy(violations: list[policy.Violation], console: Console) -> None:
    """The policy rules' verdict: each violation with its rule and resource, or that there are none."""
    rules = len(policy.all_rules())
    if not violations:
        console.print(f"policy: {rules} rules, 0 violations")
        return
    console.print(f"[red]policy: {rules} rules, {len(violations)} violation{'s' if len(violations) != 1 else ''}"
                  "[/red] (the policy pack refuses the same on `pulumi preview --policy-pack policy/`)")
    for v in violations:
        console.print(Text.assemble(("  - ", ""), (v.rule, "bold"), f": {v.resource}: {v.message}"), highlight=False)
