"""A lab machine with a kernel of its own: a virtual machine (QEMU) booted from the lab's base image and
Debian's kernel, for what a container cannot show. The kernel's audit subsystem belongs to the host of a
container (one audit daemon per kernel), so the base role's audit trail is proved on one of these.

The machine reaches the lab's package cache through QEMU's user network (its outgoing connections leave
from the lab host) and answers SSH on a port of the host's loopback address."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hastack.lab.layout import Paths
from hastack.lab.machine import write_first_boot
from hastack.lab.system import LabError, pid_alive, read_pid, run
from hastack.templating import render_user_data

# The kernel, and auditd: the base role installs it on every host, but under an emulated processor that
# took 106 s of the virtual machine's first converge (the containers install it through the converge).
IMAGE_PACKAGES = ("linux-image-amd64", "auditd")
# What the marker records: a change rebuilds the kernel image.
RECIPE = f"{' '.join(IMAGE_PACKAGES)}, package lists fetched, systemd-networkd by DHCP, root on /dev/vda"
QEMU = "qemu-system-x86_64"
# QEMU emulates the processor unless told otherwise: on the nested virtualisation of a cloud build machine
# /dev/kvm opens but a guest hangs before its kernel's first line, where emulation boots it in about a minute
ACCEL_ENV = "HASTACK_LAB_VM_ACCEL"

NETWORK = """\
[Match]
Name=en*

[Network]
DHCP=ipv4
"""


def vm_usable() -> str | None:
    """None when this machine can run a virtual machine; otherwise why not."""
    if not shutil.which(QEMU):
        return f"{QEMU} is not installed (`make host-deps` installs qemu-system-x86)"
    if os.environ.get(ACCEL_ENV, "tcg") == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return f"{ACCEL_ENV}=kvm, but /dev/kvm is missing or not writable"
    return None


class VirtualMachine:
    """One KVM guest: ``name`` as its host name, the stack's admins from cloud-init as on every lab machine."""

    def __init__(self, paths: Paths, topo, name: str, proxy: str, memory_mb: int = 1024):
        self.paths, self.topo, self.name, self.proxy, self.memory_mb = paths, topo, name, proxy, memory_mb
        self.images = paths.root / "vm"
        self.dir = self.images / name
        self.disk = self.dir / "disk.img"
        self.pidfile = self.dir / "qemu.pid"
        self.console = self.dir / "console.log"
        self.known_hosts = self.dir / "known_hosts"
        self.port_file = self.dir / "ssh-port"

    # ------------------------------------------------------------ images

    @property
    def kernel_root(self) -> Path:
        return self.images / "root"

    def build_kernel_image(self, log=print) -> None:
        """Once: the base image with Debian's kernel and its initramfs, and a network set up by DHCP."""
        marker = self.images / "root.complete"
        if marker.exists() and marker.read_text().strip() == RECIPE:
            return
        if not (self.paths.base_marker.exists()):
            raise LabError("the lab's base image is not built yet (`hastack lab up` builds it)")
        tmp = self.images / "root.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.images.mkdir(parents=True, exist_ok=True)
        log(f"building the virtual machines' image: the base image with {', '.join(IMAGE_PACKAGES)} (once)")
        run("cp", "-a", "--reflink=auto", str(self.paths.base), str(tmp), timeout=600)
        policy = tmp / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\nexit 101\n")  # the packages' scripts start nothing in the image
        policy.chmod(0o755)
        proxy = tmp / "etc/apt/apt.conf.d/01hastack-lab-proxy"
        proxy.write_text(f'Acquire::http::Proxy "{self.proxy}";\n')
        try:
            # fresh package lists in the image: a first converge on the machine need not fetch them (an
            # emulated processor takes a minute to read them)
            for command in (("apt-get", "update", "-q"),
                            ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q",
                             "--no-install-recommends", *IMAGE_PACKAGES),
                            ("apt-get", "clean")):
                run("systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D", str(tmp), "--pipe", *command,
                    timeout=1200)
        finally:
            policy.unlink()
            proxy.unlink()
        (tmp / "etc/systemd/network/10-hastack-vm.network").write_text(NETWORK)
        wants = tmp / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / "systemd-networkd.service"
        if not link.is_symlink():
            link.symlink_to("/lib/systemd/system/systemd-networkd.service")
        (tmp / "etc/fstab").write_text("/dev/vda / ext4 defaults,errors=remount-ro 0 1\n")
        shutil.rmtree(self.kernel_root, ignore_errors=True)
        tmp.rename(self.kernel_root)
        marker.write_text(RECIPE + "\n")

    def _boot_files(self) -> tuple[Path, Path]:
        boot = self.kernel_root / "boot"
        kernels = sorted(boot.glob("vmlinuz-*"))
        if not kernels:
            raise LabError(f"no kernel in {boot}: remove {self.images} and build again")
        version = kernels[-1].name.removeprefix("vmlinuz-")
        return kernels[-1], boot / f"initrd.img-{version}"

    def create(self, log=print) -> None:
        """A fresh disk: the kernel image plus this machine's identity (host keys, machine id, cloud-init
        seed with the stack's admins, the lab's package cache), as an ext4 file system of its own."""
        self.build_kernel_image(log)
        self.remove()
        self.dir.mkdir(parents=True)
        staging = self.dir / "staging"
        upper, work = self.dir / "upper", self.dir / "work"
        for d in (staging, upper, work):
            d.mkdir()
        run("mount", "-t", "overlay", f"{self.name}-overlay", "-o",
            f"lowerdir={self.kernel_root},upperdir={upper},workdir={work}", str(staging))
        try:
            write_first_boot(staging, self.name, render_user_data(self.topo, SimpleNamespace(name=self.name)),
                             self.proxy)
            key = (staging / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
            self._host_key = f"{key[0]} {key[1]}"
            # sparse: the file takes the space its files use
            run("mkfs.ext4", "-q", "-F", "-L", "vmroot", "-d", str(staging), str(self.disk), "4G", timeout=600)
        finally:
            run("umount", str(staging))
            for d in (staging, upper, work):
                shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------ process

    def pid(self) -> int | None:
        pid = read_pid(self.pidfile)
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    @property
    def port(self) -> int:
        return int(self.port_file.read_text())

    def start(self, timeout: float = 420) -> float:
        """Boots the machine and waits for SSH with the stack's admin; seconds it took."""
        if self.running():
            return 0.0
        if not self.disk.exists():
            raise LabError(f"{self.name} has no disk: create it first")
        kernel, initrd = self._boot_files()
        port = _free_port()
        self.port_file.write_text(f"{port}\n")
        host_key = getattr(self, "_host_key", None) or self._read_host_key()
        self.known_hosts.write_text(f"[127.0.0.1]:{port} {host_key}\n")
        os.chmod(self.known_hosts, 0o600)
        started = time.monotonic()
        self.console.unlink(missing_ok=True)
        kvm = os.environ.get(ACCEL_ENV, "tcg") == "kvm"
        run(QEMU, "-name", self.name, "-machine", f"q35,accel={'kvm' if kvm else 'tcg'}",
            "-cpu", "host,-arch-capabilities" if kvm else "max", "-smp", "1",
            "-m", str(self.memory_mb), "-nodefaults", "-display", "none", "-no-reboot",
            "-serial", f"file:{self.console}", "-kernel", str(kernel), "-initrd", str(initrd),
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1",
            "-drive", f"file={self.disk},if=virtio,format=raw,cache=unsafe",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=net0",
            "-daemonize", "-pidfile", str(self.pidfile), timeout=60)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise LabError(f"{self.name} stopped while booting; its console:\n{self.console_tail()}")
            if self.ssh(["true"], timeout=15).returncode == 0:
                return time.monotonic() - started
            time.sleep(1)
        raise LabError(f"{self.name}: no SSH login after {timeout:.0f} s; its console:\n{self.console_tail()}")

    def _read_host_key(self) -> str:
        for line in self.known_hosts.read_text().splitlines():
            _address, kind, key = line.split()
            return f"{kind} {key}"
        raise LabError(f"{self.name}: no recorded host key in {self.known_hosts}")

    def console_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console output)"

    def stop(self, timeout: float = 60) -> None:
        """A power cut: the process ends, the disk keeps what was written."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        self.stop()
        staging = self.dir / "staging"
        if staging.is_dir() and os.path.ismount(staging):
            run("umount", str(staging), check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ access

    def ssh_command(self, admin: str) -> list[str]:
        return ["ssh", "-i", str(self.paths.admin_key(admin)), "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                f"{admin}@127.0.0.1"]

    def ssh(self, command: list[str], admin: str | None = None, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        import shlex

        admin = admin or self.topo.admins[0].name
        try:
            return subprocess.run([*self.ssh_command(admin), shlex.join(command)], capture_output=True, text=True,
                                  timeout=timeout, input=input)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(e.cmd, 255, "", f"timed out after {timeout} s")

    def exec(self, command: list[str], **kw) -> subprocess.CompletedProcess:
        """``command`` as root (through the admin's sudo)."""
        return self.ssh(["sudo", "-n", *command], **kw)

    def inventory_entry(self, admin: str | None = None) -> dict[str, Any]:
        """pyinfra host data to reach it (the converge's entries), without any topology data."""
        return {"ssh_hostname": "127.0.0.1", "ssh_port": self.port, "ssh_user": admin or self.topo.admins[0].name,
                "_sudo": True, "ssh_key": str(self.paths.admin_key(admin or self.topo.admins[0].name)),
                "ssh_known_hosts_file": str(self.known_hosts), "ssh_strict_host_key_checking": "yes"}


def remove_all(paths: Paths) -> list[str]:
    """Stops and removes every virtual machine of the lab (the kernel image stays, as the base image
    does); their names."""
    images = paths.root / "vm"
    removed = []
    for d in sorted(images.iterdir()) if images.is_dir() else ():
        if (d / "disk.img").exists() or (d / "qemu.pid").exists():
            VirtualMachine(paths, None, d.name, proxy="").remove()
            removed.append(d.name)
    return removed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
