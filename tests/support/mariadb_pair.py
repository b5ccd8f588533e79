"""The MariaDB pair on the lab, as the tests and the measurement script see it:
who is the writer, whether both replicate, and whether they hold the same data."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from hastack.lab import probe


def sql(lab, host: str, query: str) -> list[list[str]]:
    """Rows of a query run as root on a master (tab-separated, no header)."""
    proc = lab.exec(host, ["mariadb", "--batch", "--skip-column-names", "-e", query])
    if proc.returncode != 0:
        raise RuntimeError(f"{host}: {query!r} failed: {proc.stderr.strip()}")
    return [line.split("\t") for line in proc.stdout.splitlines()]


def masters(lab) -> list[str]:
    return [n.host for n in lab.topo.cluster("mariadb").nodes]


def writable(lab, host: str) -> bool | None:
    try:
        return sql(lab, host, "SELECT @@read_only")[0][0] == "0"
    except RuntimeError:
        return None


def slave_status(lab, host: str) -> dict[str, str]:
    proc = lab.exec(host, ["mariadb", "--batch", "-e", "SHOW SLAVE STATUS"])
    lines = proc.stdout.splitlines()
    return dict(zip(lines[0].split("\t"), lines[1].split("\t"), strict=True)) if len(lines) >= 2 else {}


def settled(lab, timeout: float = 120) -> str:
    """Wait for one writer, replication running both ways, and both at the same position; the writer."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            states = {h: writable(lab, h) for h in masters(lab)}
            writers = [h for h, w in states.items() if w]
            repl = {h: slave_status(lab, h) for h in masters(lab)}
            running = all(r.get("Slave_IO_Running") == "Yes" and r.get("Slave_SQL_Running") == "Yes"
                          for r in repl.values())
            pos = {h: sql(lab, h, "SELECT @@gtid_current_pos")[0][0] for h in masters(lab)}
            last = (states, {h: (r.get("Slave_IO_Running"), r.get("Slave_SQL_Running"), r.get("Last_Error"))
                             for h, r in repl.items()}, pos)
            if len(writers) == 1 and running and len(set(pos.values())) == 1:
                return writers[0]
        except (RuntimeError, IndexError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"the MariaDB pair did not settle in {timeout:.0f} s: {last}")


def checksums(lab, database: str = "hastack") -> dict[str, str]:
    return {h: sql(lab, h, f"CHECKSUM TABLE `{database}`.records")[0][1] for h in masters(lab)}


def request_ids(lab, host: str, database: str = "hastack") -> list[str]:
    return [r[0] for r in sql(lab, host, f"SELECT request_id FROM `{database}`.records")]


def write_stream(lab, seconds: float, interval: float = 0.1) -> subprocess.Popen:
    """Writes through the floating IP (internet client -> HAProxy -> app -> local proxy -> writer)."""
    return probe.start(lab, seconds, path="/records", interval=interval, timeout=8, write=True)


def kill_writer_run(lab, seconds: float = 20, kill_after: float = 3) -> dict[str, Any]:
    """One run: writes stream on, the writer's machine is cut off, writes must move to the other master;
    the dead one starts again and catches up; every acknowledged write must then be on both."""
    writer = settled(lab)
    stream = write_stream(lab, seconds)
    time.sleep(kill_after)
    lab.stop(writer, hard=True)
    records = probe.records(stream, timeout=seconds + 60)
    lab.start(writer)
    new_writer = settled(lab)
    acked = {r["request_id"] for r in records if r["ok"]}
    present = {h: request_ids(lab, h) for h in masters(lab)}
    lost = {h: len(acked - set(ids)) for h, ids in present.items()}
    dup = {h: len(ids) - len(set(ids)) for h, ids in present.items()}
    sums = checksums(lab)
    return dict(probe.outage(records), killed=writer, new_writer=new_writer, acked=len(acked), lost=lost,
                duplicates=dup, checksums_match=len(set(sums.values())) == 1, checksums=sums)
