"""The base role: what every host gets, whatever its other roles.

Admin accounts (managed exclusively), key-only SSH, the nftables host
firewall, security upgrades, time sync, a persistent journal, sysctl
hardening, the node exporter, hostname and /etc/hosts.

Idempotent: on an unchanged host no operation yields a command. Services
are restarted or reloaded only when a file they read has changed.
"""

from __future__ import annotations

import posixpath
import shlex
from io import StringIO

from pyinfra import host, logger, state
from pyinfra.api import deploy
from pyinfra.facts.files import Directory, File, FindInFile, Sha1File
from pyinfra.facts.server import Command, Hostname, Users
from pyinfra.operations import files, server, systemd

from roles.template_file import template_file
from roles.tls_files import stack_ca
from roles.base import DEFAULTS
from roles.base import config as c
from roles.base.config import ACCESS
from roles import journal_shipping, packages

PACKAGES = [
    "ca-certificates",
    "openssh-server",
    "sudo",
    "nftables",
    "netbase",  # /etc/protocols: nft resolves "vrrp" through it
    "procps",  # sysctl, pkill
    # every login a logind session with a cgroup of its own: a removed admin's processes are all found
    # there, also those they started as root with sudo (their database clients, their tunnels)
    "libpam-systemd",
    "unattended-upgrades",
    "systemd-timesyncd",
    "prometheus-node-exporter",
    # apt_info every 15 min: node_reboot_required and pending upgrades, for monitoring
    "prometheus-node-exporter-collectors",
    "needrestart",  # which services and kernel run replaced libraries (listed, never restarted: see NEEDRESTART)
    "debsums",  # checks installed files against their packages' checksums (hastack-integrity)
    "aide",  # and what no package owns (without aide-common: the configuration and the timer are ours)
    "libpam-pwquality",  # a password set on a host (logins are keys only) must be a strong one
    "acct",  # process accounting: every command that ran, by whom (lastcomm), kept a month on the host
    "auditd",  # the audit trail: config.py's rules (skipped in a container, whose kernel is its host's)
    journal_shipping.PACKAGE,  # the journal shipped to the monitoring host: the audit trail off the host
]

SSHD_INCLUDE = "Include /etc/ssh/sshd_config.d/*.conf"

# Checks a candidate file must pass before it replaces the live one.
# sshd: the candidate drop-in read first, then the live config, as sshd will
# read them once it is installed (sshd -t refuses to run without /run/sshd).
SSHD_CHECK = ("mkdir -p /run/sshd && printf 'Include %s\\nInclude /etc/ssh/sshd_config\\n' {staged}"
              " | sshd -t -f /dev/stdin")
SUDOERS_CHECK = "visudo -cf {staged}"
NFT_CHECK = "nft -c -f {staged}"


def _any_changed(*ops):
    return lambda: any(op is not None and op.did_change() for op in ops)


def _template(tvars, target, mode="0644", dest=None):
    return template_file("base", target, tvars, mode=mode, dest=dest)


def _checked_install(tvars, target, mode, check):
    """Render ``target`` to a staging copy, check it, only then install it.

    A broken sudoers, sshd or nftables file locks admins out or leaves the
    host open at its next boot, so the live file is only ever replaced by a
    copy that passed ``check``. The returned operation changed when the live
    file was replaced.
    """
    staged = c.STAGING + target
    staged_op = _template(tvars, target, mode=mode, dest=staged)
    # Also reinstall when the live file was edited, removed or chmodded by hand.
    live = host.get_fact(File, path=target)
    in_place = (
        bool(live)
        and (live["user"], live["group"], live["mode"]) == ("root", "root", int(mode))
        and host.get_fact(Sha1File, path=target) == host.get_fact(Sha1File, path=staged)
    )
    return server.shell(
        name=f"Check and install {target}",
        commands=[check.format(staged=staged), f"install -o root -g root -m {mode} {staged} {target}"],
        _if=lambda: staged_op.did_change() or not in_place,
    )


def _admins(tvars, data):
    group = data["base_admin_group"]
    # Who this deploy is logged in as (without sudo), and that login's groups.
    login_user, _, login_groups = host.get_fact(Command, command="id -un && id -Gn", _sudo=False).partition("\n")
    server.group(name=f"{ACCESS} group {group}", group=group)
    wanted = set()
    for admin in data["admins"]:
        wanted.add(admin["name"])
        # Exact groups and exactly the configured key (delete_keys): ~/.ssh is
        # 0700 and authorized_keys 0600, both owned by the admin.
        server.user(
            name=f"{ACCESS} admin {admin['name']}",
            user=admin["name"],
            shell="/bin/bash",  # nosec B604  # the admin's login shell, not a command run through a shell
            groups=[group, "sudo"],
            create_home=True,
            public_keys=[admin["ssh_key"]],
            delete_keys=True,
        )
        # private to its admin (useradd made it 0755 before login.defs said HOME_MODE 0750)
        files.directory(name=f"{ACCESS} home of {admin['name']}", path=f"/home/{admin['name']}",
                        user=admin["name"], group=admin["name"], mode="0750")

    # Former admins: still in the group but no longer configured.
    for name, user in sorted(host.get_fact(Users).items()):
        if name not in wanted and (user["group"] == group or group in user["groups"]):
            if name == login_user:  # killing its processes would cut this very connection
                logger.warning(f"{host.name}: not removing former admin {name}: this deploy is logged in as it")
                continue
            server.shell(
                name=f"{ACCESS} remove former admin {name}",
                commands=c.remove_admin_commands(name),
            )

    _checked_install(tvars, c.SUDOERS, "0440", SUDOERS_CHECK)

    # sudo matches the groups of the login session, not /etc/group: a login
    # from before its user joined the group still needs cloud-init's rule.
    # (New servers put admins in the group at first boot, so this is rare.)
    if login_user == "root" or group in login_groups.split():
        files.file(name=f"{ACCESS} remove cloud-init's sudo rule", path="/etc/sudoers.d/90-cloud-init-users", present=False)
    else:
        logger.warning(f"{host.name}: kept /etc/sudoers.d/90-cloud-init-users for this run: the login of "
                       f"{login_user} predates its membership of {group}; the next run removes it")

    # Hetzner puts the project's SSH keys here at creation; root never logs in.
    files.file(name=f"{ACCESS} no SSH keys for root", path="/root/.ssh/authorized_keys", present=False)


def _security_updates():
    """The security updates the package lists know of (apt-daily refreshes them), applied now rather than at
    unattended-upgrades' next daily run; the replicated services that then run replaced code are marked for
    their role's rolling restart, which this converge runs once every host has its roles."""
    pending = (host.get_fact(Command, c.PENDING_SECURITY) or "").split()
    if pending:
        packages.changes_packages(server.shell(
            name=f"Security updates: {len(pending)} package{'s' if len(pending) > 1 else ''}",
            commands=[c.SECURITY_UPGRADE.format(packages=" ".join(shlex.quote(p) for p in pending))]))
        server.shell(name="Services running replaced code marked for their rolling restart",
                     commands=[c.mark_restarts_command()])


def _hardening(tvars):
    """The legal notice (the sshd Banner shows /etc/issue.net), blocked kernel modules, no core dumps, a
    strict umask and private homes for new accounts, idle interactive shells logged out, process accounting,
    shared memory and device files that run nothing."""
    _template(tvars, c.ISSUE)
    _template(tvars, c.ISSUE_NET)
    _template(tvars, c.MODPROBE)
    _template(tvars, c.NO_CORE_DUMPS)
    files.directory(name="systemd-coredump configuration directory", path="/etc/systemd/coredump.conf.d",
                    user="root", group="root", mode="0755")
    _template(tvars, c.NO_CORE_DUMPS_SYSTEMD)
    _template(tvars, c.SHELL_PROFILE)
    systemd.service(name="Process accounting", service="acct.service", running=True, enabled=True)
    server.shell(name="login.defs: umask, home mode, password ages", commands=c.login_defs_commands(),
                 _if=lambda: host.get_fact(Command, c.login_defs_read()) != c.login_defs_wanted())
    for mount in c.RESTRICTED_MOUNTS:
        files.line(name=f"{mount} mounted without programs or set-uid at boot", path=c.FSTAB,
                   line=c.fstab_match(mount), replace=c.fstab_line(mount), extended_regex=True)
        server.shell(name=f"{mount} without programs or set-uid now", commands=[c.remount(mount)],
                     _if=lambda m=mount: host.get_fact(Command, c.mounted_options(m)) != c.wanted_options(m))
    for directory in c.CRON_DIRS:
        files.directory(name=f"{directory} root's only", path=directory, user="root", group="root", mode="0700")
    # the assembler (binutils, a dependency of needrestart) for root only: nothing on a server builds code
    server.shell(name="Assembler for root only", commands=[c.ROOT_ONLY_ASSEMBLER],
                 _if=lambda: host.get_fact(Command, c.ASSEMBLER_MODE) not in ("", "750"))


def _integrity(tvars):
    """The file integrity check (config.py: File integrity): AIDE's configuration, the script, its daily
    timer, and the apt hook that renews the baseline after a package run outside a converge."""
    files.directory(name="AIDE configuration directory", path=posixpath.dirname(c.AIDE_CONF), user="root",
                    group="root", mode="0755")
    files.directory(name="AIDE database directory", path=posixpath.dirname(c.AIDE_DB), user="root", group="root",
                    mode="0700")
    _template(tvars, c.AIDE_CONF, mode="0600")
    _template(tvars, c.INTEGRITY, mode="0700")
    _template(tvars, c.INTEGRITY_APT_HOOK)
    unit = _template(tvars, c.INTEGRITY_UNIT)
    timer = _template(tvars, c.INTEGRITY_TIMER)
    systemd.service(name="Integrity check timer", service="hastack-integrity.timer", running=True, enabled=True,
                    daemon_reload=unit.will_change or timer.will_change, restarted=timer.will_change)


_AUDIT_RULES_OPS: dict[str, object] = {}  # host -> this converge's operation writing its audit rules


def _in_container() -> bool:
    return host.get_fact(Command, command="systemd-detect-virt --container || true") not in ("", "none")


def audit_before_packages(tvars):
    """Before the packages: auditd's package starts it, which a container's kernel would refuse."""
    files.directory(name="auditd unit drop-in directory", path=posixpath.dirname(c.AUDITD_DROPIN),
                    user="root", group="root", mode="0755")
    _template(tvars, c.AUDITD_DROPIN)


def audit(tvars):
    """auditd and its rules (config.py: The audit trail); the rules are loaded after every role
    (load_audit_rules), once the directories they watch exist."""
    in_container = _in_container()
    files.directory(name="Audit rules directory", path=posixpath.dirname(c.AUDIT_RULES), user="root",
                    group="root", mode="0750")
    _AUDIT_RULES_OPS[host.name] = _template(tvars, c.AUDIT_RULES, mode="0640")
    systemd.service(name="Audit daemon", service="auditd.service", running=None if in_container else True,
                    enabled=True)


def load_audit_rules():
    """After every role: the audit rules loaded into the kernel when this converge changed them, or when
    the kernel holds other rules than the converge last loaded (removed or added by hand)."""
    if _in_container():
        return
    rules = _AUDIT_RULES_OPS.get(host.name)
    drift = host.get_fact(Command, c.AUDIT_DRIFT)
    server.shell(name="Audit rules loaded", commands=[c.AUDIT_LOAD],
                 _if=lambda: drift != "loaded" or (rules is not None and rules.did_change()))


def reread_pending_security():
    """After the roles, once this converge changed packages: the pending security updates asked of apt again
    (its simulation: about a second of CPU per host), so that the next converge finds the answer cached
    under the new package state. Before, the first converge after one that installed packages ran apt's
    simulation on every host. Nothing runs when no package changed."""
    server.shell(name="Pending security updates read again after the package changes",
                 commands=[f"{c.PENDING_SECURITY} >/dev/null"], _if=packages.changed())


def renew_integrity_baseline():
    """A converge's last operation: when an earlier one changed this host, what changed becomes the file
    integrity baseline, each difference logged (and shipped off the host). Nothing runs otherwise."""
    me, run = host._get_module(), state._get_module()  # the objects: the check runs after this deploy's context

    def changed_earlier() -> bool:
        return any(d.operation_meta.is_complete() and d.operation_meta.did_change() for d in run.ops[me].values())

    server.shell(name="Integrity baseline: this converge's changes taken in", commands=[c.INTEGRITY_ACCEPT_CONVERGE],
                 _if=changed_earlier)


def _sshd(tvars):
    include = None
    if not host.get_fact(FindInFile, path="/etc/ssh/sshd_config", pattern=r"^Include /etc/ssh/sshd_config\.d/\*\.conf"):
        # Drop-ins only count when included before the main config's own settings.
        include = server.shell(
            name="Include sshd_config.d first",
            commands=[f"grep -qxF '{SSHD_INCLUDE}' /etc/ssh/sshd_config"
                      f" || sed -i '1i {SSHD_INCLUDE}' /etc/ssh/sshd_config"],
        )
    files.file(name="sshd_config readable by root only", path="/etc/ssh/sshd_config", user="root", group="root",
               mode="0600")
    dropin = _checked_install(tvars, c.SSHD_DROPIN, "0600", SSHD_CHECK)
    systemd.service(name="Reload sshd", service="ssh", running=True, reloaded=True,
                    _if=_any_changed(include, dropin))


def _firewall(tvars):
    # 0755 as Debian ships it: the file is an "#!/usr/sbin/nft -f" script.
    ruleset = _checked_install(tvars, c.NFTABLES, "0755", NFT_CHECK)
    server.shell(name="Apply the host firewall", commands=[f"nft -f {c.NFTABLES}"], _if=ruleset.did_change)
    # The unit loads the same file at boot.
    systemd.service(name="Load the firewall at boot", service="nftables", running=True, enabled=True)


def _stack_ca():
    """The stack CA where the services that verify it read it; never in the system trust store, where
    every program on the host would take it for any name on the internet."""
    if not host.data.get("pki_dir"):
        return
    files.directory(name="Stack CA directory", path=c.STACK_CA_DIR, user="root", group="root", mode="0755")
    files.put(name="Stack CA for the services",
              src=StringIO(stack_ca().ca_pem_ensured()),
              dest=c.stack_ca_file(host.data.stack), user="root", group="root", mode="0644")
    removed = files.file(name="Stack CA out of the system trust store", path=c.system_store_ca_file(host.data.stack),
                         present=False)
    server.shell(name="Update the system trust store", commands=["update-ca-certificates --fresh"],
                 _if=removed.did_change)


@deploy("base", data_defaults=DEFAULTS)
def base():
    data = host.data.dict()
    tvars = c.template_vars(host.name, data)

    # Access first: who may log in is settled before anything that needs apt or the network,
    # so a removed admin is removed even where the rest of the converge fails.
    _admins(tvars, data)

    files.put(name="apt waits for the dpkg lock", src=StringIO(c.APT_LOCK_WAIT_TEXT), dest=c.APT_LOCK_WAIT,
              user="root", group="root", mode="0644")
    # before the packages: needrestart's apt hook reads it from its first run on
    files.directory(name="needrestart configuration directory", path="/etc/needrestart/conf.d",
                    user="root", group="root", mode="0755")
    _template(tvars, c.NEEDRESTART)
    audit_before_packages(tvars)
    # before any package: an upgrade never stops or restarts a replicated service (policy-rc.d's comment)
    _template(tvars, c.POLICY_RC, mode="0755")
    # No recommends: they pull in hardware daemons (IPMI, NVMe-oF) a cloud server has no use for.
    packages.install("Base packages", PACKAGES, no_recommends=True)
    _security_updates()
    _stack_ca()
    journal_shipping.upload()
    _hardening(tvars)
    _integrity(tvars)
    audit(tvars)

    _sshd(tvars)
    _firewall(tvars)

    _template(tvars, c.AUTO_UPGRADES)
    _template(tvars, c.UNATTENDED_UPGRADES)

    # systemd-timesyncd skips itself inside containers (ConditionVirtualization=!container
    # in its unit: the host keeps the clock), so there it is only enabled, never started.
    systemd.service(name="Time sync", service="systemd-timesyncd", running=None if _in_container() else True,
                    enabled=True)

    journald = _template(tvars, c.JOURNALD)
    systemd.service(name="Restart journald", service="systemd-journald", restarted=True, _if=journald.did_change)

    sysctl = _template(tvars, c.SYSCTL)
    # -e skips keys this kernel lacks; inside a container some kernel.* keys are
    # read-only, which is the host's business, so failing there is not an error.
    server.shell(
        name="Apply sysctl settings",
        commands=[f"sysctl -e -p {c.SYSCTL} || systemd-detect-virt --container --quiet"],
        _if=sysctl.did_change,
    )

    exporter_args = _template(tvars, c.NODE_EXPORTER_ARGS)
    exporter_unit = _template(tvars, c.NODE_EXPORTER_UNIT)
    systemd.service(name="Restart the node exporter", service="prometheus-node-exporter", restarted=True,
                    daemon_reload=True, _if=_any_changed(exporter_args, exporter_unit))
    systemd.service(name="Node exporter", service="prometheus-node-exporter", running=True, enabled=True)

    # hostnamectl needs systemd-hostnamed, which containers may lack: write the
    # file and set the running name directly, only when it differs.
    _template(tvars, c.HOSTNAME)
    if host.get_fact(Hostname) != host.name:
        server.shell(name="Set the hostname", commands=[f"hostname {shlex.quote(host.name)}"])
    _template(tvars, c.HOSTS)
    if host.get_fact(Directory, path="/etc/cloud/cloud.cfg.d"):
        _template(tvars, c.CLOUD_INIT)
