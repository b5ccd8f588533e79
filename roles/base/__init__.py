"""The base role, on every host: admin accounts, SSH, the host firewall, security
updates, the journal, kernel settings, the node exporter, the stack CA."""

import re
from typing import Any

from pydantic import Field, field_validator

from hastack.ports import ADMINS, Port
from hastack.role import Role, Section, Settings, config_entries

PORTS = (
    Port("ssh", 22, sources=(ADMINS,), description="SSH, keys only"),
    Port("node-exporter", 9100, sources=("monitoring",), description="Prometheus node exporter"),
    Port("icmp", None, protocol="icmp", sources=("private",), description="ping inside the private network"),
)

# sshd options that keep SSH key-only: a stack file may not change them
SSHD_FIXED = ("PasswordAuthentication", "KbdInteractiveAuthentication", "PermitEmptyPasswords", "PermitRootLogin",
              "PubkeyAuthentication", "AuthenticationMethods")

SSHD = {
    "PasswordAuthentication": "no",
    "KbdInteractiveAuthentication": "no",
    "PermitEmptyPasswords": "no",
    "PermitRootLogin": "no",
    "PubkeyAuthentication": "yes",
    "AuthenticationMethods": "publickey",
    "X11Forwarding": "no",
    "MaxAuthTries": 3,
    "LoginGraceTime": 20,
    # admins run commands: no tunnels or agents through the hosts (nothing of the stack forwards over SSH)
    "AllowTcpForwarding": "no",
    "AllowAgentForwarding": "no",
    # the key fingerprint of every login in the journal: which admin's key opened a session
    "LogLevel": "VERBOSE",
    "ClientAliveInterval": 300,
    "ClientAliveCountMax": 2,
    "TCPKeepAlive": "no",  # the encrypted ClientAlive above tells a dead peer instead
    "Compression": "no",
    "Banner": "/etc/issue.net",
}

SYSCTL = {
    # Strict reverse-path filtering: "all" is the floor for every interface.
    "net.ipv4.conf.all.rp_filter": 1,
    "net.ipv4.conf.default.rp_filter": 1,
    "net.ipv4.conf.all.accept_redirects": 0,
    "net.ipv4.conf.default.accept_redirects": 0,
    "net.ipv6.conf.all.accept_redirects": 0,
    "net.ipv6.conf.default.accept_redirects": 0,
    "net.ipv4.conf.all.send_redirects": 0,
    "net.ipv4.conf.default.send_redirects": 0,
    "net.ipv4.conf.all.accept_source_route": 0,
    "net.ipv4.conf.default.accept_source_route": 0,
    "net.ipv6.conf.all.accept_source_route": 0,
    "net.ipv4.conf.all.log_martians": 1,
    "net.ipv4.conf.default.log_martians": 1,
    "net.ipv4.tcp_syncookies": 1,
    "kernel.kptr_restrict": 2,
    "kernel.dmesg_restrict": 1,
    "fs.protected_hardlinks": 1,
    "fs.protected_symlinks": 1,
    "fs.protected_fifos": 2,
    "fs.protected_regular": 2,
    # no core dumps of set-uid programs (their memory holds other users' secrets)
    "fs.suid_dumpable": 0,
    "kernel.unprivileged_bpf_disabled": 1,
    "net.core.bpf_jit_harden": 2,
    "kernel.perf_event_paranoid": 3,
}

JOURNALD = {"Storage": "persistent", "SystemMaxUse": "1G"}

BANNER = ("Authorised access only. Every session and command on this system is logged and monitored;\n"
          "unauthorised access is prohibited and may be prosecuted under criminal and civil law.")
# kernel modules no host of the stack uses: rare network protocols with a history of remote bugs, and
# storage a cloud server never has plugged in
BLOCKED_MODULES = ["dccp", "sctp", "rds", "tipc", "usb-storage", "firewire-core"]


class UnattendedUpgrades(Section):
    enabled: bool = True
    # Security updates only; everything else changes through a converge.
    origins: list[str] = [
        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
        "origin=Debian,codename=${distro_codename},label=Debian-Security",
    ]
    # Never reboot on its own: HA pairs must not go down together.
    automatic_reboot: bool = False
    remove_unused_dependencies: bool = True

    @field_validator("origins")
    @classmethod
    def _one_line_each(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not origin or any(c in origin for c in '\n"'):
                raise ValueError(f"{origin!r}: an origin pattern is one line without quotes, "
                                 "e.g. origin=Debian,codename=${distro_codename}-security")
        return value


class BaseSettings(Settings):
    """hastack:settings.base -> host data base_<key>. Mappings (sshd, sysctl, journald)
    are added to the defaults: give only what you change."""

    # Members may log in over SSH and sudo without a password. The cloud-init
    # user-data puts first-boot admins in a group of this same name.
    admin_group: str = Field("hastack-admins", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    # /etc/ssh/sshd_config.d/00-hastack.conf, in this order (AllowGroups is
    # always the admin group and is added by the template).
    sshd: dict[str, str | int] = SSHD
    # /etc/sysctl.d/90-hastack.conf
    sysctl: dict[str, str | int] = SYSCTL
    # /etc/apt/apt.conf.d/20auto-upgrades and 52hastack-unattended-upgrades
    unattended_upgrades: UnattendedUpgrades = UnattendedUpgrades()
    # /etc/systemd/journald.conf.d/hastack.conf ([Journal] section)
    journald: dict[str, str | int] = JOURNALD
    # /etc/issue and /etc/issue.net (shown before SSH logins): the legal notice
    banner: str = Field(BANNER, min_length=20, max_length=2000)
    # /etc/modprobe.d/hastack.conf: modules that may not load (a stack that needs SCTP lists the rest)
    blocked_modules: list[str] = BLOCKED_MODULES
    # /etc/profile.d/hastack.sh: an interactive shell left idle this long logs out (TMOUT; 0: never)
    idle_logout_seconds: int = Field(900, ge=0, le=86400)

    @field_validator("banner")
    @classmethod
    def _banner(cls, value: str) -> str:
        # getty reads backslash sequences in /etc/issue (\n: the host name, ...): plain text only
        if "\\" in value or any(not (c.isprintable() or c == "\n") for c in value):
            raise ValueError("the banner is plain text: printable characters and line breaks, no backslashes")
        return value

    @field_validator("blocked_modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        bad = [m for m in value if not re.fullmatch(r"[a-z0-9_-]{1,64}", m)]
        if bad:
            raise ValueError(f"{bad}: kernel module names are lower-case letters, digits, '_' and '-', e.g. sctp")
        return value

    @field_validator("sshd", mode="before")
    @classmethod
    def _sshd(cls, value: Any) -> Any:
        if isinstance(value, dict):
            fixed = sorted(k for k in value if k in SSHD_FIXED and value[k] != SSHD[k])
            if fixed:
                raise ValueError(f"{', '.join(fixed)} keep SSH key-only and cannot be changed "
                                 f"(changeable: any other sshd option, e.g. MaxAuthTries)")
            return {**SSHD, **config_entries(value, r"^[A-Za-z][A-Za-z0-9]*$", "an sshd option name")}
        return value

    @field_validator("sysctl", mode="before")
    @classmethod
    def _sysctl(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {**SYSCTL, **config_entries(value, r"^[a-z0-9_]+(\.[A-Za-z0-9_-]+)+$", "a sysctl key like net.ipv4.tcp_syncookies")}
        return value

    @field_validator("journald", mode="before")
    @classmethod
    def _journald(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {**JOURNALD, **config_entries(value, r"^[A-Z][A-Za-z]*$", "a journald.conf [Journal] option like SystemMaxUse")}
        return value


def _host_data(topo, host):
    from roles.journal_shipping import sink_data

    return sink_data(topo, host)


ROLE = Role(
    name="base",
    ports=PORTS,
    settings=BaseSettings,
    settings_prefix="base_",
    runs_on=lambda topo, host: True,
    host_data=_host_data,
)

DEFAULTS = ROLE.defaults
NODE_EXPORTER_PORT = next(p.port for p in PORTS if p.name == "node-exporter")
