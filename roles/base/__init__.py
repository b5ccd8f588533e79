from hastack.ports import ADMINS, Port

PORTS = (
    Port("ssh", 22, sources=(ADMINS,), description="SSH, keys only"),
    Port("node-exporter", 9100, sources=("monitoring",), description="Prometheus node exporter"),
    Port("icmp", None, protocol="icmp", sources=("private",), description="ping inside the private network"),
)

# Role settings; host data of the same name overrides them (pyinfra data_defaults).
DEFAULTS = {
    # Members may log in over SSH and sudo without a password. The cloud-init
    # user-data puts first-boot admins in a group of this same name.
    "base_admin_group": "hastack-admins",
    # /etc/ssh/sshd_config.d/00-hastack.conf, in this order (AllowGroups is
    # always the admin group and is added by the template).
    "base_sshd": {
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PermitEmptyPasswords": "no",
        "PermitRootLogin": "no",
        "PubkeyAuthentication": "yes",
        "AuthenticationMethods": "publickey",
        "X11Forwarding": "no",
        "MaxAuthTries": 3,
        "LoginGraceTime": 20,
    },
    # /etc/sysctl.d/90-hastack.conf
    "base_sysctl": {
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
    },
    # /etc/apt/apt.conf.d/20auto-upgrades and 52hastack-unattended-upgrades
    "base_unattended_upgrades": {
        "enabled": True,
        # Security updates only; everything else changes through a converge.
        "origins": [
            "origin=Debian,codename=${distro_codename}-security,label=Debian-Security",
            "origin=Debian,codename=${distro_codename},label=Debian-Security",
        ],
        # Never reboot on its own: HA pairs must not go down together.
        "automatic_reboot": False,
        "remove_unused_dependencies": True,
    },
    # /etc/systemd/journald.conf.d/hastack.conf ([Journal] section)
    "base_journald": {
        "Storage": "persistent",
        "SystemMaxUse": "1G",
    },
}

NODE_EXPORTER_PORT = next(p.port for p in PORTS if p.name == "node-exporter")
