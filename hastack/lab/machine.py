"""One lab machine: an overlay over the base image, booted by systemd-nspawn
in its own network namespace. What it writes goes to a disk of its own (an ext4
file system in a sparse file), as a cloud server has one."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from pyinfra.operations.apt import APT_UPDATE_FILENAME

from hastack.templating import render_user_data
from hastack.lab.layout import Addresses, Paths, netns, veth
from hastack.lab.services import proxy_url
from hastack.lab.system import LabError, ok, pid_alive, read_pid, run
from hastack.model import Host, Topology


CGROUP_GROUP = "hastack-lab"
# Hetzner's smallest servers' disk; sparse, so only what a machine writes takes space on the host
DISK_SIZE = "40G"
# apt.packages(cache_time=...) fetches the package lists again unless this file is younger than that
APT_STAMP = APT_UPDATE_FILENAME


def cgroup_roots() -> list[Path]:
    """The hierarchies a systemd machine needs its own subtree in (hybrid v1 or pure v2)."""
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return [Path("/sys/fs/cgroup")]
    return [p for p in (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified")) if p.is_dir()]


def mounted_at(path: Path) -> bool:
    target = str(path)
    return any(line.split()[4] == target for line in Path("/proc/self/mountinfo").read_text().splitlines())


def mount_disk(image: Path, mountpoint: Path, label: str = "") -> None:
    """Mount the ext4 file system in ``image`` at ``mountpoint``; a new, empty one if ``image`` is missing."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if not image.exists():
        made = image.with_suffix(".new")  # a crash while formatting leaves no half-made disk
        run("truncate", "-s", DISK_SIZE, str(made))
        run("mkfs.ext4", "-q", "-F", *(["-L", label] if label else []), str(made))
        made.rename(image)
    run("mount", "-o", "loop,noatime", str(image), str(mountpoint))


def remove_cgroup_tree(path: Path) -> None:
    if not path.exists():
        return
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def write_first_boot(root: Path, name: str, user_data: str, proxy: str) -> None:
    """A machine's identity over the base image: name, host keys, machine id, the lab's package cache, and
    the cloud-init seed (``user_data``) it reads at its first boot."""
    (root / "etc/hostname").write_text(name + "\n")
    # what Hetzner's image writes at first boot; the base role then writes every host's name
    (root / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {name}\n::1 localhost ip6-localhost ip6-loopback\n")
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    run("ssh-keygen", "-A", "-f", str(root))
    # A lab machine is thrown away, never repaired: dpkg need not flush every file it unpacks
    # to the host's disk while a dozen machines install at once.
    (root / "etc/dpkg/dpkg.cfg.d/hastack-lab-unsafe-io").write_text("force-unsafe-io\n")
    (root / "etc/apt/apt.conf.d/01hastack-lab-proxy").write_text(
        f'Acquire::http::Proxy "{proxy}";\nAcquire::http::Timeout "30";\nAcquire::Retries "3";\n')
    seed = root / "var/lib/cloud/seed/nocloud"
    seed.mkdir(parents=True, exist_ok=True)
    (seed / "user-data").write_text(user_data)
    (seed / "meta-data").write_text(f"instance-id: {name}-{uuid.uuid4().hex[:8]}\nlocal-hostname: {name}\n")


class Machine:
    def __init__(self, paths: Paths, addr: Addresses, host: Host):
        self.paths = paths
        self.addr = addr
        self.host = host
        self.name = host.name
        self.dir = paths.machine(host.name)
        self.root = self.dir / "root"
        self.pidfile = self.dir / "nspawn.pid"
        self.power_lockfile = self.dir / "power.lock"
        self.prepared_marker = self.dir / "prepared"
        # A disk of its own, with a journal: removing a machine is removing one file, and the next machine's
        # files are created at once. On a host file system without a journal, ext4 skips every inode freed
        # in the last minutes when it allocates one: right after `lab down` removed the machines' hundreds
        # of thousands of files, each file a new machine's packages unpacked cost a scan of them.
        self.disk_image = self.dir / "disk.img"
        self.disk = self.dir / "disk"

    # ------------------------------------------------------------ filesystem

    def mounted(self) -> bool:
        return mounted_at(self.root)

    def mount(self) -> None:
        if self.mounted():
            return
        self._mount_disk()
        self.root.mkdir(parents=True, exist_ok=True)
        for d in ("upper", "work"):
            (self.disk / d).mkdir(exist_ok=True)
        run("mount", "-t", "overlay", f"{self.name}-overlay", "-o",
            f"lowerdir={self.paths.base},upperdir={self.disk / 'upper'},workdir={self.disk / 'work'}", str(self.root))

    def _mount_disk(self) -> None:
        if not mounted_at(self.disk):
            mount_disk(self.disk_image, self.disk, label=self.name[-16:])

    def unmount(self) -> None:
        if self.mounted():
            run("umount", str(self.root))
        if mounted_at(self.disk):
            run("umount", str(self.disk))  # its loop device goes with it (mount -o loop sets autoclear)

    def wipe_disk(self) -> None:
        """Unmounted, a new empty disk next time it is mounted."""
        self.unmount()
        self.disk_image.unlink(missing_ok=True)

    def prepare(self, topo: Topology) -> None:
        """First-boot identity: hostname, host keys, apt proxy, cloud-init seed. Once per machine."""
        if self.prepared_marker.exists():
            return
        if self.running():
            raise LabError(f"{self.name} runs but was never prepared; run `hastack lab down` first")
        # A half-prepared machine from a crashed run starts over from the base.
        self.wipe_disk()
        self.mount()
        write_first_boot(self.root, self.name, render_user_data(topo, self.host), proxy_url(self.addr))
        self.prepared_marker.write_text("")

    def apt_lists_fresh(self, max_age: float = 3000) -> bool:
        """Package lists fetched recently enough that a converge will not fetch them again."""
        # the stamp apt touches after a successful update; pyinfra's cache_time reads it too
        stamp = self.root / APT_STAMP.lstrip("/")
        return stamp.exists() and time.time() - stamp.stat().st_mtime < max_age

    def take_apt_lists_from(self, other: "Machine") -> None:
        """The package lists ``other`` just fetched (and apt's caches built from them), copied in with their
        times: apt reads them as fetched here, and an install finds them fresh. Every machine runs the same
        image, sources and architecture, so the lists are the same files."""
        for rel in ("var/lib/apt/lists", "var/cache/apt"):
            source, target = other.root / rel, self.root / rel
            for item in source.iterdir():
                if item.is_file() and item.name != "lock":
                    shutil.copy2(item, target / item.name)
        stamp = APT_STAMP.lstrip("/")
        (self.root / stamp).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(other.root / stamp, self.root / stamp)

    def host_key_line(self) -> str:
        key = (self.root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        return f"{self.name},{self.addr.public_ip(self.host)},{self.host.private_ip} {key[0]} {key[1]}"

    # ------------------------------------------------------------ process

    def nspawn_pid(self) -> int | None:
        pid = read_pid(self.pidfile)
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.nspawn_pid() is not None

    def leader(self) -> int:
        """PID (on the host) of the machine's init."""
        pid = self.nspawn_pid()
        if pid is None:
            raise LabError(f"{self.name} is not running (`hastack lab start {self.name}`)")
        for _ in range(100):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
            time.sleep(0.05)
        raise LabError(f"{self.name}: systemd-nspawn ({pid}) has no machine process")

    def cgroups(self) -> list[Path]:
        return [root / CGROUP_GROUP / self.name for root in cgroup_roots()]

    def orphans(self) -> list[int]:
        """Every process in this machine's cgroup subtree (after a crash: those left without nspawn)."""
        pids: set[int] = set()
        for cg in self.cgroups():
            for dirpath, _dirs, files in os.walk(cg):
                if "cgroup.procs" in files:
                    try:
                        pids.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
                    except OSError:
                        continue
        return sorted(pids)

    def kill_orphans(self) -> None:
        for pid in self.orphans():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while self.orphans() and time.monotonic() < deadline:
            time.sleep(0.1)

    @contextlib.contextmanager
    def _power_lock(self):
        """One start or stop of this machine at a time, across processes: the API's power-on (a writer agent
        restarting the peer it fenced) and an operator's `lab start` may come at once, and two nspawn on
        one directory leave the pid file naming the one that was refused."""
        with open(self.power_lockfile, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._power_lock():
            self._start()

    def _start(self) -> None:
        if self.running():
            return
        self.kill_orphans()  # a machine whose nspawn died must not run twice
        self.mount()
        self.set_links(up=True)
        # Each machine's systemd gets a cgroup subtree of its own; machines
        # sharing one fight over the same unit cgroups and fail to boot.
        for cg in self.cgroups():
            remove_cgroup_tree(cg)
            cg.mkdir(parents=True, exist_ok=True)
        procs = [str(cg / "cgroup.procs") for cg in self.cgroups()]

        def enter_cgroups() -> None:
            for path in procs:
                with open(path, "w") as f:
                    f.write(str(os.getpid()))

        self.paths.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.paths.logs / f"{self.name}.console.log", "ab")
        proc = subprocess.Popen([
            "systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
            f"--directory={self.root}", f"--machine={self.name}", f"--hostname={self.name}",
            f"--network-namespace-path=/run/netns/{netns(self.name)}",
            # what a cloud server's root may do that a container's may not by default: its own firewall and
            # addresses, and process accounting (per PID namespace: this machine's processes only)
            "--capability=CAP_NET_ADMIN,CAP_NET_RAW,CAP_SYS_PACCT",
            "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=pipe",
        ], stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, preexec_fn=enter_cgroups)
        self.pidfile.write_text(str(proc.pid))

    def wait_booted(self, timeout: float = 180) -> str:
        """Wait until systemd in the machine has finished starting; returns its state."""
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            if not self.running():
                raise LabError(f"{self.name} exited while booting; see .lab/logs/{self.name}.console.log")
            proc = self.exec(["systemctl", "is-system-running"], check=False, timeout=10)
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.5)
        raise LabError(f"{self.name} did not finish booting in {timeout:.0f}s (state: {state})")

    def stop(self, hard: bool = False, timeout: float = 60) -> None:
        """Power off (SIGTERM makes nspawn shut the machine down cleanly) or, hard, kill it like a power cut."""
        if not self.dir.exists():
            return  # removed, or never made: nothing runs
        with self._power_lock():
            self._stop(hard, timeout)

    def _stop(self, hard: bool, timeout: float) -> None:
        pid = self.nspawn_pid()
        if pid is None:
            return
        if hard:
            try:
                os.kill(self.leader(), signal.SIGKILL)
            except (LabError, ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        self.pidfile.unlink(missing_ok=True)
        self.set_links(up=False)

    def set_links(self, up: bool) -> None:
        """A machine that is off answers nothing on the network, as a real server that is off: its
        namespace outlives it and would otherwise refuse connections at once, which detects a dead
        host faster than a real network does. So its bridge ports go down while it is off."""
        for side in ("u", "p"):
            port = veth(self.addr.host_number(self.host), side)
            if ok("ip", "link", "show", port):
                run("ip", "link", "set", port, "up" if up else "down")

    def _inside(self, cmd: list[str]) -> list[str]:
        return ["nsenter", f"--target={self.leader()}", "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup",
                "--", "/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8", *cmd]

    def exec(self, cmd: list[str], check: bool = True, timeout: float | None = 600,
             input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command as root inside the machine (all its namespaces)."""
        full = self._inside(cmd)
        proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise LabError(f"{self.name}: `{' '.join(cmd)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
        return proc

    def popen(self, cmd: list[str], input: str = "") -> subprocess.Popen:
        """Start a command as root inside the machine; ``input`` is its whole stdin."""
        proc = subprocess.Popen(self._inside(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        proc.stdin.write(input)
        proc.stdin.close()
        proc.stdin = None  # all of stdin is written: communicate() only reads
        return proc

    def remove(self) -> None:
        self.stop()
        self.kill_orphans()
        self.wipe_disk()
        for cg in self.cgroups():
            remove_cgroup_tree(cg)
        shutil.rmtree(self.dir, ignore_errors=True)
