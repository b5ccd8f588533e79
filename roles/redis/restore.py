"""`hastack restore redis`: the newest RDB from the bucket loaded into the current primary.

Redis runs with the append-only file, which wins over an RDB at start, so the RDB
becomes the AOF's base file (Redis 7's multi-part AOF: a manifest, an RDB base, an empty
increment). The replicas are stopped first (Sentinel then has no replica to promote while
the primary restarts) and started after: they copy the restored data set in full.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hastack.console import OutputsOption, StackOption
from roles.backup.restore import Restore, RestoreError, cli_options, run_cli, shell, stream_to, wait_until
from roles.redis import REDIS_PORT

DATA = "/var/lib/redis"
AOF_DIR = f"{DATA}/appendonlydir"
STAGED = f"{DATA}/restore.rdb"
BACKUP_PASSWORD = "/etc/hastack/backup-redis.password"  # nosec B105  # a file's path (roles/backup/config.py REDIS_PASSWORD_FILE)
AOF_MANIFEST = ("file appendonly.aof.1.base.rdb seq 1 type b\n"
                "file appendonly.aof.1.incr.aof seq 1 type i\n")


def _cli(ip: str, *args: str) -> str:
    # the backup account (ROLE, INFO, DBSIZE); its password through the environment, never argv
    return (f"REDISCLI_AUTH=$(cat {BACKUP_PASSWORD}) redis-cli --tls --cacert /etc/redis/tls/ca.crt -h {ip} "
            f"-p {REDIS_PORT} --user backup --no-auth-warning " + " ".join(shlex.quote(a) for a in args))


def loaded_as_expected(loaded: int, found: dict[str, int]) -> bool:
    """Every key without a time to live is there, and nothing more than the backup held. Loaded as
    the AOF's base, the RDB's keys come in even if they expired since the backup (Redis drops
    expired keys at load only from a plain RDB): those go at Redis's next expiry cycle, so any
    number of the keys with a time to live may be there or gone."""
    keys, with_ttl = found["keys read"], found.get("expires", 0)
    return keys - with_ttl <= loaded <= keys


def restore(r: Restore) -> dict:
    run, say, timeline = r.run, r.say, r.timeline

    def sh(host: str, command: str, timeout: float = 600) -> str:
        return shell(run, host, command, timeout).strip()

    ips = {n: d["private_ip"] for n, d in r.entries.items()}

    def role_of(host: str) -> str:
        try:
            return sh(host, _cli(ips[host], "ROLE")).split("\n", 1)[0].strip()
        except RestoreError:
            return "down"

    with timeline.step("redis: plan"):
        backups = r.source.backups("redis-rdb")
        if not backups:
            raise RestoreError(f"no complete Redis backup of {r.source.stack!r} in {r.source.bucket}")
        manifest = r.source.manifest(backups[-1]["key"])
        r.identity.check(manifest)
        roles = {h: role_of(h) for h in ips}
        primaries = [h for h, role in roles.items() if role == "master"]
        target = primaries[0] if primaries else next(iter(r.entries.values()))["redis_primary"]
        replicas = [h for h in ips if h != target]
        keys = int(sh(target, _cli(ips[target], "DBSIZE")) or 0) if roles.get(target) == "master" else 0
        say(f"{manifest['object']} ({manifest['created']}) into {target}, the primary; then {', '.join(replicas)} "
            "copy it")
        if keys and not r.force:
            raise RestoreError(f"{target} holds {keys:,} keys; restoring replaces them with {manifest['object']}. "
                               "Nothing was changed. Pass --force to replace them")

    with timeline.step("redis: download"):
        stream_to(run, target, f"zstd -dc > {STAGED}.tmp && mv {STAGED}.tmp {STAGED}", r.source, manifest,
                  r.identity, say)
        checked = sh(target, f"redis-check-rdb {STAGED}")
        found = {k: int(v) for v, k in re.findall(r"\[info\] (\d+) (keys read|expires|already expired)", checked)}
        if "keys read" not in found:
            raise RestoreError(f"redis-check-rdb does not accept the backup: {checked[-300:]}")

    with timeline.step("redis: load into the primary"):
        for h in replicas:
            sh(h, "systemctl stop redis-server")
        sh(target, f"systemctl stop redis-server && rm -rf {AOF_DIR} && install -d -o redis -g redis -m 0750 {AOF_DIR}"
                   f" && mv {STAGED} {AOF_DIR}/appendonly.aof.1.base.rdb"
                   f" && install -o redis -g redis -m 0640 /dev/null {AOF_DIR}/appendonly.aof.1.incr.aof"
                   f" && printf %s {shlex.quote(AOF_MANIFEST)} > {AOF_DIR}/appendonly.aof.manifest"
                   f" && chown -R redis:redis {AOF_DIR} && systemctl start redis-server")
        wait_until(lambda: role_of(target) == "master", 120, f"{target} to serve as the primary")
        loaded = int(sh(target, _cli(ips[target], "DBSIZE")))
        if not loaded_as_expected(loaded, found):
            raise RestoreError(f"{target} holds {loaded} keys after the load; the backup has {found['keys read']} "
                               f"({found.get('expires', 0)} with a time to live)")

    with timeline.step("redis: replicas copy the primary"):
        for h in replicas:
            sh(h, "systemctl start redis-server")
        for h in replicas:
            wait_until(lambda h=h: "master_link_status:up" in sh(h, _cli(ips[h], "INFO", "replication")), 180,
                  f"{h} to copy the restored data from {target}")
            wait_until(lambda h=h: sh(h, _cli(ips[h], "DBSIZE")) == sh(target, _cli(ips[target], "DBSIZE")), 60,
                  f"{h} to hold as many keys as {target}")
    check = f"{loaded:,} keys on {target} ({found['keys read']:,} in the backup, {found.get('already expired', 0)} " \
            f"expired), the same on {', '.join(replicas) or 'no replica'}"
    say(check)
    return {"backup": manifest["object"], "primary": target, "keys": loaded, "checks": [check]}




_opts = cli_options()


def command(stack: str = StackOption, outputs: Path = OutputsOption, from_stack: str = _opts["from_stack"],
            force: bool = _opts["force"], age_key: Path = _opts["age_key"]) -> None:
    """Redis from the newest RDB in the bucket, into the primary; the replicas copy it."""
    run_cli("redis", stack, outputs, from_stack, age_key, force, {})
