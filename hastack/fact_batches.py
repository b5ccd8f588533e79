"""Facts of one kind asked for many arguments by one program: `stat` for files,
`sha1sum` for hashes, `systemctl show` for units; and the users in one pass.

A converge asks hundreds of such facts of a host (the state of each managed
file, its hash, each unit). Asked one by one, each is a subshell and a program
or two on the host; on a small machine running a dozen hosts at once those
processes are most of a converge that changes nothing. Here each kind is one
program over all its arguments, and its output is cut into what each fact's
own command would have printed, for the fact's own `process` to read: the
answers are pyinfra's.

Only plain arguments are batched (absolute paths and unit names without
spaces, quotes or glob characters, so the output can be cut without doubt);
any other fact is asked on its own, as before.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any, Callable

from pyinfra.facts.files import LINUX_STAT_COMMAND, Directory, File, Link, Sha1File
from pyinfra.facts.server import Users
from pyinfra.facts.systemd import SystemdEnabled, SystemdStatus

_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9_./@:+,=%-]*$")
_PLAIN_UNIT = re.compile(r"^[A-Za-z0-9_.@:-]+$")
_AT_ONCE = 200  # arguments to one program: its command stays a few KiB

# pyinfra's own stat format (its File fact's command), with the path in front to cut the output by
if not (LINUX_STAT_COMMAND.startswith("stat -c '") and LINUX_STAT_COMMAND.endswith("'")):
    raise RuntimeError(f"pyinfra's stat command is not `stat -c '<format>'` any more: {LINUX_STAT_COMMAND}")
_STAT_FORMAT = "%n|" + LINUX_STAT_COMMAND[len("stat -c '"):-1]


@dataclass
class Batch:
    """One program answering several facts: ``split(lines, rc)`` gives each member its output
    lines (as its own command would have printed them), or None when it has no answer."""

    members: list[tuple[str, Any]]  # (key, fact instance whose command was made)
    script: str
    split: Callable[[list[str], str], list[list[str] | None]]


def _path(kwargs: dict) -> str | None:
    path = kwargs.get("path")
    return path if set(kwargs) == {"path"} and isinstance(path, str) and _PLAIN_PATH.match(path) else None


def _unit(kwargs: dict) -> str | None:
    if kwargs.get("user_mode") or kwargs.get("machine") or kwargs.get("user_name"):
        return None
    if set(kwargs) - {"user_mode", "machine", "user_name", "services"}:
        return None
    services = kwargs.get("services")
    if isinstance(services, list) and len(services) == 1:
        services = services[0]
    return services if isinstance(services, str) and _PLAIN_UNIT.match(services) else None


def _cut_by_path(args: list[str], cut: Callable[[str], tuple[str, str]], absent: list[str] | None):
    """Reads the output of a program that prints one line per path found (status 1 if some is missing):
    each path's line, or ``absent`` for a path it printed nothing for ([]: missing; None: not served)."""
    unique = set(args)

    def split(lines: list[str], rc: str) -> list[list[str] | None]:
        if rc not in ("0", "1"):  # 1: some path is missing; anything else: the program itself failed
            return [None] * len(args)
        found: dict[str, str] = {}
        for line in lines:
            path, text = cut(line)
            if path in found or path not in unique:
                return [None] * len(args)  # not what was asked: nothing is served from it
            found[path] = text
        return [[found[a]] if a in found else absent for a in args]

    return split


def _by_path(members, args: list[str], program: str, cut: Callable[[str], tuple[str, str]]) -> Batch:
    """A program that prints one line per existing path and nothing for a missing one (status 1)."""
    script = f"{program} -- {' '.join(shlex.quote(a) for a in dict.fromkeys(args))}"
    return Batch(members, script, _cut_by_path(args, cut, absent=[]))


def _files(members, paths) -> Batch:
    return _by_path(members, paths, f"stat -c {shlex.quote(_STAT_FORMAT)}",
                    lambda line: tuple(line.split("|", 1)) if "|" in line else ("", line))


def _hash_line(line: str) -> tuple[str, str]:
    # the fact's command prints sha1sum's line as it is ("<hash>  <path>")
    return (line.split("  ", 1)[1], line) if "  " in line else ("", line)


def _hashes(members, paths) -> Batch:
    return _by_path(members, paths, "sha1sum", _hash_line)


# A hash the record does not hold is taken ahead only of a regular file smaller than this (find's -size);
# a larger one is asked when an operation wants it, as before.
_EXPECTED_BELOW = "1024k"


def expected_hashes(facts: list[tuple[str, Any, dict]], key: Callable[[type, dict], str]) -> list[Batch]:
    """The hashes the next converge will want that the record lacks. A converge that creates a file asks
    only whether it exists (File); the next one finds it and compares it by its hash (Sha1File), hundreds
    of facts asked one by one after every converge that wrote files. So for each recorded File without its
    Sha1File, the hash is asked with the rest: served for an existing small regular file, and for any other
    path not served at all (asked when wanted). ``key(cls, kwargs)``: the key the fact is served under."""
    files = [kwargs["path"] for _key, fact, kwargs in facts if type(fact) is File and _path(kwargs)]
    hashed = {kwargs.get("path") for _key, fact, kwargs in facts if type(fact) is Sha1File}
    paths = [p for p in dict.fromkeys(files) if p not in hashed]
    made = []
    for start in range(0, len(paths), _AT_ONCE):
        chunk = paths[start:start + _AT_ONCE]
        members = []
        for path in chunk:
            fact = Sha1File()
            fact.command(path=path)  # the instance keeps the path its output is read against
            members.append((key(Sha1File, {"path": path}), fact))
        script = (f"find {' '.join(shlex.quote(p) for p in chunk)} -maxdepth 0 -type f -size -{_EXPECTED_BELOW} "
                  "-exec sha1sum -- {} +")
        made.append(Batch(members, script, _cut_by_path(chunk, _hash_line, absent=None)))
    return made


def _units(members, units: list[str]) -> Batch:
    unique = list(dict.fromkeys(units))
    script = ("systemctl show --all --property Id --property SubState --property UnitFileState -- "
              + " ".join(unique))

    def split(lines: list[str], rc: str) -> list[list[str] | None]:
        blocks: list[list[str]] = [[]]
        for line in lines:
            if line.strip():
                blocks[-1].append(line)
            elif blocks[-1]:
                blocks.append([])
        blocks = [b for b in blocks if b]
        # systemctl prints one block per unit asked, in the order asked (an unknown unit too)
        if rc != "0" or len(blocks) != len(unique) or not all(b[0].startswith("Id=") for b in blocks):
            return [None] * len(members)
        by_unit = dict(zip(unique, blocks, strict=True))
        return [by_unit[u] for u in units]

    return Batch(members, script, split)


# pyinfra's Users fact runs a dozen programs per account (grep, cut, id, lastlog...): on a host
# with thirty accounts a third of a second, most of a converge's facts. The same lines
# ("<passwd entry>|<id -gn>|<id -Gn>|<its lastlog line, spaces squeezed>|<shadow hash>"),
# from one read of each file: groups in /etc/group's order after the primary one, as
# getgrouplist gives them to `id`. Local accounts only, as on these hosts.
_USERS_SCRIPT = r"""{ echo @group; cat /etc/group; echo @shadow; cat /etc/shadow 2>/dev/null;
echo @lastlog; lastlog 2>/dev/null | tr -s ' '; echo @passwd; cat /etc/passwd; } | awk '
/^@(group|shadow|lastlog|passwd)$/ { part = substr($0, 2); next }
part == "group" { split($0, f, ":"); n++; gname[n] = f[1]; gid[n] = f[3]; gmembers[n] = "," f[4] ",";
                  if (!(f[3] in name)) name[f[3]] = f[1]; next }
part == "shadow" { split($0, f, ":"); if (!(f[1] in pw)) pw[f[1]] = f[2]; next }
part == "lastlog" { if (!($1 in last)) last[$1] = $0; next }
part == "passwd" && $0 != "" {
  split($0, f, ":"); user = f[1]; primary = (f[4] in name) ? name[f[4]] : f[4]; groups = primary
  split("", added)
  for (k = 1; k <= n; k++)
    if (gid[k] != f[4] && !(gid[k] in added) && index(gmembers[k], "," user ",")) {
      groups = groups " " name[gid[k]]; added[gid[k]] = 1 }
  print $0 "|" primary "|" groups "|" last[user] "|" pw[user] }'"""


def _users(members, _args) -> Batch:
    return Batch(members, _USERS_SCRIPT, lambda lines, rc: [lines if rc == "0" else None] * len(members))


def _no_arguments(kwargs: dict) -> str | None:
    return "" if not kwargs else None


_KINDS: list[tuple[tuple[type, ...], Callable[[dict], str | None], Callable]] = [
    ((File, Directory, Link), _path, _files),
    ((Sha1File,), _path, _hashes),
    ((SystemdStatus, SystemdEnabled), _unit, _units),
    ((Users,), _no_arguments, _users),
]


def batches(facts: list[tuple[str, Any, dict]]) -> tuple[list[Batch], list[tuple[str, Any]]]:
    """``facts``: (key, fact, its arguments). Returns the batches, and the facts asked one by one."""
    grouped: dict[int, tuple[list, list]] = {}
    alone = []
    for key, fact, kwargs in facts:
        for i, (classes, argument, _make) in enumerate(_KINDS):
            arg = argument(kwargs) if type(fact) in classes else None
            if arg is not None:
                members, args = grouped.setdefault(i, ([], []))
                members.append((key, fact))
                args.append(arg)
                break
        else:
            alone.append((key, fact))
    made = [_KINDS[i][2](members[start:start + _AT_ONCE], args[start:start + _AT_ONCE])
            for i, (members, args) in sorted(grouped.items()) for start in range(0, len(members), _AT_ONCE)]
    return made, alone
