"""The `hastack` command line."""

from __future__ import annotations

if __name__ == "__main__":  # `python -m hastack.cli`: as the `hastack` program (hastack/launch.py)
    import sys

    from hastack.launch import cooperative, needs_real_threads

    if not needs_real_threads(sys.argv):
        cooperative()

import json
from pathlib import Path
from typing import Callable

import typer
from rich.table import Table

from hastack.console import (OutputsOption, StackOption, console, err_console, fail, open_lab, say, stack_entries,
                             stack_outputs_of)
from hastack.model import TopologyError
from hastack.model.schema import how_to_set
from hastack.stackfile import StackFileError, available_stacks, load_stack
from roles import all_roles

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Provision and run a highly available web stack on Hetzner Cloud (or the local lab).")


@app.command()
def validate(stack: str = StackOption) -> None:
    """Check a stack's config and print its hosts; nothing is created (a lab stack's
    admins without a key get one in .lab/ssh, as `lab up` would give them)."""
    from hastack.lab.layout import is_lab_stack, lab_topology

    try:
        topo = lab_topology(stack) if is_lab_stack(stack) else load_stack(stack)
    except (TopologyError, StackFileError, ValueError) as e:
        fail(str(e))
    table = Table(title=f"stack {stack}: {len(topo.hosts)} hosts")
    for col in ("host", "role", "location", "server type", "private IP"):
        table.add_column(col)
    for h in topo.hosts:
        table.add_row(h.name, h.role, h.location, h.server_type, h.private_ip)
    console.print(table)
    for key in topo.secrets_missing:
        console.print(f"[yellow]warning[/yellow]: secret {key} not set (`{how_to_set(key, stack)}`)",
                      markup=True, highlight=False)


@app.command()
def plan(stack: str = StackOption,
         stacks_dir: Path = typer.Option(None, "--stacks-dir", help="read Pulumi.<stack>.yaml from this directory "
                                         "instead of stacks/ (a stack file under review)")) -> None:
    """Print every resource `pulumi up` would create, and the firewall rules, then check them against
    the policy rules (the policy pack's, hastack/policy). No cloud, no Pulumi CLI.

    Exit code: 0 when no rule is violated; 1 on a violation (each is printed with its rule and
    resource); 2 when the stack cannot be planned."""
    from hastack.plan import make_plan, print_plan, print_policy

    try:
        result = make_plan(stack, stacks_dir)
    except (TopologyError, StackFileError, ValueError) as e:
        fail(str(e))
    print_plan(result, console)
    violations = result.violations()
    print_policy(violations, console)
    if violations:
        fail(f"stack {stack} violates {len({v.rule for v in violations})} policy rule(s): "
             + ", ".join(sorted({v.rule for v in violations})), code=1)


ca_app = typer.Typer(no_args_is_help=True, help="The stack's CA and where it is kept.")
app.add_typer(ca_app, name="ca")


@ca_app.command("store")
def ca_store(stack: str = StackOption) -> None:
    """Keep the stack's CA in its config (the secret hastack:ca), once per stack: the CA in pki/<stack>/
    if this machine converged the stack before, else a new one. Every converge, from any clone or CI,
    then uses it; a stack without it does not converge."""
    from hastack.ca_custody import CustodyError, store
    from hastack.inventory import pki_root

    try:
        say(store(stack, pki_root()))
    except (CustodyError, StackFileError, ValueError, FileExistsError) as e:
        fail(str(e))


def _stack_secrets(stack: str, token_stdin: bool):
    """The stack's secrets (hastack.rotation), the Hetzner API endpoint, how a new token is asked for, and how
    the agent hosts are checked to hold one."""
    import sys

    from hastack.converge import connected, converge
    from hastack.lab.layout import is_lab_stack
    from hastack.rotation import LabSecrets, PulumiSecrets
    from hastack.seed_rotation import RotationError
    from hastack.stackfile import PROJECT_DIR
    from hastack.token_rotation import agent_hosts, holders

    try:
        lab = is_lab_stack(stack)
    except StackFileError as e:
        fail(str(e))

    def lab_converge(what: str) -> None:
        report = converge(stack_entries(stack, None), progress=say)
        _print_converge(report)
        if not report.ok:
            raise RotationError(f"the converge for {what} failed; run the command again once it is fixed (a seed "
                                f"rotation carries on where it stopped):\n{report.failure()}")

    if lab:
        secrets = LabSecrets(open_lab(stack), lab_converge)
    else:
        secrets = PulumiSecrets(stack, PROJECT_DIR, floating_ip_id=lambda: stack_outputs_of(stack, None)["floatingIpId"],
                                floating_ip=lambda: stack_outputs_of(stack, None)["floatingIp"])

    def ask() -> str:
        if token_stdin:
            return sys.stdin.read()
        return typer.prompt("the new Hetzner API token (read & write, made in the console of this stack's project)",
                            hide_input=True)

    def token_holders(token: str) -> dict[str, str]:
        entries = stack_entries(stack, None)
        hosts = agent_hosts(entries)
        with connected({h: entries[h] for h in hosts}) as run:
            return holders(run, hosts, token)

    endpoint = next(iter(stack_entries(stack, None).values())).get("hcloud_api_endpoint",
                                                                   "https://api.hetzner.cloud/v1")
    return secrets, endpoint, ask, token_holders


def _fresh_mariadb_backup(stack: str) -> Callable[[], str]:
    """After a new seed: a full MariaDB backup now, so the newest one is under the new verification key."""
    def run() -> str:
        from hastack.offboard import OffboardError
        from roles.backup.cli import run_backups

        try:
            jobs, failed = run_backups(stack, None, "mariadb-full")
        except ValueError:
            return "no MariaDB backups in this stack: none to take again under the new seed's verification key"
        if failed:
            raise OffboardError("the MariaDB backup under the new seed's verification key failed (the weekly test "
                                "restore fails until one succeeds; `hastack backup now --kind mariadb-full`): "
                                + "; ".join(failed))
        return (f"a full MariaDB backup ({jobs} job{'s' if jobs > 1 else ''}) under the new seed's verification "
                "key: the weekly test restore has one it can open")
    return run


ROTATABLE = ("seed", "ca", "backup-keys", "failover-token", "all")
TokenStdin = typer.Option(False, "--token-stdin", help="read the new Hetzner token from standard input (a pipeline); "
                          "else it is asked for, hidden")


@app.command("rotate")
def rotate_cmd(what: str = typer.Argument(..., help="seed, ca, backup-keys, failover-token, or all of them"),
               stack: str = StackOption, token_stdin: bool = TokenStdin) -> None:
    """Replace a stack's secrets without downtime. seed: every MariaDB, Redis, Sentinel and Cassandra password,
    in three converges (services accept old and new; clients move; the old stops working). ca: a new stack CA
    with name constraints, in three converges (services trust both; every certificate issued again by the new,
    host by host; the old trusted nowhere); with seed (all), in the same three converges. backup-keys: new
    access keys for every writer and the reader, the old ones deleted once the hosts use the new. failover-token:
    a token you made in the Hetzner console, checked, stored, converged, checked on every agent host."""
    from hastack.lab import LabError
    from hastack.offboard import KINDS, OffboardError, rotate_secrets
    from hastack.seed_rotation import RotationError
    from hastack.token_rotation import TokenError

    if what not in ROTATABLE:
        fail(f"cannot rotate {what!r}: valid are {', '.join(ROTATABLE)}")
    kinds = KINDS if what == "all" else (what,)
    secrets, endpoint, ask, token_holders = _stack_secrets(stack, token_stdin)
    try:
        secrets.preflight()
        for line in rotate_secrets(secrets, kinds, endpoint, ask, token_holders, say=lambda m: None,
                                   fresh_backup=_fresh_mariadb_backup(stack)):
            say(line)
    except (RotationError, TokenError, OffboardError, ConnectionError, LabError) as e:
        fail(str(e))


@app.command("offboard")
def offboard_cmd(name: str = typer.Argument(..., help="the admin who leaves (their name in hastack:admins)"),
                 stack: str = StackOption, token_stdin: bool = TokenStdin) -> None:
    """An admin leaves: removed from the stack file, every secret they could have read rotated (seed, backup
    keys, failover token, stack CA), every host converged and checked. Prints what was done and what is left to do."""
    import os

    from hastack.converge import connected
    from hastack.offboard import KINDS, Offboarding, OffboardError, remove_admin, rotate_secrets, traces
    from hastack.lab import LabError
    from hastack.rotation import PulumiSecrets
    from hastack.seed_rotation import RotationError
    from hastack.stackfile import stack_path
    from hastack.token_rotation import TokenError

    path = stack_path(stack)
    if os.environ.get("HASTACK_SSH_USER") == name:
        fail(f"HASTACK_SSH_USER is {name}, the admin who leaves: the converge must log in as an admin who stays")
    try:
        new_text = remove_admin(path.read_text(), name)
    except (OffboardError, OSError) as e:
        fail(str(e))
    job = Offboarding(name, stack)
    secrets, endpoint, ask, token_holders = _stack_secrets(stack, token_stdin)
    cloud = isinstance(secrets, PulumiSecrets)
    try:
        secrets.preflight()
    except (RotationError, LabError) as e:
        fail(f"{e} (nothing was changed)")
    token = ask() if cloud else None  # asked before anything changes
    path.write_text(new_text)
    job.done.append(f"removed {name} from hastack:admins in {path.name} (commit it)")
    say(job.done[-1])
    try:
        job.done += rotate_secrets(secrets, KINDS, endpoint, (lambda: token) if token else ask, token_holders, say=say,
                                   fresh_backup=_fresh_mariadb_backup(stack))
        entries = stack_entries(stack, None)
        with connected(entries) as run:
            left = traces(run, sorted(entries), name)
    except (RotationError, TokenError, OffboardError, ConnectionError) as e:
        fail(f"{e}\n{job.checklist(['finish: run `hastack offboard` again once this is fixed'])}")
    if left:
        fail(f"{name} is still on: " + "; ".join(f"{h}: {what}" for h, what in left.items()))
    job.done.append(f"checked all {len(entries)} hosts: no account, home, process, sudo or sshd rule of {name}")
    by_hand = [f"take {name} out of the Pulumi backend's and the CI's access (their own accounts, not this stack's)"]
    if cloud:
        by_hand.insert(0, "delete the old failover token in the Hetzner console (Security -> API tokens), and any "
                          f"Hetzner or AWS console access of {name}")
    console.print(job.checklist(by_hand), markup=False, highlight=False, soft_wrap=True)


@app.command()
def stacks() -> None:
    """List the stacks in stacks/."""
    for name in available_stacks():
        console.print(name)


@app.command()
def inventory(outputs: Path = typer.Argument(..., help="JSON from `pulumi stack output --json --show-secrets`")) -> None:
    """Show the pyinfra inventory a stack's outputs give (secrets are not printed)."""
    from hastack.inventory import InventoryError, host_entries

    try:
        entries = host_entries(json.loads(outputs.read_text()))
    except (InventoryError, ValueError, OSError) as e:
        fail(str(e))
    table = Table(title="inventory")
    for col in ("host", "connect to", "as", "groups", "secrets"):
        table.add_column(col)
    for name, data in entries.items():
        secrets = [k for k in ("failover_token", "backup_credentials") if k in data]
        table.add_row(name, data["ssh_hostname"], data["ssh_user"], ", ".join(data["groups"]), ", ".join(secrets) or "-")
    console.print(table)


lab_app = typer.Typer(no_args_is_help=True, help="The local lab: the stack as real machines on this host.")
app.add_typer(lab_app, name="lab")
LabStack = typer.Option("lab", "--stack", "-s", help="lab stack: stacks/Pulumi.<stack>.yaml with hastack:provider lab")


def _print_converge(report) -> None:
    table = Table(title=f"converge: {report.changes} changes in {report.seconds:.1f}s")
    for col in ("host", "operations", "changed", "result"):
        table.add_column(col)
    for r in report.hosts.values():
        table.add_row(r.name, str(r.operations), str(r.changed), f"[red]FAILED {r.failed}[/red]" if r.failed else "ok")
    console.print(table)
    # where a long converge's time went: its phases, and the operations that held every host longest
    if report.phases:
        console.print("phases: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in report.phases.items()))
    if report.slowest:
        console.print("slowest operations: " + "; ".join(f"{name} {seconds:.0f}s" for name, seconds in report.slowest))


def _print_drift(report) -> None:
    """A dry run's findings: each host's operations that would change something."""
    hosts = len(report.hosts)
    drifted = [r for r in report.hosts.values() if r.changed]
    table = Table(title=f"converge --check: {report.changes} operations would change on {len(drifted)} of {hosts} "
                        f"hosts ({report.seconds:.1f}s, nothing was changed)")
    for col in ("host", "operations", "would change", "what"):
        table.add_column(col)
    for r in report.hosts.values():
        what = "\n".join(r.changed_operations) or ("-" if not r.failed else f"[red]NOT CHECKED {r.failed}[/red]")
        table.add_row(r.name, str(r.operations), str(r.changed), what)
    console.print(table)


@lab_app.command("up")
def lab_up(stack: str = LabStack, no_converge: bool = typer.Option(False, "--no-converge")) -> None:
    """Build what is missing, boot every machine, converge. Idempotent; recovers a half-finished run."""
    from hastack.lab import LabError, services

    lab = open_lab(stack)
    try:
        result = lab.up(converge=not no_converge)
    except LabError as e:
        fail(str(e))
    report = result.get("converge")
    if report is not None:
        _print_converge(report)
    _print_status(lab)
    t = result["timings"]
    ahead = t.get("converge: after roles, ahead", 0)
    converged = (f", converge {t['converge']:.0f}s of which the steps after the roles (the Cassandra ring) "
                 f"{t.get('converge: after roles', 0) + ahead:.0f}s"
                 + (f", {ahead:.0f}s of them while other hosts still ran their operations" if ahead >= 0.5 else "")
                 if "converge" in t else "")
    console.print(f"lab up took {t['total']:.0f}s (image {t['image']:.0f}s, network {t['network']:.0f}s, "
                  f"boot {t['boot']:.0f}s, package lists {t['apt']:.0f}s{converged})")
    console.print(f"log in: [bold]hastack lab ssh {lab.topo.hosts[0].name}[/bold]  "
                  f"(or ssh -i {lab.paths.admin_key(lab.admin)} {lab.admin}@<public IP>); "
                  f"the site: https://{lab.addr.floating_ip}/ from the hsl-internet namespace; "
                  f"its status page: {services.status_url(lab.addr)}")
    if report is not None and not report.ok:
        fail(report.failure(), code=1)


def _print_status(lab) -> None:
    table = Table(title=f"lab {lab.stack}")
    for col in ("machine", "role", "location", "state", "public IP", "private IP"):
        table.add_column(col)
    for row in lab.status():
        table.add_row(row["name"], row["role"], row["location"], row["state"], row["public_ip"], row["private_ip"])
    console.print(table)


@lab_app.command("status")
def lab_status(stack: str = LabStack, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every machine, its state and addresses."""
    lab = open_lab(stack)
    if as_json:
        print(lab.status_json())
    else:
        _print_status(lab)


@lab_app.command("stop")
def lab_stop(host: str, stack: str = LabStack,
             hard: bool = typer.Option(False, "--hard", help="kill it like a power cut instead of a clean poweroff")) -> None:
    """Power a machine off (for failure tests)."""
    from hastack.lab import LabError

    try:
        open_lab(stack).stop(host, hard=hard)
    except LabError as e:
        fail(str(e))
    console.print(f"{host} stopped")


@lab_app.command("start")
def lab_start(host: str, stack: str = LabStack) -> None:
    """Power a machine on again and wait for it to boot."""
    from hastack.lab import LabError

    try:
        state = open_lab(stack).start(host)
    except LabError as e:
        fail(str(e))
    console.print(f"{host} {state}")


@lab_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def lab_exec(ctx: typer.Context, host: str, stack: str = LabStack) -> None:
    """Run a command as root in a machine: hastack lab exec HOST -- CMD..."""
    from hastack.lab import LabError

    if not ctx.args:
        fail("give a command after --, e.g. hastack lab exec lab-db1 -- systemctl status")
    try:
        proc = open_lab(stack).exec(host, list(ctx.args))
    except LabError as e:
        fail(str(e))
    print(proc.stdout, end="")
    err_console.print(proc.stderr, end="", highlight=False, markup=False)
    raise typer.Exit(proc.returncode)


@lab_app.command("ssh")
def lab_ssh(host: str, stack: str = LabStack) -> None:
    """Log in to a machine over SSH as the first admin, as an operator would."""
    import os

    lab = open_lab(stack)
    cmd = lab.ssh_command(host, batch=False)
    os.execvp(cmd[0], cmd)  # nosec B606  # the ssh argument list Lab.ssh_command builds, no shell


@lab_app.command("s3")
def lab_s3(identity: str = typer.Option("admin", "--as", help="admin, reader or writer (with --host)"),
           host: str = typer.Option(None, "--host", help="the backup host whose writer to act as"),
           prefix: str = typer.Option("", "--prefix", help="list only keys starting with this"),
           stack: str = LabStack) -> None:
    """List every version in the lab's backup bucket as one of its identities (the
    writer may not list: it is refused, as in AWS)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from hastack.lab import LabError, s3

    try:
        creds = s3.load_credentials(open_lab(stack).paths)
        if creds is None:
            raise LabError("the lab's S3 is not set up: run `hastack lab up`")
        client = s3.client_for(creds, identity, host)
        pages = client.get_paginator("list_object_versions").paginate(Bucket=creds["bucket"], Prefix=prefix)
        table = Table(title=f"{creds['bucket']} at {creds['endpoint']}, as {identity} {host or ''}".rstrip())
        for col in ("key", "version", "size", "latest"):
            table.add_column(col)
        for page in pages:
            for v in page.get("Versions", []):
                table.add_row(v["Key"], v["VersionId"], str(v["Size"]), "yes" if v["IsLatest"] else "")
            for m in page.get("DeleteMarkers", []):
                table.add_row(m["Key"], m["VersionId"], "delete marker", "yes" if m["IsLatest"] else "")
    except (LabError, ClientError, BotoCoreError) as e:
        fail(str(e))
    console.print(table)


@lab_app.command("down")
def lab_down(stack: str = LabStack) -> None:
    """Remove every machine, namespace, bridge, mount and process of the lab."""
    lab = open_lab(stack)
    removed = lab.down()
    left = lab.leftovers()
    console.print(f"removed {len(removed)} items")
    if left:
        fail("still present: " + ", ".join(left), code=1)


@app.command("converge")
def converge_cmd(stack: str = StackOption, outputs: Path = OutputsOption,
                 check: bool = typer.Option(False, "--check", help="a dry run: list, per host, every operation "
                                            "that would change something; change nothing; exit 1 on drift")) -> None:
    """Converge every host of a stack (drift repair). Lab stacks use the lab's machines.

    With --check: exit 0 when nothing would change, 1 when something would (drift), 2 when a
    host could not be checked."""
    from hastack.converge import converge

    entries = stack_entries(stack, outputs)
    if check:
        report = converge(entries, progress=say, check=True)
        _print_drift(report)
        failed = [r for r in report.hosts.values() if r.failed]
        if failed:
            fail("could not check " + "; ".join(f"{r.name}: {r.failed}" for r in failed), code=2)
        raise typer.Exit(1 if report.changes else 0)
    report = converge(entries, progress=say)
    _print_converge(report)
    if not report.ok:
        fail(report.failure(), code=1)


# commands a role brings (`hastack cassandra status`, ...) and its restore (`hastack restore mariadb`)
restore_app = typer.Typer(help="Restore a data store from the backups (the reader identity and your age key).",
                          no_args_is_help=True)
for _role in all_roles():
    if _role.cli_app() is not None:
        app.add_typer(_role.cli_app(), name=_role.name)
    for _name, _group in _role.command_groups().items():
        app.add_typer(_group, name=_name)
    if _role.restore_command() is not None:
        restore_app.command(_role.name)(_role.restore_command())
app.add_typer(restore_app, name="restore")


@app.command("status")
def status_cmd(stack: str = StackOption, outputs: Path = OutputsOption,
               uptime_url: str = typer.Option(None, "--uptime-url", help="the uptime Prometheus outside the stack "
                                              "(default: the lab's own for a lab stack, else none)"),
               interval: float = typer.Option(None, "--interval", help="seconds between the uptime probes "
                                              "(default: the stack's siteProbeInterval)"),
               as_json: bool = typer.Option(False, "--json", help="the summary as JSON on standard output"),
               html: Path = typer.Option(None, "--html", help="also write the static status page here")) -> None:
    """The stack's services, the site's uptime, incidents and firing alerts.

    Exit code: 0 when every service is ok and no critical alert fires; 1 when a service
    is down, degraded or unknown, or a critical alert fires; 2 on a usage error."""
    from hastack.status import collect_for_stack, lab_uptime_url, render_terminal, write_page

    if interval is None:
        from roles.monitoring.uptime import probe_interval

        interval = probe_interval(stack)
    if interval <= 0:
        fail("--interval must be more than 0 seconds")
    entries = stack_entries(stack, outputs)
    result = collect_for_stack(stack, entries, uptime_url or lab_uptime_url(stack), interval)
    if html is not None:
        try:
            write_page(result, html)
        except OSError as e:
            fail(f"--html {html}: {e}")
    if as_json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        render_terminal(result, console)
    raise typer.Exit(result.exit_code)


if __name__ == "__main__":
    app()
