"""What the base role writes: each target file and its template variables.

Pure Python (no pyinfra): the deploy and the template tests both take the
variables from here, so the tests render exactly what hosts receive.
"""

from __future__ import annotations

import ipaddress
import shlex
from typing import Any, Mapping

from roles.base import NODE_EXPORTER_PORT

# The operations that settle who may log in (admin accounts, keys, sudo) start with this; the
# converge names every host where one of them did not run (hastack.converge.ConvergeReport).
ACCESS = "Access:"


def remove_admin_commands(name: str) -> list[str]:
    """Removes a former admin: every process of their login sessions killed first, also those they run as
    root through sudo (a database client, a tunnel: their open database sessions end with them), then
    whatever else runs as them, then the account and its home."""
    quoted = shlex.quote(name)
    return [f"loginctl kill-user --signal=KILL {quoted} 2>/dev/null || true",
            f"pkill -KILL -u {quoted} || true",
            # --force: killed processes may linger a moment and must not stop the removal
            f"userdel --force --remove {quoted}"]

# Files that could lock admins out or leave a host open are rendered here
# first and only installed over the live file once they pass their check.
STAGING = "/var/lib/hastack/staged"


STACK_CA_DIR = "/etc/ssl/hastack"


def stack_ca_file(stack: str) -> str:
    """Where the base role puts the stack CA for the services that verify it (each names this file). It is
    not in the system trust store: the CA vouches for the stack's own services, not for the internet."""
    return f"{STACK_CA_DIR}/{stack}-ca.crt"


def system_store_ca_file(stack: str) -> str:
    """Where earlier versions put the stack CA in the system trust store (removed from there)."""
    return f"/usr/local/share/ca-certificates/hastack-{stack}.crt"


SUDOERS = "/etc/sudoers.d/hastack-admins"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/00-hastack.conf"
NFTABLES = "/etc/nftables.conf"
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
UNATTENDED_UPGRADES = "/etc/apt/apt.conf.d/52hastack-unattended-upgrades"
# apt waits for the dpkg lock (unattended-upgrades may hold it for minutes) instead of failing the converge
APT_LOCK_WAIT = "/etc/apt/apt.conf.d/50hastack-lock-wait"
APT_LOCK_WAIT_TEXT = 'DPkg::Lock::Timeout "900";\n'
POLICY_RC = "/usr/sbin/policy-rc.d"
# the services a package upgrade may not stop or restart (policy-rc.d): a pair's members would go down together
UPGRADE_HELD_SERVICES = ("mariadb", "redis-server", "redis-sentinel", "haproxy", "keepalived")
# after an upgrade, a service needrestart names goes to its role's rolling restart (one member at a time)
def restart_marks() -> dict[str, str]:
    """unit -> its role's rolling-restart mark (each role's own constant)."""
    from roles.app import restart as app
    from roles.cassandra import ring as cassandra
    from roles.mariadb import restart as mariadb
    from roles.redis import restart as redis
    from roles.sentinel import restart as sentinel

    return {"mariadb.service": mariadb.RESTART_MARK, "redis-server.service": redis.RESTART_MARK,
            "redis-sentinel.service": sentinel.RESTART_MARK, app.SERVICE: app.RESTART_MARK,
            "cassandra.service": cassandra.RESTART_MARK}


# security updates pending per the package lists (apt-daily refreshes them): the packages apt would
# upgrade from a -security suite. apt's simulation costs about a second of CPU per host, at every converge;
# its answer is kept on the host (a cache, written even by a dry run) under a stamp of what it depends on
# (the lists, dpkg's status, apt's sources and preferences), and apt is asked again once one of them changed.
PENDING_SECURITY_CACHE = "/var/cache/hastack/pending-security"
_PENDING_INPUTS = ("/var/lib/dpkg/status /var/lib/apt/lists/* /etc/apt/sources.list /etc/apt/sources.list.d/* "
                   "/etc/apt/preferences /etc/apt/preferences.d/*")
_ASK_APT = ("apt-get -s -o Debug::NoLocking=1 upgrade 2>/dev/null "
            "| sed -n 's/^Inst \\([^ ]*\\) .*-security.*/\\1/p' | sort")
# what the cached answer depends on, as one line
PENDING_SECURITY_KEY = f"stat -c '%n %s %.9Y' {_PENDING_INPUTS} 2>/dev/null | md5sum"
PENDING_SECURITY = (
    f"c={PENDING_SECURITY_CACHE}; k=$({PENDING_SECURITY_KEY}); "
    '[ "$(head -n 1 $c 2>/dev/null)" = "$k" ] || { mkdir -p "${c%/*}" && '
    f'{{ echo "$k"; {_ASK_APT}; }} > $c.new && mv $c.new $c; }} && tail -n +2 $c')
# in one apt run (unattended-upgrade takes the same packages in many small dpkg runs: minutes per host);
# configuration files an admin changed are kept
SECURITY_UPGRADE = ("HASTACK_CONVERGE=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -q --only-upgrade --no-install-recommends "
                    "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold {packages}")
# the services still running replaced code after it, each marked for its role's rolling restart
MARK_RESTARTS = ("needrestart -b -r l 2>/dev/null | sed -n 's/^NEEDRESTART-SVC: //p' | while read -r unit; do "
                 "case \"$unit\" in {cases} esac; done")


def mark_restarts_command() -> str:
    cases = " ".join(f'{unit}) mkdir -p {mark.rsplit("/", 1)[0]} && touch {mark} ;;' for unit, mark in restart_marks().items())
    return MARK_RESTARTS.format(cases=cases + " *) ;;")


JOURNALD = "/etc/systemd/journald.conf.d/hastack.conf"
SYSCTL = "/etc/sysctl.d/90-hastack.conf"
NODE_EXPORTER_ARGS = "/etc/default/prometheus-node-exporter"
NODE_EXPORTER_UNIT = "/etc/systemd/system/prometheus-node-exporter.service.d/hastack.conf"
HOSTNAME = "/etc/hostname"
HOSTS = "/etc/hosts"
CLOUD_INIT = "/etc/cloud/cloud.cfg.d/99-hastack.cfg"
ISSUE = "/etc/issue"
ISSUE_NET = "/etc/issue.net"
MODPROBE = "/etc/modprobe.d/hastack.conf"
NO_CORE_DUMPS = "/etc/security/limits.d/hastack.conf"
# the same for systemd-coredump, should a package bring it, and for login shells (ulimit)
NO_CORE_DUMPS_SYSTEMD = "/etc/systemd/coredump.conf.d/hastack.conf"
SHELL_PROFILE = "/etc/profile.d/hastack.sh"
# The audit trail on the host (auditd): who changed accounts, sudo's rules, sshd's settings, the audit
# rules or the stack's secrets; every set-uid program an admin ran; every program run as root from an
# admin's login (sudo, root shells: each command, not only the shell's start). journald reads the same
# records from the kernel, so the journal shipping carries them off the host. In a container the
# kernel's audit belongs to its host: auditd skips itself there (its unit's drop-in).
AUDIT_RULES = "/etc/audit/rules.d/hastack.rules"
AUDITD_DROPIN = "/etc/systemd/system/auditd.service.d/hastack.conf"
AUDIT_LOADED = "/var/lib/hastack/audit-rules.loaded"  # what `auditctl -l` listed after the converge loaded them
FIRST_ADMIN_UID = 1000  # cloud-init's first regular account; system services have no login uid at all
AUDIT_WATCHES = {  # key -> paths whose writes and attribute changes are recorded, by anyone
    "identity": ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/security/opasswd"),
    "sudoers": ("/etc/sudoers", "/etc/sudoers.d/"),
    "sshd": ("/etc/ssh/sshd_config", "/etc/ssh/sshd_config.d/"),
    "audit-config": ("/etc/audit/",),
}
SECRET_DIRS = {  # role -> where it keeps keys, passwords and tokens (key "hastack-secrets")
    "base": ("/etc/hastack/",),  # the agents' settings and tokens, the journal upload's key
    "app": ("/etc/hastack-app/",),
    "monitoring": ("/etc/hastack-witness/",),
    "loadbalancer": ("/etc/haproxy/certs/",),
    "redis": ("/etc/redis/tls/",),
    "mariadb": ("/etc/mysql/tls/",),
    "cassandra": ("/etc/cassandra/tls/",),
}
# role -> the set-uid and set-gid programs its packages bring (tests/lab: a converged host has no other). A
# rule for a program must find its directory, so each comes with the role that installs it.
MARIADB_PAM_TOOL = "/usr/lib/mysql/plugin/auth_pam_tool_dir/auth_pam_tool"
PRIVILEGED_PROGRAMS = {
    "base": ("/usr/bin/chage", "/usr/bin/chfn", "/usr/bin/chsh", "/usr/bin/expiry", "/usr/bin/gpasswd",
             "/usr/bin/mount", "/usr/bin/newgrp", "/usr/bin/passwd", "/usr/bin/ssh-agent", "/usr/bin/su",
             "/usr/bin/sudo", "/usr/bin/umount", "/usr/lib/dbus-1.0/dbus-daemon-launch-helper",
             "/usr/lib/openssh/ssh-keysign", "/usr/sbin/unix_chkpwd"),
    "mariadb": (MARIADB_PAM_TOOL,),
    "monitoring": (MARIADB_PAM_TOOL,),  # the weekly test restore's own MariaDB (roles/backup: verifier)
}
# whether the rules the kernel holds are those the converge last loaded (rules removed by hand are put back)
AUDIT_DRIFT = f"auditctl -l 2>/dev/null | cmp -s - {AUDIT_LOADED} && echo loaded || echo differs"
AUDIT_LOAD = f"augenrules --load && install -d -m 0700 /var/lib/hastack && auditctl -l > {AUDIT_LOADED}"


def _by_role(table: Mapping[str, tuple[str, ...]], roles) -> tuple[str, ...]:
    return tuple(dict.fromkeys(p for role in ("base", *roles) for p in table.get(role, ())))


def audit_template_vars(roles) -> dict[str, dict[str, Any]]:
    """The audit rules of a host with ``roles``: the fixed watches, its roles' secrets and programs."""
    watches = {**AUDIT_WATCHES, "hastack-secrets": _by_role(SECRET_DIRS, roles)}
    return {AUDIT_RULES: {"watches": watches, "privileged": _by_role(PRIVILEGED_PROGRAMS, roles),
                          "first_uid": FIRST_ADMIN_UID},
            AUDITD_DROPIN: {}}


# needrestart lists what runs old libraries and never restarts anything itself: a data service restarts
# through its role (the pairs and the ring one node at a time), not because apt ran on every host at once
NEEDRESTART = "/etc/needrestart/conf.d/hastack.conf"
# File integrity (hastack-integrity): AIDE over what no package owns, debsums over what packages own.
# A daily check; a converge that changed the host, and a package run outside a converge (unattended
# upgrades), take their changes into the baseline; what they took in is logged and shipped off the host.
AIDE_CONF = "/etc/aide/aide.conf"
AIDE_DB = "/var/lib/aide/aide.db"
INTEGRITY = "/usr/local/sbin/hastack-integrity"
INTEGRITY_UNIT = "/etc/systemd/system/hastack-integrity.service"
INTEGRITY_TIMER = "/etc/systemd/system/hastack-integrity.timer"
INTEGRITY_METRICS = "/var/lib/prometheus/node-exporter/hastack_integrity.prom"
INTEGRITY_APT_HOOK = "/etc/apt/apt.conf.d/90hastack-integrity"
# a converge's package runs set it: the converge renews the baseline once, at its end
CONVERGE_ENV = {"HASTACK_CONVERGE": "1"}
# what AIDE watches (regular expressions): configuration, local programs, SSH keys, crontabs
INTEGRITY_PATHS = ("/etc", "/usr/local", "/opt", r"/root/\.ssh", r"/home/[^/]+/\.ssh", "/var/spool/cron")
# what the system or a service rewrites as it runs (Sentinel records the primary it follows, and has
# Redis write its running settings into redis.conf at a failover; the settings file it includes is watched)
INTEGRITY_EXCLUDED = ("/etc/mtab", "/etc/adjtime", r"/etc/ld\.so\.cache", r"/etc/resolv\.conf",
                      r"/etc/redis/sentinel\.conf", r"/etc/redis/redis\.conf")
# the last operation of a converge: runs only when an earlier one changed the host
INTEGRITY_ACCEPT_CONVERGE = f"{INTEGRITY} accept converge"

# /etc/login.defs: new files not world-readable, new homes private, password ages for any account that
# ever gets a password (admins have none: keys only)
LOGIN_DEFS = "/etc/login.defs"
LOGIN_DEFS_SETTINGS = {
    "UMASK": "027",
    "HOME_MODE": "0750",
    "PASS_MAX_DAYS": "365",  # nosec B105  # a password's maximum age in days, not a password
    "PASS_MIN_DAYS": "1",  # nosec B105  # its minimum age in days
    "SHA_CRYPT_MIN_ROUNDS": "65536",
}

_FAMILY = {4: ("ip", "ipv4"), 6: ("ip6", "ipv6")}


def _l4(protocol: str, port: int | None, version: int) -> str:
    if protocol in ("tcp", "udp"):
        return f"{protocol} dport {port}"
    if protocol == "icmp":
        return "ip protocol icmp" if version == 4 else "meta l4proto ipv6-icmp"
    if protocol == "vrrp":
        return "ip protocol vrrp" if version == 4 else "meta l4proto vrrp"
    raise ValueError(f"no nftables match for protocol {protocol!r}")


def nft_input_rules(firewall: list[Mapping[str, Any]]) -> list[dict[str, str]]:
    """One accept rule per declared port and address family: {name, match}.

    0.0.0.0/0 and ::/0 mean "no source match" for their family; a port open to
    both families on tcp/udp becomes a single rule without any source match.
    """
    rules = []
    for entry in firewall:
        by_version: dict[int, list[str]] = {4: [], 6: []}
        open_to_all = {4: False, 6: False}
        for cidr in entry["cidrs"]:
            net = ipaddress.ip_network(cidr)
            by_version[net.version].append(cidr)
            open_to_all[net.version] |= net.prefixlen == 0
        name, protocol, port = entry["name"], entry["protocol"], entry["port"]
        if protocol in ("tcp", "udp") and open_to_all[4] and open_to_all[6]:
            rules.append({"name": name, "match": _l4(protocol, port, 4)})
            continue
        for version, cidrs in by_version.items():
            if not cidrs:
                continue
            prefix, nfproto = _FAMILY[version]
            if open_to_all[version]:
                source = f"meta nfproto {nfproto}"
            else:
                source = f"{prefix} saddr {{ {', '.join(cidrs)} }}"
            rules.append({"name": name, "match": f"{source} {_l4(protocol, port, version)}"})
    return rules


def template_vars(hostname: str, data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """target path -> the variables its template (templates/base/<target>.j2) gets.

    ``data`` is the host's data (Topology.host_data) over the role DEFAULTS.
    """
    group = data["base_admin_group"]
    upgrades = data["base_unattended_upgrades"]
    return {
        SUDOERS: {"admin_group": group},
        SSHD_DROPIN: {"options": data["base_sshd"], "admin_group": group},
        NFTABLES: {"hostname": hostname, "rules": nft_input_rules(data["firewall"])},
        AUTO_UPGRADES: {"settings": upgrades},
        UNATTENDED_UPGRADES: {"settings": upgrades},
        JOURNALD: {"journal": data["base_journald"]},
        SYSCTL: {"sysctl": data["base_sysctl"]},
        NODE_EXPORTER_ARGS: {"listen_address": f"{data['private_ip']}:{NODE_EXPORTER_PORT}"},
        NODE_EXPORTER_UNIT: {},
        HOSTNAME: {"hostname": hostname},
        HOSTS: {"etc_hosts": data["etc_hosts"]},
        CLOUD_INIT: {},
        ISSUE: {"banner": data["base_banner"]},
        ISSUE_NET: {"banner": data["base_banner"]},
        MODPROBE: {"modules": data["base_blocked_modules"]},
        NO_CORE_DUMPS: {},
        NO_CORE_DUMPS_SYSTEMD: {},
        SHELL_PROFILE: {"idle_logout_seconds": data["base_idle_logout_seconds"]},
        NEEDRESTART: {},
        POLICY_RC: {"services": UPGRADE_HELD_SERVICES},
        AIDE_CONF: {"database": AIDE_DB, "paths": INTEGRITY_PATHS, "excluded": INTEGRITY_EXCLUDED},
        INTEGRITY: {"config": AIDE_CONF, "database": AIDE_DB, "metrics": INTEGRITY_METRICS},
        INTEGRITY_UNIT: {"script": INTEGRITY},
        INTEGRITY_TIMER: {},
        **audit_template_vars(data["roles"]),
        INTEGRITY_APT_HOOK: {"script": INTEGRITY, "converge_env": next(iter(CONVERGE_ENV))},
    }


# Nothing runs from shared memory or from the device files, and neither holds set-uid programs (nor, for
# /dev/shm, device files). The fstab lines are what every boot applies (systemd remounts its API file
# systems as fstab says); a running host mounted otherwise is remounted by the converge.
FSTAB = "/etc/fstab"
RESTRICTED_MOUNTS = {  # mount point -> (file system, options)
    "/dev/shm": ("tmpfs", ("nosuid", "nodev", "noexec")),  # nosec B108: a mount point, no file made there
    "/dev": ("devtmpfs", ("nosuid", "noexec")),
}


def fstab_line(mount: str) -> str:
    fs, options = RESTRICTED_MOUNTS[mount]
    return f"{fs} {mount} {fs} rw,{','.join(options)} 0 0"


def fstab_match(mount: str) -> str:
    """An extended regular expression for a line of fstab that mounts `mount` (not a comment)."""
    return rf"^[^#[:space:]]+[[:space:]]+{mount}[[:space:]]"


def mounted_options(mount: str) -> str:
    """A command printing which of `mount`'s options it is mounted with, sorted: `wanted_options` when all."""
    options = RESTRICTED_MOUNTS[mount][1]
    return (f"findmnt -no OPTIONS --mountpoint {mount} | tr , '\\n' | grep -xE '{'|'.join(options)}' "
            f"| sort | paste -sd, -")


def wanted_options(mount: str) -> str:
    return ",".join(sorted(RESTRICTED_MOUNTS[mount][1]))


def remount(mount: str) -> str:
    return f"mount -o remount,{','.join(RESTRICTED_MOUNTS[mount][1])} {mount}"


# cron's job directories: root's only (cron runs as root and reads them; nobody else needs to)
CRON_DIRS = ("/etc/cron.d", "/etc/cron.daily", "/etc/cron.weekly", "/etc/cron.monthly")

# the real assembler behind /usr/bin/as (per architecture), 0750 root through dpkg so upgrades keep it
ASSEMBLER_MODE = "f=$(readlink -f /usr/bin/as 2>/dev/null) && [ -e \"$f\" ] && stat -c %a \"$f\" || true"
ROOT_ONLY_ASSEMBLER = ('f=$(readlink -f /usr/bin/as) && { dpkg-statoverride --list "$f" >/dev/null '
                       '|| dpkg-statoverride --update --add root root 0750 "$f"; } && chmod 0750 "$f"')


def login_defs_read() -> str:
    """A command printing the base role's /etc/login.defs settings as they are, one ``KEY VALUE`` a line."""
    keys = "|".join(LOGIN_DEFS_SETTINGS)
    return f"grep -E '^({keys})[[:space:]]' {LOGIN_DEFS} | awk '{{print $1, $2}}' | sort -u || true"


def login_defs_wanted() -> str:
    return "\n".join(sorted(f"{key} {value}" for key, value in LOGIN_DEFS_SETTINGS.items()))


def login_defs_commands() -> list[str]:
    """Each setting replaces its line (commented or not), or is added when the file has none."""
    commands = []
    for key, value in LOGIN_DEFS_SETTINGS.items():
        commands.append(f"grep -qE '^#?{key}[[:space:]]' {LOGIN_DEFS} "
                        f"&& sed -i -E 's/^#?{key}[[:space:]].*/{key}\\t{value}/' {LOGIN_DEFS} "
                        f"|| printf '{key}\\t{value}\\n' >> {LOGIN_DEFS}")
    return commands
