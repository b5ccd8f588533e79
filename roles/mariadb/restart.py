"""The MariaDB pair's restarts for a new configuration: one master at a time, the writer last,
each back to health (it answers, and replicates from its peer) before the next
(roles.rolling_restart; the converge runs it after the roles)."""

from __future__ import annotations

from typing import Mapping

from hastack.role import AfterRoles
from roles.rolling_restart import RollingRestart

RESTART_MARK = "/var/lib/hastack/mariadb/restart-needed"
HEALTH_TIMEOUT = 300.0


def slave_status(text: str) -> dict[str, str]:
    """`mariadb --batch -e 'SHOW SLAVE STATUS'` -> column -> value ({} when not a replica)."""
    lines = text.splitlines()
    return dict(zip(lines[0].split("\t"), lines[1].split("\t"), strict=True)) if len(lines) >= 2 else {}


def healthy(run, name: str, data: Mapping) -> str | None:
    """None when MariaDB answers and replicates from the peer (both threads running); else what is wrong."""
    ok, out, err = run(name, "mariadb --batch -e 'SHOW SLAVE STATUS'", 30)
    if not ok:
        return f"MariaDB does not answer ({(err or out).strip()[-200:] or 'no output'})"
    st = slave_status(out)
    if not st:
        return "MariaDB answers but replicates from no one"
    io, sql = st.get("Slave_IO_Running"), st.get("Slave_SQL_Running")
    if io == "Yes" and sql == "Yes":
        return None
    error = st.get("Last_IO_Error") or st.get("Last_SQL_Error") or ""
    return f"replication from its peer not running (IO thread {io}, SQL thread {sql}){': ' + error if error else ''}"


def writer_last(step: AfterRoles, names: list[str]) -> list[str]:
    """The read-only master first: the writer restarts when its peer is back and can take writes."""
    def writable(name: str) -> bool:
        ok, out, _ = step.run(name, "mariadb --batch --skip-column-names -e 'SELECT @@read_only'", 30)
        return ok and out.strip() == "0"

    return sorted(names, key=writable)


after_roles = RollingRestart(what="MariaDB", service="mariadb.service", mark=RESTART_MARK, healthy=healthy,
                             timeout=HEALTH_TIMEOUT, order=writer_last)
