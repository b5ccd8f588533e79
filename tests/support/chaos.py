"""The chaos suite's harness: one fault at a time, under continuous writes, measured.

Each scenario (SCENARIOS, in order) injects one fault into the running lab and
then heals it or lets the machine return, and waits for the stack to settle.
Throughout, and measured the same way for every scenario:

* **writes**: 4 clients in the internet namespace each POST a record every
  ``interval`` s through the floating IP (hastack.lab.probe, write mode: a
  fresh request_id each time). A 201 is an *acknowledged* write; its
  acknowledgement time is the request's start plus its duration.
* **lost**: once the writes have stopped and the MariaDB pair has settled (one
  writer, replication running both ways, both at the same GTID position),
  every acknowledged request_id is looked for on each master; lost = the
  acknowledged ids missing on the master that misses most.
* **time with two writers**: inside each master one client session asks the
  server for its time and ``@@read_only`` every 100 ms. A sample holds until
  the next one, at most 0.35 s, and never past the moment that session ended
  (its server or its machine went away): a machine that is off, or a server
  that does not answer, counts as not writable. The seconds during which both
  masters hold ``read_only=0`` are summed over the whole run.
* **write outage at the fault / at the return**: the acknowledgement times of
  all clients, merged and sorted; a gap is the time between two consecutive
  ones (the last one to the end of the writes also counts). A gap that starts
  before the return belongs to the fault (its outage), one that starts at or
  after the return belongs to the return. Outage = the longest such gap that
  ends after the fault (so the normal spacing of writes, some 25 ms with 4
  clients at 100 ms, is its floor). At the return, a gap during which writes
  failed is an outage ("no outage" means below NO_OUTAGE_S); one during which
  none failed is a stall (every write answered, late), bounded by MAX_STALL_S.

**Settled** (before the writes start and after the return, with the writes
still on): every machine on (one found off, e.g. fenced by the writer agent,
is powered on again, as an operator would, and named in ``started_after``),
one writable master, replication running both ways and the passive master
holding everything the writer had written a moment before, one load balancer
MASTER owning the floating IP; and all of that still true, unchanged, TAIL s
later. The writes stop only then, so a late fence or failover is inside the
return's window.

A scenario returns a dict (Run.result): those figures plus what it did
(who was the writer before and after, which machine was fenced or started,
when the fault was injected, the moments after it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from hastack.lab import LabError, probe
from hastack.lab.machine import CGROUP_GROUP, cgroup_roots
from tests.support import cassandra_ring, failover, mariadb_pair
from tests.support.lab import wait_for

CLIENTS = 4
INTERVAL = 0.1  # each client's pace: 4 clients, some 40 writes/s offered
WRITE_TIMEOUT = 5.0
SAMPLE_EVERY = 0.1
SAMPLE_HOLDS = 0.35  # a read_only sample stands for at most this long (then: unknown, not writable)
TAIL = 2.0  # the stack must still be settled, unchanged, this long later (a late fence or failover is seen)

# the goals (tests/lab/test_lab_chaos.py)
MAX_FAULT_OUTAGE_S = 3.0
NO_OUTAGE_S = 1.0  # a gap shorter than this at the return counts as "no outage": some 40 writes' spacing
# A gap at the return in which no write failed: every write was answered, late. The lab's twelve machines
# share two cores and one disk, so a returning machine's boot (a JVM, InnoDB recovery) holds the writer's
# commits back for one to two seconds (measured: up to 1.74 s, never a failed write); separate servers do
# not share that. Still bounded, by the fault's own goal: a return must never hurt more than the fault.
MAX_STALL_S = MAX_FAULT_OUTAGE_S

# The lab host's own stalls (HostSampler): the twelve machines and the harness share its cores and its disk,
# so a host that stops scheduling for a second stops every machine at once, which no set of separate servers
# does. A run during which the host stalled that long is the host's result, not the stack's (run_against_goals).
HOST_TICK = 0.1
HOST_WINDOW = 3.0
HOST_STALLED_S = 1.0

CHAOS_TABLE = "hastack_chaos"  # the nft table the partitions add inside a machine

LAST_RUN: dict[str, Any] = {}  # the latest run's moments and notes, also when it failed half-way


# ----------------------------------------------------------------- the lab's parts

def masters(lab) -> list[str]:
    return mariadb_pair.masters(lab)


def load_balancers(lab) -> list[str]:
    return [h.name for h in lab.topo.hosts_with_role("loadbalancer")]


def apps(lab) -> list[str]:
    return [h.name for h in lab.topo.hosts_with_role("app")]


def ensure_running(lab) -> list[str]:
    """Start every machine that is off (a power cut's victim, a fenced master); the ones started."""
    off = [name for name, m in lab.machines.items() if not m.running()]
    for name in off:
        lab.machine(name).start()
    for name in off:
        lab.machine(name).wait_booted()
    return off


def _gtid_contains(mine: str, theirs: str) -> bool:
    """Whether GTID position ``mine`` includes all of ``theirs``, domain by domain."""
    def seqs(pos: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for part in filter(None, (p.strip() for p in (pos or "").split(","))):
            domain, _, seq = (int(x) for x in part.split("-"))
            out[domain] = max(out.get(domain, 0), seq)
        return out

    have = seqs(mine)
    return all(have.get(d, 0) >= seq for d, seq in seqs(theirs).items())


def pair_settled(lab, timeout: float) -> str:
    """One writer, replication running both ways, and the passive master has applied everything
    the writer had written a moment before (under a steady stream of writes the two positions are
    seldom equal at the same instant: mariadb_pair.settled waits for that once writes stop)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            states = {h: mariadb_pair.writable(lab, h) for h in masters(lab)}
            writers = [h for h, w in states.items() if w]
            repl = {h: mariadb_pair.slave_status(lab, h) for h in masters(lab)}
            running = all(r.get("Slave_IO_Running") == "Yes" and r.get("Slave_SQL_Running") == "Yes"
                          for r in repl.values())
            last = (states, {h: (r.get("Slave_IO_Running"), r.get("Slave_SQL_Running")) for h, r in repl.items()})
            if len(writers) == 1 and running:
                writer = writers[0]
                passive = next(h for h in masters(lab) if h != writer)
                written = mariadb_pair.sql(lab, writer, "SELECT @@gtid_binlog_pos")[0][0]
                applied = mariadb_pair.sql(lab, passive, "SELECT @@gtid_current_pos")[0][0]
                last += (written, applied)
                if _gtid_contains(applied, written):
                    return writer
        except (RuntimeError, IndexError, LabError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"the MariaDB pair did not settle in {timeout:.0f} s: {last}")


def settle_stack(lab, timeout: float = 240) -> dict[str, Any]:
    """Every machine on, the MariaDB pair settled, one load balancer MASTER owning the floating IP.

    A machine found off is started (an operator powers a fenced server on again) and named in
    ``started``, also when a master is fenced again while the pair settles."""
    deadline = time.monotonic() + timeout
    started: list[str] = []
    while True:
        started += ensure_running(lab)
        try:
            writer = pair_settled(lab, timeout=max(5.0, min(30.0, deadline - time.monotonic())))
            break
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
    lb = failover.settle(lab, timeout=60)
    return {"writer": writer, "lb_master": lb, "started": started}


def service_pid(lab, host: str, unit: str) -> int:
    out = lab.exec(host, ["systemctl", "show", "-p", "MainPID", "--value", unit]).stdout.strip()
    return int(out or 0)


def active(lab, host: str, unit: str) -> bool:
    m = lab.machine(host)
    if not m.running():
        return False
    try:
        return m.exec(["systemctl", "is-active", unit], check=False, timeout=5).stdout.strip() == "active"
    except (LabError, subprocess.TimeoutExpired):
        return False


def writer_agent_port(lab) -> int:
    """The port the app hosts' HAProxy agent-check asks on each master: from the rendered
    configuration on an app host, else from the mariadb role's port declarations."""
    cfg = lab.exec(apps(lab)[0], ["cat", "/etc/haproxy/haproxy.cfg"]).stdout
    m = re.search(r"agent-port\s+(\d+)", cfg)
    if m:
        return int(m.group(1))
    from roles.mariadb import PORTS

    return next(p.port for p in PORTS if "agent-check" in p.description)


# ----------------------------------------------------------------- fault primitives

def in_netns(host: str, cmd: list[str]) -> list[str]:
    """``cmd`` in the machine's network namespace, from the host. The lab's namespaces outlive
    their machines, so rules put there survive a power cycle unless removed: the cuts are made
    and healed here, whether the machine is on or off (a fence may have powered it off)."""
    from hastack.lab.layout import netns

    return ["ip", "netns", "exec", netns(host), *cmd]


def nft_cut(lab, host: str, rules: list[str]) -> None:
    """Drop traffic of ``host`` with extra nft rules (both hooks), in a table of their own."""
    body = "\n".join(f"  {r} drop" for r in rules)
    script = (f"table inet {CHAOS_TABLE} {{\n"
              f" chain in {{\n  type filter hook input priority -50; policy accept;\n{body}\n }}\n"
              f" chain out {{\n  type filter hook output priority -50; policy accept;\n{body}\n }}\n}}\n")
    subprocess.run(in_netns(host, ["nft", "-f", "-"]), input=script, text=True, check=True, capture_output=True)


def nft_heal(lab, host: str) -> bool:
    """Remove the chaos table (False: there was none)."""
    return subprocess.run(in_netns(host, ["nft", "delete", "table", "inet", CHAOS_TABLE]),
                          capture_output=True).returncode == 0


def heal_all(lab) -> list[str]:
    """Remove every cut the chaos suite may have left, on every machine; the machines healed."""
    return [name for name in lab.machines if nft_heal(lab, name)]


def cut_private_link(lab, host: str) -> None:
    """The machine's private interface drops everything, both ways (the link stays up)."""
    from hastack.lab.network import PRIVATE_IF

    nft_cut(lab, host, [f'iifname "{PRIVATE_IF}"', f'oifname "{PRIVATE_IF}"'])


def cut_between(lab, a: str, b: str) -> None:
    """``a`` and ``b`` stop seeing each other on the private network; everyone else sees both."""
    for me, peer in ((a, b), (b, a)):
        ip = lab.topo.host(peer).private_ip
        nft_cut(lab, me, [f"ip saddr {ip}", f"ip daddr {ip}"])


FLOOD = r"""
import json, resource, socket, sys, time
ip, port, seconds, concurrent = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
concurrent = min(concurrent, hard - 64)
socks, opened, errors = [], 0, 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    while len(socks) < concurrent:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex((ip, port))
            socks.append(s)
            opened += 1
        except OSError:
            errors += 1
            s.close()
            break
    # recycle the oldest twentieth: new handshakes keep coming, the rest hang on
    for s in socks[:concurrent // 20]:
        s.close()
    del socks[:concurrent // 20]
    time.sleep(0.1)
for s in socks:
    s.close()
print(json.dumps({"opened": opened, "errors": errors, "concurrent": concurrent}))
"""


def flood(lab, source: str, ip: str, port: int, seconds: float = 10, concurrent: int = 2000) -> subprocess.Popen:
    """Many concurrent TCP connections from ``source`` to ip:port, held open and recycled, for ``seconds``."""
    return lab.machine(source).popen(["python3", "-", ip, str(port), str(seconds), str(concurrent)], input=FLOOD)


# ----------------------------------------------------------------- measurement

# one client session asks every 100 ms (a fork per sample would cost more than the interval on a
# busy machine); the server's own clock stamps each answer. A lost connection ends the client
# (batch mode stops at the first error) and the loop connects again 0.2 s later; while the
# server does not answer, nothing is printed.
# The loop runs in a session of its own and first prints its id, so that stopping it kills it
# all inside the machine (the mariadb client ignores a closed pipe).
SAMPLER = ("exec setsid bash -c 'echo \"PGID $$\"; end=$((SECONDS + 900)); while [ $SECONDS -lt $end ]; do "
           f"(while :; do echo \"SELECT UNIX_TIMESTAMP(NOW(6)), @@read_only;\"; sleep {SAMPLE_EVERY}; done) "
           "| mariadb -N -B --unbuffered --connect-timeout=1 2>/dev/null; sleep 0.2; done'")


class ReadOnlySampler(threading.Thread):
    """``@@read_only`` of one master every 100 ms, sampled inside the machine; restarted
    when the machine comes back."""

    def __init__(self, lab, host: str):
        super().__init__(daemon=True, name=f"sampler-{host}")
        self.lab, self.host = lab, host
        self.samples: list[tuple[float, str]] = []
        # when each client session ended (the server or the machine went away): a sample holds no longer
        self.ends: list[float] = []
        self.stopping = threading.Event()
        self.proc: subprocess.Popen | None = None

    def run(self) -> None:
        m = self.lab.machine(self.host)
        while not self.stopping.is_set():
            try:
                if not m.running():
                    raise LabError("off")
                self.proc = m.popen(["bash", "-c", SAMPLER])
            except (LabError, OSError):
                time.sleep(0.2)
                continue
            pgid = None
            for line in self.proc.stdout:
                if line.startswith("PGID "):
                    pgid = line.split()[1]
                    continue
                t, _, value = line.strip().partition("\t")
                try:
                    self.samples.append((float(t), value))
                except ValueError:
                    continue
                if self.stopping.is_set():
                    break
            self.ends.append(time.time())
            if pgid and m.running():
                m.exec(["pkill", "-9", "--session", pgid], check=False)
            self._end()
            time.sleep(0.1)

    def _end(self) -> None:
        proc = self.proc
        if proc and proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> None:
        self.stopping.set()  # the reader kills the loop inside the machine at its next sample
        self.join(timeout=10)
        self._end()

    def writable_intervals(self) -> list[tuple[float, float]]:
        s = sorted(self.samples)
        ends = sorted(self.ends)
        out = []
        for i, (t, value) in enumerate(s):
            if value == "0":
                nxt = s[i + 1][0] if i + 1 < len(s) else t + SAMPLE_EVERY
                gone = next((e for e in ends if e >= t), float("inf"))
                out.append((t, min(nxt, t + SAMPLE_HOLDS, gone)))
        return out


def read_pressure() -> dict[str, float]:
    """The host's pressure stall totals so far, in seconds (/proc/pressure): "io_full" is the time during
    which every task that wanted to run waited for the disk. Also "lab_cpu_full", where the kernel keeps it
    for the lab machines' cgroup: the time during which every machine's runnable task waited for a core.
    Empty on a kernel without PSI."""
    out: dict[str, float] = {}
    sources = [(f"/proc/pressure/{r}", r) for r in ("cpu", "io", "memory")]
    sources += [(str(root / CGROUP_GROUP / "cpu.pressure"), "lab_cpu") for root in cgroup_roots()]
    for path, name in sources:
        try:
            text = open(path).read()
        except OSError:
            continue
        for line in text.splitlines():
            kind, *fields = line.split()
            out[f"{name}_{kind}"] = int(dict(f.split("=", 1) for f in fields)["total"]) / 1e6
    return out


class HostSampler(threading.Thread):
    """The lab host's own stalls while a scenario runs: every HOST_TICK s this thread wakes, notes how late
    it woke (a host whose cores are all taken, or a virtual machine its hypervisor paused, wakes it late)
    and the host's pressure totals (a disk that holds every task back shows in "io_full")."""

    def __init__(self):
        super().__init__(daemon=True, name="host-sampler")
        self.samples: list[tuple[float, float, dict[str, float]]] = []  # (time, woke late by s, pressure totals)
        self.stopping = threading.Event()

    def run(self) -> None:
        due = time.monotonic() + HOST_TICK
        while not self.stopping.wait(max(0.0, due - time.monotonic())):
            self.samples.append((time.time(), max(0.0, time.monotonic() - due), read_pressure()))
            due = time.monotonic() + HOST_TICK

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        """The latest wake (s) and when; over the worst HOST_WINDOW s, how late the wakes were in all and,
        per pressure, the seconds stalled; the same pressures over the run; and whether the host itself
        stalled (host_stalled)."""
        s = self.samples
        if not s:
            return {"samples": 0, "stalled": False}
        t_late, late, _ = max(s, key=lambda x: x[1])
        keys = list(s[0][2])
        totals = {k: round(s[-1][2].get(k, 0.0) - s[0][2].get(k, 0.0), 2) for k in keys}
        worst: dict[str, float] = {"late_wakes": 0.0}
        j, late_sum = 0, 0.0
        for i in range(len(s)):  # for each sample, the window that ends with it
            late_sum += s[i][1]
            while s[i][0] - s[j][0] > HOST_WINDOW:
                late_sum -= s[j][1]
                j += 1
            worst["late_wakes"] = max(worst["late_wakes"], late_sum)
            for k in keys:
                worst[k] = max(worst.get(k, 0.0), s[i][2].get(k, 0.0) - s[j][2].get(k, 0.0))
        worst = {k: round(v, 2) for k, v in worst.items()}
        return {"samples": len(s), "late_wake_s": round(late, 3), "late_wake_at": t_late,
                "pressure_s": totals, f"worst_{HOST_WINDOW:g}s": worst, "stalled": host_stalled(worst)}


def host_stalled(worst_window: dict[str, float]) -> bool:
    """Whether the host itself stalled: within one window, a thread that asked to wake every HOST_TICK s woke
    HOST_STALLED_S late in all (a core taken from everything else, a paused virtual machine), or every task
    waited for the disk (or for memory) that long."""
    return any(worst_window.get(k, 0.0) >= HOST_STALLED_S for k in ("late_wakes", "io_full", "memory_full"))


def describe_host(h: dict[str, Any]) -> str:
    """One line for a HostSampler summary: whether it stalled, its latest wake, its worst window."""
    if not h.get("samples"):
        return "not sampled"
    worst = h.get(f"worst_{HOST_WINDOW:g}s", {})
    figures = ", ".join(f"{k} {v} s" for k, v in worst.items()
                        if k in ("late_wakes", "cpu_some", "lab_cpu_full", "io_full", "memory_full"))
    return (f"{'stalled' if h['stalled'] else 'did not stall'}: its latest wake {h['late_wake_s']} s late "
            f"({h.get('late_wake_at_s')} s after the fault); its worst {HOST_WINDOW:g} s: {figures}")


def overlap_seconds(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> tuple[float, list[float]]:
    """Total time both interval lists cover, and the start of each overlapping stretch."""
    total, starts, i, j = 0.0, [], 0, 0
    last_end = None
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if hi > lo:
            total += hi - lo
            if last_end is None or lo - last_end > 0.01:
                starts.append(lo)
            last_end = hi
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total, starts


def acks(records: list[dict]) -> list[float]:
    return sorted(r["t"] + r["d"] for r in records if r.get("ok"))


def gaps(ack_times: list[float], end: float) -> list[tuple[float, float]]:
    points = ack_times + [end]
    return [(points[i], points[i + 1]) for i in range(len(points) - 1)]


def distinct_errors(records, most: int = 4) -> list[str]:
    """The distinct errors of the failed requests (a few: they repeat)."""
    return sorted({r.get("error") or f"HTTP {r.get('status')}" for r in records if not r.get("ok")})[:most]


def failed_in(records: list[dict], a: float, b: float) -> int:
    """How many requests failed while the gap (a, b) lasted (their time overlaps it)."""
    return sum(1 for r in records if not r.get("ok") and r["t"] < b and r["t"] + r["d"] > a)


def outages(records: list[dict], fault: float, back: float, end: float) -> dict[str, float]:
    """The longest gap caused by the fault (it ends after the fault and starts before the return);
    at the return (a gap that starts at or after it), the longest gap in which writes failed (the
    outage) and the longest one in which none did (a stall: every write succeeded, late)."""
    ack_times = acks(records)
    at_fault = [b - a for a, b in gaps(ack_times, end) if b > fault and a < back]
    at_return = [(b - a, a, failed_in(records, a, b)) for a, b in gaps(ack_times, end) if a >= back]
    before = [b - a for a, b in gaps(ack_times, end) if b <= fault]
    if not any(a <= fault for a in ack_times):
        at_fault.append(float("inf"))  # nothing acknowledged before the fault: the stack was not serving
    outage = max((g for g in at_return if g[2]), default=(0.0, back, 0))
    stall = max((g for g in at_return if not g[2]), default=(0.0, back, 0))
    return {"outage_fault_s": round(max(at_fault, default=0.0), 3),
            "outage_return_s": round(outage[0], 3),
            "outage_return_at_s": round(outage[1] - fault, 2),  # when that gap began, after the fault
            "outage_return_failed": outage[2],
            "stall_return_s": round(stall[0], 3),
            "stall_return_at_s": round(stall[1] - fault, 2),
            "baseline_gap_s": round(max(before, default=0.0), 3)}


class Run:
    """One scenario's run: settle, start the writes and the samplers, mark the fault and the
    return, settle again, stop, count. Use as a context manager; the figures are in ``result``."""

    def __init__(self, lab, name: str, clients: int = CLIENTS, interval: float = INTERVAL):
        self.lab, self.name, self.clients, self.interval = lab, name, clients, interval
        self.marks: dict[str, float] = {}
        self.notes: dict[str, Any] = {}
        self.writers: list[subprocess.Popen] = []
        self.samplers: list[ReadOnlySampler] = []
        self.host_sampler = HostSampler()
        self.result: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}

    # -- start and stop

    def __enter__(self) -> "Run":
        self.t0 = time.monotonic()
        leftover = heal_all(self.lab)
        LAST_RUN.clear()
        LAST_RUN.update(scenario=self.name, marks=self.marks, notes=self.notes)
        before = settle_stack(self.lab)
        self.writer, self.lb_master = before["writer"], before["lb_master"]
        self.notes.update(writer_before=self.writer, lb_master_before=self.lb_master, started_before=before["started"],
                          **({"cuts_left_before": leftover} if leftover else {}))
        self.samplers = [ReadOnlySampler(self.lab, h) for h in masters(self.lab)]
        for s in self.samplers:
            s.start()
        self.host_sampler.start()
        self.marks["start"] = time.time()
        for _ in range(self.clients):
            self.writers.append(probe.start(self.lab, 900, path="/records", interval=self.interval,
                                            timeout=WRITE_TIMEOUT, write=True))
            time.sleep(self.interval / self.clients)  # staggered: the merged stream is evenly spaced
        self.wait_writes_after(time.time(), n=self.clients * 3, timeout=30, what="writes to flow before the fault")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._stop_all()
            heal_all(self.lab)  # a partition left behind would spoil the next scenario
            return
        self.marks.setdefault("fault", self.marks["start"])
        self.marks.setdefault("return", time.time())
        # the stack settles with the writes still on; it has settled when it still is, unchanged,
        # a short tail later (a late fence or failover starts the wait again)
        after = settle_stack(self.lab)
        started = list(after["started"])
        self.marks["settled"] = time.time()
        for _ in range(5):
            time.sleep(TAIL)
            again = settle_stack(self.lab)
            started += again["started"]
            if (again["writer"], again["lb_master"]) == (after["writer"], after["lb_master"]) and not again["started"]:
                break
            after = again
            self.marks["settled"] = time.time()
        self.notes.update(writer_after=after["writer"], lb_master_after=after["lb_master"], started_after=started)
        self.marks["end"] = time.time()
        self._stop_all()
        records = [r for w in self.writers for r in probe.records(w, timeout=30)]
        ensure_running(self.lab)
        settled_writer = mariadb_pair.settled(self.lab)
        acked = {r["request_id"] for r in records if r.get("ok")}
        lost = {h: len(acked - set(mariadb_pair.request_ids(self.lab, h))) for h in masters(self.lab)}
        two, starts = overlap_seconds(*(s.writable_intervals() for s in self.samplers))
        samples = {s.host: len(s.samples) for s in self.samplers}
        m = self.marks
        self.result = {
            "scenario": self.name,
            "acked": len(acked),
            "requests": len(records),
            "failed": sum(1 for r in records if not r.get("ok")),
            "lost": max(lost.values()),
            "lost_per_master": lost,
            "two_writers_s": round(two, 2),
            "two_writers_at": [round(t - m["fault"], 2) for t in starts],  # s after the fault
            **outages(records, m["fault"], m["return"], m["end"]),
            "errors": distinct_errors(records),
            # when the first failed writes started, after the fault, and why: to match the machines' journals
            "failures": [{"at_s": round(r["t"] - m["fault"], 2), "error": r.get("error") or f"HTTP {r.get('status')}"}
                         for r in sorted((r for r in records if not r.get("ok")), key=lambda r: r["t"])[:10]],
            "errors_at_return": distinct_errors(r for r in records if r["t"] >= m["return"]),
            # when the fault was injected (UTC, to match the machines' journals) and every moment after it
            "fault_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(m["fault"])) + f".{int(m['fault'] % 1 * 1000):03d}Z",
            "timeline_s": {k: round(v - m["fault"], 2) for k, v in m.items()},
            "read_only_samples": samples,
            "host": self._host_summary(),
            **self.notes, "writer_settled": settled_writer, **self.extra,
            "duration_s": round(time.monotonic() - self.t0, 1),
        }
        self._explain_miss()

    def _host_summary(self) -> dict[str, Any]:
        h = self.host_sampler.summary()
        if "late_wake_at" in h:
            h["late_wake_at_s"] = round(h.pop("late_wake_at") - self.marks["fault"], 2)  # s after the fault
        return h

    def _explain_miss(self) -> None:
        """A run that missed a goal carries what the pair's agents, the app servers' proxies and the
        load balancers' keepalived (with the failover agent it runs) and HAProxy logged from just before the
        fault to the end: the next reader sees why, not only that."""
        if not goals(self.result):
            return
        since = f"@{int(self.marks['fault']) - 5}"
        units = [(h, "hastack-mariadb-writer.service", "info") for h in masters(self.lab)]
        units += [(h, "mariadb.service", "warning") for h in masters(self.lab)]
        units += [(h, u, "info") for h in apps(self.lab) for u in ("haproxy.service", "hastack-app.service")]
        for lb in self.lab.topo.hosts_with_role("loadbalancer"):
            # their HAProxy's server changes (a 503 when no app server is up), not its request log
            units += [(lb.name, "keepalived.service", "info"), (lb.name, "haproxy.service", "notice")]
        logs = {}
        for host, unit, priority in units:
            if self.lab.machine(host).running():
                proc = self.lab.exec(host, ["journalctl", "-u", unit, "--since", since, "--no-pager", "-q",
                                            "-p", priority, "-o", "short-precise"])
                logs[f"{host} {unit}"] = proc.stdout.splitlines()[-60:]
        self.result["journals"] = logs

    def _stop_all(self) -> None:
        if self.host_sampler.is_alive():
            self.host_sampler.stop()
        for w in self.writers:
            if w.poll() is None:
                w.terminate()
        for s in self.samplers:
            s.stop()

    # -- the scenario's moments

    def fault(self, **notes: Any) -> None:
        """Mark the fault: called just before it is injected (a power cut's lab.stop returns only
        once the machine's processes are gone, up to a second later)."""
        self.marks["fault"] = time.time()
        self.notes.update(notes)

    def back(self, **notes: Any) -> None:
        self.marks["return"] = time.time()
        self.notes.update(notes)

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    # -- conditions

    def acked_after(self, t: float) -> int:
        """Acknowledged writes whose request started after ``t``."""
        n = 0
        for w in self.writers:
            fd = w.answers.fileno()
            # pread: the probe shares the file's offset, which must not move under it
            data = os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")
            for line in data.splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if r.get("ok") and r["t"] > t:
                    n += 1
        return n

    def wait_writes_after(self, t: float, n: int = 5, timeout: float = 60, what: str = "writes to flow") -> float:
        wait_for(lambda: self.acked_after(t) >= n, timeout, what)
        return time.time()

    def wait_writes_resume(self, timeout: float = 60) -> float:
        """After the fault: acknowledged writes again (a few, from any client)."""
        return self.wait_writes_after(self.marks["fault"], n=5, timeout=timeout,
                                      what=f"{self.name}: writes to resume after the fault")


# ----------------------------------------------------------------- the scenarios

def other_master(lab, host: str) -> str:
    return next(h for h in masters(lab) if h != host)


def writer_power_cut(lab) -> dict:
    """The writer's machine loses power; the other takes the writes; the old one starts again."""
    with Run(lab, "writer_power_cut") as run:
        w = run.writer
        run.fault(victim=w)
        lab.stop(w, hard=True)
        run.wait_writes_resume()
        run.back()
        lab.start(w)
    return run.result


def writer_mariadbd_kill(lab) -> dict:
    """``kill -9`` of mariadbd on the writer; systemd restarts it."""
    with Run(lab, "writer_mariadbd_kill") as run:
        w = run.writer
        pid = service_pid(lab, w, "mariadb.service")
        run.fault(victim=w)
        lab.exec(w, ["kill", "-9", str(pid)], check=True)
        wait_for(lambda: service_pid(lab, w, "mariadb.service") not in (0, pid) and active(lab, w, "mariadb.service"),
                 60, f"systemd to restart mariadb on {w}")
        run.back()  # the killed server is back (read-only): the return
    return run.result


def writer_private_link_cut(lab) -> dict:
    """The writer's private interface drops everything both ways for ~10 s, then heals."""
    with Run(lab, "writer_private_link_cut") as run:
        w = run.writer
        run.fault(victim=w)
        cut_private_link(lab, w)
        time.sleep(10)
        fenced = not lab.machine(w).running()
        run.back(healed=nft_heal(lab, w), fenced=fenced)
    return run.result


def masters_partition(lab) -> dict:
    """The two masters cannot see each other on the private network (the app hosts see both), ~10 s."""
    with Run(lab, "masters_partition") as run:
        a, b = masters(lab)
        run.fault()
        cut_between(lab, a, b)
        time.sleep(10)
        fenced = [h for h in (a, b) if not lab.machine(h).running()]
        run.back(healed={h: nft_heal(lab, h) for h in (a, b)}, fenced=fenced)
    return run.result


def writer_returns_agent_stalled(lab) -> dict:
    """Power-cut the writer; once the other takes writes, start the old one, and as soon as its
    writer agent is active, stop the new writer's agent (SIGSTOP) for 3 s."""
    with Run(lab, "writer_returns_agent_stalled") as run:
        w = run.writer
        n = other_master(lab, w)
        run.fault(victim=w)
        lab.stop(w, hard=True)
        wait_for(lambda: mariadb_pair.writable(lab, n), 60, f"{n} to take writes")
        run.wait_writes_resume()
        lab.machine(w).start()
        run.back()
        wait_for(lambda: active(lab, w, "hastack-mariadb-writer.service"), 120, f"the writer agent on {w}")
        agent = service_pid(lab, n, "hastack-mariadb-writer.service")
        lab.exec(n, ["kill", "-STOP", str(agent)], check=True)
        run.mark("agent_stopped")
        try:
            time.sleep(3)
        finally:
            lab.exec(n, ["kill", "-CONT", str(agent)], check=True)
        run.mark("agent_continued")
        lab.machine(w).wait_booted()
    return run.result


def writer_agent_port_flood(lab) -> dict:
    """An app host opens many concurrent connections to the writer's agent-check port for ~10 s."""
    with Run(lab, "writer_agent_port_flood") as run:
        w = run.writer
        port = writer_agent_port(lab)
        run.fault(victim=w, port=port)
        proc = flood(lab, apps(lab)[0], lab.topo.host(w).private_ip, port, seconds=10)
        out, err = proc.communicate(timeout=60)
        run.back()
        run.extra["flood"] = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"stderr": err[-300:]}
    return run.result


def masters_restart_together(lab) -> dict:
    """``systemctl restart mariadb`` on both masters at once."""
    with Run(lab, "masters_restart_together") as run:
        with ThreadPoolExecutor(2) as pool:
            run.fault()
            done = list(pool.map(lambda h: lab.exec(h, ["systemctl", "restart", "mariadb.service"]).returncode,
                                 masters(lab)))
        run.back(restart_exit=done)  # both servers are up again (read-only): the return
    return run.result


def lb_power_cut(lab) -> dict:
    """The active load balancer loses power, then starts again."""
    with Run(lab, "lb_power_cut") as run:
        lb = run.lb_master
        run.fault(victim=lb)
        lab.stop(lb, hard=True)
        run.wait_writes_resume()
        # the failover is over once the API routes the IP to the survivor and writes flow through it:
        # only then does the machine come back (the return is measured on its own)
        wait_for(lambda: failover.owner(lab) not in (None, lb), 30, "the floating IP to move to the survivor")
        run.wait_writes_after(time.time(), n=20, what=f"{run.name}: writes through the survivor")
        run.back()
        lab.start(lb)
    return run.result


RELOADS = 20


def lb_haproxy_reloads(lab) -> dict:
    """The active load balancer's HAProxy is reloaded 20 times, one every half second (what a
    certificate or CA rotation does to it): a reload is no fault, so no write may fail. A client that
    opened its connection before the first reload and sends its request after the third is answered
    too: the old process answers it."""
    with Run(lab, "lb_haproxy_reloads") as run:
        lb = run.lb_master
        conn = probe.start_held(lab)
        run.fault(victim=lb)
        codes = []
        for n in range(RELOADS):
            codes.append(lab.exec(lb, ["systemctl", "reload", "haproxy.service"]).returncode)
            time.sleep(0.5)
            if n == 2:
                run.extra["held_connection"] = probe.held_answer(conn)
        run.back(reload_exit=codes)
        run.extra["no_failure_allowed"] = True
    return run.result


def lb_private_link_cut(lab) -> dict:
    """The active load balancer's private interface drops everything both ways for ~10 s, then heals.

    The first load balancer (the higher VRRP priority) is made the active one beforehand: when
    the cut heals, the two masters meet and the one cut off ranks higher by configuration, so it
    is the case where it must yield through its failing backends check (or the floating IP would
    move back, a second outage)."""
    failover.make_master(lab, lab.topo.hosts_with_role("loadbalancer")[0].name)
    with Run(lab, "lb_private_link_cut") as run:
        lb = run.lb_master
        run.fault(victim=lb)
        cut_private_link(lab, lb)
        time.sleep(10)
        fenced = not lab.machine(lb).running()
        run.back(healed=nft_heal(lab, lb), fenced=fenced)
    return run.result


def redis_primary(lab) -> str:
    """The Redis primary as the Sentinel on the monitoring host names it."""
    from roles.redis import passwords

    pw = passwords(lab.stack_outputs()["secrets"]["seed"])["sentinel"]
    mon = lab.topo.hosts_with_role("monitoring")[0].name
    out = lab.exec(mon, ["env", f"REDISCLI_AUTH={pw}", "timeout", "5", "redis-cli", "--no-auth-warning", "-h",
                         "127.0.0.1", "-p", "26379", "--tls", "--cacert",
                         "/etc/ssl/hastack/lab-ca.crt",
                         "SENTINEL", "get-master-addr-by-name", "hastack"]).stdout.split()
    ip = out[0] if out else None
    return next((h.name for h in lab.topo.hosts if h.private_ip == ip), None)


def redis_primary_power_cut(lab) -> dict:
    """The Redis primary loses power (Sentinel promotes the replica), then starts again."""
    with Run(lab, "redis_primary_power_cut") as run:
        primary = redis_primary(lab)
        run.fault(victim=primary)
        lab.stop(primary, hard=True)
        wait_for(lambda: redis_primary(lab) not in (primary, None), 30, "Sentinel to promote the replica")
        run.mark("promoted")
        run.back()
        lab.start(primary)
        wait_for(lambda: active(lab, primary, "redis-server.service"), 60, f"redis on {primary}")
        run.notes["redis_primary_after"] = redis_primary(lab)
    return run.result


def wait_app_in_rotation(lab, app: str) -> None:
    """Until the active load balancer finds ``app`` healthy, and for its `rise 3` checks after."""
    ip = lab.topo.host(app).private_ip
    lb = failover.current_master(lab)
    wait_for(lambda: lab.exec(lb, ["curl", "-sf", "--max-time", "2", "--cacert", "/etc/haproxy/certs/stack-ca.pem",
                                   "--resolve", f"{app}:8080:{ip}", f"https://{app}:8080/health"]).returncode == 0,
             60, f"{app} healthy again")
    time.sleep(2)  # rise: back in rotation


def app_power_cut(lab) -> dict:
    """An app server loses power, then starts again and returns to rotation."""
    with Run(lab, "app_power_cut") as run:
        victim = apps(lab)[0]
        run.fault(victim=victim)
        lab.stop(victim, hard=True)
        time.sleep(3)  # out of rotation (2 checks of 500 ms)
        run.back()
        lab.start(victim)
        wait_app_in_rotation(lab, victim)
    return run.result


ROLLING_ROUNDS = 3


def app_rolling_restarts(lab) -> dict:
    """The application is restarted on one app server after the other, three rounds (what a new
    password, certificate or release does): each drains before it stops, so no write may fail."""
    with Run(lab, "app_rolling_restarts") as run:
        run.fault(victim=",".join(apps(lab)))
        took = []
        for _ in range(ROLLING_ROUNDS):
            for app in apps(lab):
                t = time.monotonic()
                lab.exec(app, ["systemctl", "restart", "hastack-app.service"], check=True)
                took.append(round(time.monotonic() - t, 2))
                wait_app_in_rotation(lab, app)
        run.back(restart_s=took)
        run.extra["no_failure_allowed"] = True
    return run.result


def cassandra_node_power_cut(lab) -> dict:
    """A Cassandra node loses power during QUORUM writes and reads, then starts again; the CQL
    stream's failures and its acknowledged rows missing afterwards count with the MariaDB writes."""
    nodes = [n.host for n in lab.topo.cluster("cassandra").nodes]
    victim, via = nodes[-1], nodes[0]
    cassandra_ring.cql(lab, via, cassandra_ring.KEYSPACE)
    addresses = [lab.topo.host(n).private_ip for n in nodes]
    with Run(lab, "cassandra_node_power_cut") as run:
        # the client prints its pid first: stopping it means killing it inside the machine
        stream = lab.machine(via).popen(["bash", "-c", 'echo "PID $$"; exec python3 - "$@"', "cql",
                                         *cassandra_ring.CLIENT_FILES, "stream", "900", "0.05", *addresses],
                                        input=cassandra_ring.CLIENT)
        pid = stream.stdout.readline().split()[1]
        try:
            time.sleep(3)
            run.fault(victim=victim)
            lab.stop(victim, hard=True)
            time.sleep(8)
            run.back()
            lab.start(victim)
            if not active(lab, victim, "cassandra.service"):
                lab.exec(victim, ["systemctl", "start", "cassandra.service"])
            cassandra_ring.wait_all_normal(lab, via, nodes, 240)
            run.mark("cassandra_up")
            time.sleep(3)
        finally:
            lab.exec(via, ["kill", pid])
        out, err = stream.communicate(timeout=60)
    cql_records = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
    ok = [r["k"] for r in cql_records if r["ok"]]
    present: set[str] = set()
    for i in range(0, len(ok), 200):
        keys = ", ".join(ok[i:i + 200])
        present |= {row[0] for row in cassandra_ring.cql(lab, via, f"SELECT k FROM hastack_probe.kv WHERE k IN ({keys})")}
    run.result.update(cql_requests=len(cql_records), cql_failed=len(cql_records) - len(ok),
                      cql_lost=len(set(ok) - present),
                      cql_errors=sorted({r.get("error", "wrong value")[:100] for r in cql_records if not r["ok"]})[:4])
    return run.result


SCENARIOS: dict[str, Callable[[Any], dict]] = {
    "writer_power_cut": writer_power_cut,
    "writer_mariadbd_kill": writer_mariadbd_kill,
    "writer_private_link_cut": writer_private_link_cut,
    "masters_partition": masters_partition,
    "writer_returns_agent_stalled": writer_returns_agent_stalled,
    "writer_agent_port_flood": writer_agent_port_flood,
    "masters_restart_together": masters_restart_together,
    "lb_power_cut": lb_power_cut,
    "lb_private_link_cut": lb_private_link_cut,
    "lb_haproxy_reloads": lb_haproxy_reloads,
    "redis_primary_power_cut": redis_primary_power_cut,
    "app_power_cut": app_power_cut,
    "app_rolling_restarts": app_rolling_restarts,
    "cassandra_node_power_cut": cassandra_node_power_cut,
}


def safety_goals(result: dict) -> list[str]:
    """The safety goals a scenario's result misses: a write acknowledged and lost, two writable masters, a
    Cassandra row lost. No stall of any machine, the host's included, may cause one of those."""
    missed = []
    if result["lost"]:
        missed.append(f"{result['lost']} acknowledged writes lost")
    if result["two_writers_s"] > 0:
        missed.append(f"two writers for {result['two_writers_s']} s")
    if result.get("cql_lost"):
        missed.append(f"{result['cql_lost']} acknowledged Cassandra rows lost")
    return missed


def safety_missed(result: dict) -> bool:
    return bool(safety_goals(result))


def run_against_goals(scenario: Callable[[Any], dict], lab) -> tuple[dict, list[str]]:
    """Run a scenario; the result and the goals it missed. A run that missed only time goals while the lab
    host itself stalled is the host's result: the scenario runs once more (a warning names the first run's
    misses and the stall) and the second run's result stands. A safety goal missed is never run again."""
    result = scenario(lab)
    missed = goals(result)
    if missed and result.get("host", {}).get("stalled") and not safety_missed(result):
        warnings.warn(f"{result['scenario']}: the lab host {describe_host(result['host'])}, in a run that missed: "
                      f"{'; '.join(missed)}; the scenario runs once more", stacklevel=2)
        result = scenario(lab)
        missed = goals(result)
    return result, missed


def goals(result: dict) -> list[str]:
    """The goals a scenario's result misses (empty: all met): the safety goals, then the time goals."""
    missed = safety_goals(result)
    if not result["outage_fault_s"] < MAX_FAULT_OUTAGE_S:
        missed.append(f"write outage at the fault {result['outage_fault_s']} s (goal < {MAX_FAULT_OUTAGE_S} s)")
    if not result["outage_return_s"] < NO_OUTAGE_S:
        missed.append(f"write outage at the return {result['outage_return_s']} s, {result['outage_return_failed']} "
                      f"writes failed (goal: none, < {NO_OUTAGE_S} s)")
    if not result["stall_return_s"] < MAX_STALL_S:
        missed.append(f"writes stalled at the return for {result['stall_return_s']} s (goal < {MAX_STALL_S} s)")
    if result.get("no_failure_allowed") and result["failed"]:
        missed.append(f"{result['failed']} writes failed ({', '.join(result['errors'])}; goal: none)")
    if "held_connection" in result and not result["held_connection"].get("ok"):
        missed.append(f"a connection opened before a reload was not answered after it: {result['held_connection']}")
    if result.get("cql_failed"):
        missed.append(f"{result['cql_failed']} QUORUM requests failed")
    return missed
