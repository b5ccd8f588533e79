"""The local lab: a stack's topology as real systemd machines on this host."""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from hastack.lab import image, network, s3, services
from hastack.lab.layout import (HCLOUD_API_PORT, S3_PORT, Addresses, Paths, default_paths, lab_api_tokens,
                                lab_ca_state, lab_secret, lab_seed_state, lab_stack_pki, lab_topology,
                                write_lab_stack_trust)
from hastack.lab.machine import APT_STAMP, CGROUP_GROUP, Machine, cgroup_roots, remove_cgroup_tree
from hastack.lab.system import LabError, preflight
from hastack.model import Topology
from hastack.outputs import Provided, Server, stack_outputs
from roles import hcloud_agent, role

__all__ = ["Lab", "LabError"]

FLOATING_IP_ID = 1


class Lab:
    def __init__(self, stack: str = "lab", paths: Paths | None = None, topo: Topology | None = None,
                 log: Callable[[str], None] = print):
        self.paths = paths or default_paths()
        self.stack = stack
        self.topo = topo or lab_topology(stack, self.paths)
        self.addr = Addresses(self.topo)
        self.log = log
        self.machines = {h.name: Machine(self.paths, self.addr, h) for h in self.topo.hosts}

    def machine(self, name: str) -> Machine:
        if name not in self.machines:
            raise LabError(f"no machine {name!r} in the {self.stack} lab; machines: {', '.join(self.machines)}")
        return self.machines[name]

    # ------------------------------------------------------------ lifecycle

    def up(self, converge: bool = True) -> dict[str, Any]:
        """Build what is missing, boot every machine, converge. Safe to re-run after a crash."""
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        preflight()
        _kernel_settings_for_machines(self.topo)
        _kernel_limits_for(len(self.machines))
        image.build(self.paths, log=self.log)
        timings["image"] = time.monotonic() - t0

        t = time.monotonic()
        self.log("networks: private bridge, public bridge, one namespace per machine, the internet namespace")
        network.setup(self.addr)
        services.start(self.paths, self.addr)
        services.fetch_wheels(self.paths, hcloud_agent.LOCK)
        lab_secret(self.paths, "hcloud-token")
        first_lb = self.topo.floating_ip_hosts[0]
        services.start_hcloud_api(
            self.paths, self.addr,
            servers=[{"id": self.server_id(h.name), "name": h.name, "public_ip": self.addr.public_ip(h),
                      "private_ip": h.private_ip, "location": h.location, "labels": {"stack": self.stack, "role": h.role}}
                     for h in self.topo.hosts],
            # like `pulumi up`, the first load balancer holds the IP at creation
            floating_ip={"id": FLOATING_IP_ID, "ip": self.addr.floating_ip, "server": self.server_id(first_lb.name),
                         "home_location": self.topo.floating_ip_home},
            cert=self.ca.issue("hcloud-api", dns=["hcloud-api.lab"], ips=[self.addr.host_public]),
            token_file=lab_api_tokens(self.paths))
        services.start_s3(self.paths, self.addr, self.topo, log=self.log,
                          cert=self.ca.issue("s3", dns=["s3.lab"], ips=[self.addr.host_private]))
        services.start_monitoring(self.paths, self.addr, self.stack, ca_file=self.stack_trust_file)
        timings["network"] = time.monotonic() - t

        t = time.monotonic()
        for m in self.machines.values():
            m.prepare(self.topo)
        self._write_known_hosts()
        to_boot = [m for m in self.machines.values() if not m.running()]
        self.log(f"booting {len(to_boot)} machines ({len(self.machines) - len(to_boot)} already running)")
        for m in to_boot:
            m.start()
        with ThreadPoolExecutor(max_workers=len(self.machines)) as pool:
            states = dict(zip(self.machines, pool.map(lambda m: m.wait_booted(), self.machines.values()), strict=True))
        degraded = [n for n, s in states.items() if s != "running"]
        for name in degraded:
            failed = self.machines[name].exec(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
            self.log(f"warning: {name} booted degraded: {failed.strip()}")
        timings["boot"] = time.monotonic() - t

        # One machine fetches the package lists through the apt cache; the others get its files. The
        # converge then finds them fresh and the .deb downloads run in parallel. (Fetched by every
        # machine, the lists cost a dozen parses of the whole archive, and apt-cacher-ng races when many
        # clients fetch the same index at once: a fresh InRelease is renamed under a second-resolution name.)
        t = time.monotonic()
        stale = [m for m in self.machines.values() if not m.apt_lists_fresh()]
        if stale:
            self.log(f"fetching package lists through the apt cache on {stale[0].name}, "
                     f"copied to {len(stale) - 1} more")
            # the stamp apt.packages(cache_time=...) reads, touched as pyinfra's own update touches it:
            # without it the converge's first install fetches the lists again on every machine
            stale[0].exec(["sh", "-c", f"apt-get update -qq && mkdir -p {APT_STAMP.rsplit('/', 1)[0]} "
                                       f"&& touch {APT_STAMP}"], timeout=300)
            for m in stale[1:]:
                m.take_apt_lists_from(stale[0])
        timings["apt"] = time.monotonic() - t

        result: dict[str, Any] = {"timings": timings}
        if converge:
            from hastack.converge import converge as run_converge

            t = time.monotonic()
            self.log("converging every machine with the pyinfra roles")
            report = run_converge(self.inventory_entries(), progress=self.log)
            timings["converge"] = time.monotonic() - t
            for phase, seconds in report.phases.items():  # the converge's own phases, the ring among them
                timings[f"converge: {phase}"] = seconds
            # the ring's part that ran while other hosts still ran their operations (in "run" above)
            timings["converge: after roles, ahead"] = sum(report.ran_ahead.values())
            result["converge"] = report
        timings["total"] = time.monotonic() - t0
        return result

    def down(self) -> list[str]:
        """Remove every machine, mount, namespace, bridge and process of the lab. Keeps the base image and caches."""
        removed = []
        for m in self.machines.values():
            if m.running() or m.mounted() or m.dir.exists():
                m.remove()
                removed.append(f"machine {m.name}")
        # machines of an earlier lab with another topology
        if self.paths.machines.exists():
            for stale in self.paths.machines.iterdir():
                if stale.name not in self.machines:
                    Machine(self.paths, self.addr, _stale_host(stale.name)).remove()
                    removed.append(f"machine {stale.name}")
        from hastack.lab.vm import remove_all as remove_virtual_machines

        removed += [f"virtual machine {name}" for name in remove_virtual_machines(self.paths)]
        for root in cgroup_roots():
            if (root / CGROUP_GROUP).exists():
                remove_cgroup_tree(root / CGROUP_GROUP)
        removed += services.stop(self.paths)
        # the lab's S3 kept its keys in memory only: the stored ones are worthless now
        s3.credentials_path(self.paths).unlink(missing_ok=True)
        removed += network.teardown()
        shutil.rmtree(self.paths.run, ignore_errors=True)
        return removed

    def leftovers(self) -> list[str]:
        """What of a lab still exists on the host (empty after `down`)."""
        found = network.leftovers()
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        found += [f"mount {m}" for m in mounts if m.startswith(str(self.paths.machines))]
        found += [f"process {n} ({pid})" for n, pid in services.running(self.paths).items() if pid]
        found += [f"cgroup {root / CGROUP_GROUP}" for root in cgroup_roots() if (root / CGROUP_GROUP).exists()]
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmd = (proc / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if cmd and cmd[0].endswith(b"systemd-nspawn") and any(str(self.paths.machines).encode() in c for c in cmd):
                    found.append(f"process systemd-nspawn ({proc.name})")
                if cmd and cmd[0].endswith(b"qemu-system-x86_64") and any(str(self.paths.root).encode() in c for c in cmd):
                    found.append(f"process qemu-system-x86_64 ({proc.name})")
        return found

    # ------------------------------------------------------------ day to day

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for h in self.topo.hosts:
            m = self.machines[h.name]
            state = "running" if m.running() else ("stopped" if m.dir.exists() else "absent")
            rows.append({
                "name": h.name, "role": h.role, "location": h.location, "state": state,
                "private_ip": h.private_ip, "public_ip": self.addr.public_ip(h), "pid": m.nspawn_pid(),
            })
        return rows

    def status_json(self) -> str:
        return json.dumps({
            "stack": self.stack,
            "machines": self.status(),
            "floating_ip": self.addr.floating_ip,
            "internet_namespace": {"name": "hsl-internet", "address": self.addr.internet},
            "operator_address": self.addr.host_public,
            "services": services.running(self.paths),
        }, indent=2)

    def stop(self, name: str, hard: bool = False) -> None:
        self.machine(name).stop(hard=hard)

    def start(self, name: str) -> str:
        m = self.machine(name)
        m.start()
        return m.wait_booted()

    def exec(self, name: str, cmd: list[str], check: bool = False, input: str | None = None):
        return self.machine(name).exec(cmd, check=check, input=input)

    # ------------------------------------------------------------ access

    @property
    def admin(self) -> str:
        return self.topo.admins[0].name

    def ssh_command(self, name: str, user: str | None = None, key: Path | None = None,
                    batch: bool = True) -> list[str]:
        h = self.machine(name).host
        cmd = ["ssh", "-i", str(key or self.paths.admin_key(user or self.admin)),
               "-o", f"UserKnownHostsFile={self.paths.known_hosts}", "-o", "StrictHostKeyChecking=yes",
               "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"]
        if batch:
            cmd += ["-o", "BatchMode=yes"]
        return cmd + [f"{user or self.admin}@{self.addr.public_ip(h)}"]

    def stack_outputs(self, topo: Topology | None = None) -> dict[str, Any]:
        """The lab in the shape of a real stack's `pulumi stack output --json` (hastack.outputs).

        The lab is the cloud here: its server ids and addresses, its CA, its
        Hetzner API endpoint, its S3 (bucket, writer and reader keys, endpoint),
        Python packages from the host's wheels."""
        topo = topo or self.topo
        machines = {h.name: Server(server_id=self.server_id(h.name), public_ipv4=self.addr.public_ip(h))
                    for h in topo.hosts}
        provided = Provided({
            "pki_dir": str(lab_stack_pki(self.paths)),
            "lab": True,
            "hcloud_api_endpoint": f"https://{self.addr.host_public}:{HCLOUD_API_PORT}/v1",
            "hcloud_api_ca": self.ca.ca_pem,
            "agent_pip_index": ["--no-index", "--find-links", f"{services.artifact_url(self.addr)}/wheels/",
                                "--trusted-host", self.addr.host_private],
            # AWS's endpoint and the system CAs in production (roles/backup PROVIDED_DEFAULTS)
            "backup_s3_endpoint": s3.endpoint_url(self.addr.host_private, S3_PORT),
            "backup_s3_ca": self.ca.ca_pem,
            # the operator's age key: its public half encrypts the backups on the hosts
            "backup_age_recipients": [backup_age_recipient(self.paths)],
        })
        ca = self.ca_state()
        write_lab_stack_trust(self.paths, ca)
        secrets = {"failover_token": lab_secret(self.paths, "hcloud-token"), **lab_seed_state(self.paths).secrets(),
                   **ca.secrets()}
        bucket = None
        backup = s3.load_credentials(self.paths)  # written by `lab up` (services.start_s3)
        if backup is not None:
            bucket = backup["bucket"]
            secrets.update(backup_writers=backup["writers"], restore_reader=backup["reader"])
        return stack_outputs(topo, machines, floating_ip=self.addr.floating_ip, floating_ip_id=FLOATING_IP_ID,
                             secrets=secrets, backup_bucket=bucket, provided=provided)

    def connection(self) -> dict[str, Any]:
        """How pyinfra reaches the machines: the lab admin's key, host keys pinned."""
        return {
            "ssh_key": str(self.paths.admin_key(self.admin)),
            "ssh_known_hosts_file": str(self.paths.known_hosts),
            "ssh_strict_host_key_checking": "yes",
        }

    def inventory_entries(self, topo: Topology | None = None) -> dict[str, dict[str, Any]]:
        """pyinfra host data for every machine, through the same adapter as a cloud stack."""
        from hastack.inventory import host_entries

        entries = host_entries(self.stack_outputs(topo), ssh_user=self.admin)
        for data in entries.values():
            data.update(self.connection())
        return entries

    def server_id(self, name: str) -> int:
        """The lab's Hetzner server ids: the host's number in the private subnet (stable as roles grow)."""
        return self.addr.host_number(self.topo.host(name))

    @property
    def ca(self):
        from hastack.pki import CertificateAuthority

        # the lab keeps its own CA (.lab/pki): it signs its clouds' endpoints, and is the lab stack's first CA
        return CertificateAuthority.own(self.paths.pki, self.stack)

    def ca_state(self):
        """The lab stack's CA and its rotation (hastack.ca_rotation), kept in .lab/secrets once rotated."""
        return lab_ca_state(self.paths, self.ca)

    @property
    def stack_trust_file(self) -> Path:
        """What a client of the stack trusts (the site, its services): written at every converge and rotation."""
        return write_lab_stack_trust(self.paths, self.ca_state())

    def _write_known_hosts(self) -> None:
        self.paths.ssh.mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = [m.host_key_line() for m in self.machines.values()]
        self.paths.known_hosts.write_text("\n".join(lines) + "\n")
        os.chmod(self.paths.known_hosts, 0o600)


def backup_age_recipient(paths: Paths) -> str:
    """The lab operator's age key for backups (.lab/secrets/backup-age.key, 0600), made once; its public key."""
    import subprocess

    key = paths.secrets / "backup-age.key"
    if not key.exists():
        paths.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        os.chmod(key, 0o600)
    return subprocess.run(["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True).stdout.strip()


def _kernel_settings_for_machines(topo: Topology) -> None:
    """Kernel settings the machines' roles ask for but cannot set (they are not per
    container, hastack.role.Role.host_kernel): the host provides at least that much."""
    for name in topo.roles_in_use:
        settings = topo.resolved_settings(name)
        for sysctl, key in role(name).host_kernel.items():
            _at_least(sysctl, int(settings[key]))


# Each machine's systemd and its services take inotify instances and watches from the host's
# per-user limits (all machines' root is the host's root): Debian's 128 instances run out
# near 16 machines, and the next ones hang while booting.
INOTIFY_PER_MACHINE = {"fs.inotify.max_user_instances": 32, "fs.inotify.max_user_watches": 16384}


def _kernel_limits_for(machines: int) -> None:
    for sysctl, per_machine in INOTIFY_PER_MACHINE.items():
        _at_least(sysctl, per_machine * machines)


def _at_least(sysctl: str, value: int) -> None:
    """Raise a host kernel setting to ``value``; never lowers it."""
    path = Path("/proc/sys") / sysctl.replace(".", "/")
    if int(path.read_text()) < value:
        path.write_text(f"{value}\n")


def _stale_host(name: str):
    from hastack.model import Host

    # a placeholder address: the record only names a machine to remove, nothing binds or connects to it
    return Host(name=name, role="-", index=1, location="-", server_type="-", private_ip="0.0.0.0")  # nosec B104  # placeholder, see above
