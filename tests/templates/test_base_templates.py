"""The base role's templates, rendered with real stack data and checked by the
programs that read them on hosts: sshd, nft, visudo, apt-config, aide.

These tests need those programs (openssh-server, nftables, sudo, apt, aide) and root
(nft -c talks to the kernel; sshd -t wants its privilege separation
directory); a missing program fails the test instead of skipping it.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hastack.templating import render, template_path
from roles import host_roles
from roles.base import DEFAULTS, NODE_EXPORTER_PORT
from roles.base import config as c
from tests.templates.hostdata import host_data, topology

HOST_ROLES = host_roles()
STACKS = ("prod", "staging")
# The first host of every role in every stack.
CASES = [(stack, role) for stack in STACKS for role in HOST_ROLES]
ADMIN_GROUP = DEFAULTS["base_admin_group"]


def first_host(stack, role):
    return topology(stack).hosts_with_role(role)[0]


def rendered(stack, role, data_overrides=None):
    """target -> text, as the deploy writes them for the role's first host."""
    host = first_host(stack, role)
    data = host_data(stack, host, "base", **(data_overrides or {}))
    return {target: render("base", target, **tvars) for target, tvars in c.template_vars(host.name, data).items()}


def tool(name):
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{name} is not installed; these tests check templates with the real program")
    return path


def run(*args, ok=True):
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
    return proc


def write(path: Path, text: str, mode=0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


ids = [f"{stack}-{role}" for stack, role in CASES]


@pytest.mark.parametrize("stack,role", CASES, ids=ids)
def test_every_target_has_a_template_that_renders(stack, role):
    files = rendered(stack, role)
    for target, text in files.items():
        assert Path(template_path("base", target)).is_file()
        assert text.endswith("\n") and text.strip(), target


# ------------------------------------------------------------------ sshd

# Debian 12's /etc/ssh/sshd_config, its drop-in directory moved to a test dir.
DEBIAN_SSHD_CONFIG = """\
Include {dropins}/*.conf
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""

# What a cloud image may ship (e.g. 50-cloud-init.conf with ssh_pwauth: true).
LATER_DROPIN = """\
PasswordAuthentication yes
KbdInteractiveAuthentication yes
PermitRootLogin yes
X11Forwarding yes
"""


@pytest.fixture
def sshd(tmp_path):
    """Run sshd against a config dir in tmp_path; returns (dropins dir, sshd -T as a dict)."""
    sshd_bin, keygen = tool("sshd"), tool("ssh-keygen")
    # sshd refuses to start as root without its privilege separation directory,
    # which ssh.service creates at runtime.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    dropins = tmp_path / "sshd_config.d"
    dropins.mkdir()
    config = write(tmp_path / "sshd_config", DEBIAN_SSHD_CONFIG.format(dropins=dropins))
    key = tmp_path / "host_key"
    run(keygen, "-q", "-t", "ed25519", "-N", "", "-f", key)

    def effective():
        run(sshd_bin, "-t", "-f", config, "-h", key)
        out = run(sshd_bin, "-T", "-f", config, "-h", key, "-C", "user=alice,host=client.example.com,addr=203.0.113.7")
        return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)

    return dropins, effective


@pytest.mark.parametrize("stack,role", CASES, ids=ids)
def test_sshd_accepts_the_dropin_and_allows_keys_only(sshd, stack, role):
    dropins, effective = sshd
    write(dropins / "00-hastack.conf", rendered(stack, role)[c.SSHD_DROPIN])
    conf = effective()
    assert conf["passwordauthentication"] == "no"
    assert conf["kbdinteractiveauthentication"] == "no"
    assert conf["permitrootlogin"] == "no"
    assert conf["permitemptypasswords"] == "no"
    assert conf["pubkeyauthentication"] == "yes"
    assert conf["authenticationmethods"] == "publickey"
    assert conf["allowgroups"] == ADMIN_GROUP
    assert conf["x11forwarding"] == "no"
    assert conf["maxauthtries"] == "3"
    assert conf["logingracetime"] == "20"
    # no forwarding through the hosts, every login's key in the journal, the legal notice before login
    assert conf["allowtcpforwarding"] == "no" and conf["allowagentforwarding"] == "no"
    assert conf["loglevel"] == "VERBOSE" and conf["banner"] == c.ISSUE_NET


def test_a_later_dropin_enabling_passwords_does_not_win(sshd):
    dropins, effective = sshd
    write(dropins / "50-cloud-init.conf", LATER_DROPIN)
    # Without ours the image's drop-in would turn passwords and root logins on ...
    conf = effective()
    assert conf["passwordauthentication"] == "yes" and conf["permitrootlogin"] == "yes"
    # ... with ours sshd keeps the first value it read.
    write(dropins / "00-hastack.conf", rendered("prod", "app")[c.SSHD_DROPIN])
    conf = effective()
    assert conf["passwordauthentication"] == "no"
    assert conf["kbdinteractiveauthentication"] == "no"
    assert conf["permitrootlogin"] == "no"
    assert conf["x11forwarding"] == "no"


# ------------------------------------------------------------------ sudoers


@pytest.mark.parametrize("stack", STACKS)
def test_sudoers_passes_visudo(tmp_path, stack):
    visudo = tool("visudo")
    text = rendered(stack, "app")[c.SUDOERS]
    assert f"%{ADMIN_GROUP} ALL=(ALL) NOPASSWD:ALL" in text.splitlines()
    run(visudo, "-cf", write(tmp_path / "hastack-admins", text, 0o440))
    # visudo does catch a broken file, so the check on hosts means something.
    broken = write(tmp_path / "broken", text.replace("NOPASSWD:ALL", "NOPASSWD:"), 0o440)
    assert run(visudo, "-cf", broken, ok=False).returncode != 0


# ------------------------------------------------------------------ nftables


def input_rules(ruleset: str) -> list[str]:
    """The rule lines of chain input (comments and the chain header left out)."""
    body = ruleset.split("chain input {", 1)[1].split("}\n", 1)[0]
    lines = [line.strip() for line in body.splitlines()]
    return [line for line in lines if line and not line.startswith(("#", "type filter"))]


def saddrs(rule: str) -> set[str]:
    match = re.search(r"\bip6? saddr \{ ([^}]*) \}", rule)
    return set(match.group(1).split(", ")) if match else set()


@pytest.mark.parametrize("stack,role", CASES, ids=ids)
def test_firewall_passes_nft_check(tmp_path, stack, role):
    nft = tool("nft")
    text = rendered(stack, role)[c.NFTABLES]
    assert not [line for line in text.splitlines() if line.strip().startswith("flush")]  # other tables stay
    assert text.count("table inet hastack") == 3  # create, delete, define: an atomic replace
    run(nft, "-c", "-f", write(tmp_path / "nftables.conf", text))


@pytest.mark.parametrize("stack", STACKS)
def test_database_ports_only_accept_app_and_mariadb_hosts(tmp_path, stack):
    topo = topology(stack)
    text = rendered(stack, "mariadb")[c.NFTABLES]
    run(tool("nft"), "-c", "-f", write(tmp_path / "nftables.conf", text))
    mysql = [r for r in input_rules(text) if "dport 3306" in r]
    assert len(mysql) == 1
    expected = {f"{h.private_ip}/32" for h in topo.hosts_with_role("app") + topo.hosts_with_role("mariadb")}
    assert mysql[0].startswith("ip saddr {") and saddrs(mysql[0]) == expected
    exporter = [r for r in input_rules(text) if "dport 9104" in r]
    assert len(exporter) == 1 and saddrs(exporter[0]) == {f"{topo.host(topo.hosts_with_role('monitoring')[0].name).private_ip}/32"}


# Rules that accept regardless of source address, and why that is safe.
SOURCE_FREE = (
    "ct state established,related accept",  # replies to our own connections
    "iif lo accept",  # loopback only
    "icmpv6 type {",  # IPv6 neighbour discovery, on-link only (hop limit 255)
)

PRIVATE_CASES = [(s, r) for s, r in CASES if r != "loadbalancer"]


@pytest.mark.parametrize("stack,role", PRIVATE_CASES, ids=[f"{s}-{r}" for s, r in PRIVATE_CASES])
def test_hosts_without_public_ports_accept_nobody_from_anywhere(tmp_path, stack, role):
    firewall = host_data(stack, first_host(stack, role), "base")["firewall"]
    assert not any(ipaddress.ip_network(cidr).prefixlen == 0 for rule in firewall for cidr in rule["cidrs"])
    text = rendered(stack, role)[c.NFTABLES]
    run(tool("nft"), "-c", "-f", write(tmp_path / "nftables.conf", text))
    assert "0.0.0.0/0" not in text and "::/0" not in text
    for rule in input_rules(text):
        if rule.startswith(SOURCE_FREE) or "accept" not in rule.split():
            continue
        assert saddrs(rule), f"{stack} {role}: rule accepts any source: {rule}"


@pytest.mark.parametrize("stack", STACKS)
def test_loadbalancer_web_ports_are_open_to_everyone(stack):
    rules = input_rules(rendered(stack, "loadbalancer")[c.NFTABLES])
    assert 'tcp dport 443 accept comment "https"' in rules
    assert 'tcp dport 80 accept comment "http"' in rules
    vrrp = [r for r in rules if "vrrp" in r]
    peers = {f"{h.private_ip}/32" for h in topology(stack).hosts_with_role("loadbalancer")}
    assert len(vrrp) == 1 and "ip protocol vrrp" in vrrp[0] and saddrs(vrrp[0]) == peers


def test_every_rule_form_passes_nft_check(tmp_path):
    """IPv6 sources, one-family "everyone", udp and both families of icmp/vrrp."""
    firewall = [
        {"name": "ssh", "port": 22, "protocol": "tcp", "cidrs": ["203.0.113.0/24", "2001:db8::/32"]},
        {"name": "dns", "port": 53, "protocol": "udp", "cidrs": ["0.0.0.0/0"]},
        {"name": "web6", "port": 443, "protocol": "tcp", "cidrs": ["::/0", "10.0.0.0/8"]},
        {"name": "ping", "port": None, "protocol": "icmp", "cidrs": ["10.0.0.0/8", "::/0"]},
        {"name": "vrrp", "port": None, "protocol": "vrrp", "cidrs": ["10.0.0.1/32", "fd00::1/128"]},
    ]
    text = rendered("prod", "app", {"firewall": firewall})[c.NFTABLES]
    run(tool("nft"), "-c", "-f", write(tmp_path / "nftables.conf", text))
    rules = input_rules(text)
    assert 'ip6 saddr { 2001:db8::/32 } tcp dport 22 accept comment "ssh"' in rules
    assert 'meta nfproto ipv4 udp dport 53 accept comment "dns"' in rules
    assert 'meta nfproto ipv6 tcp dport 443 accept comment "web6"' in rules
    assert 'meta nfproto ipv6 meta l4proto ipv6-icmp accept comment "ping"' in rules
    assert 'ip6 saddr { fd00::1/128 } meta l4proto vrrp accept comment "vrrp"' in rules


# ------------------------------------------------------------------ the rest


@pytest.mark.parametrize("stack", STACKS)
def test_etc_hosts_lists_every_host(stack):
    topo = topology(stack)
    for role in HOST_ROLES:
        lines = rendered(stack, role)[c.HOSTS].splitlines()
        assert "127.0.0.1\tlocalhost" in lines
        for h in topo.hosts:
            assert f"{h.private_ip}\t{h.name}" in lines


@pytest.mark.parametrize("stack,role", CASES, ids=ids)
def test_hostname_and_node_exporter_address(stack, role):
    files = rendered(stack, role)
    host = first_host(stack, role)
    assert files[c.HOSTNAME] == f"{host.name}\n"
    assert f'ARGS="--web.listen-address={host.private_ip}:{NODE_EXPORTER_PORT}"' in files[c.NODE_EXPORTER_ARGS].splitlines()


# Debian 12's 50unattended-upgrades origins, which ours must replace, not extend.
DEBIAN_UNATTENDED = """\
Unattended-Upgrade::Origins-Pattern {
        "origin=Debian,codename=${distro_codename},label=Debian";
        "origin=Debian,codename=${distro_codename},label=Debian-Security";
        "origin=Debian,codename=${distro_codename}-security,label=Debian-Security";
};
"""


def test_unattended_upgrades_take_security_updates_only(tmp_path):
    apt_config = tool("apt-config")
    files = rendered("prod", "app")
    debian = write(tmp_path / "50unattended-upgrades", DEBIAN_UNATTENDED)
    auto = write(tmp_path / "20auto-upgrades", files[c.AUTO_UPGRADES])
    ours = write(tmp_path / "52hastack", files[c.UNATTENDED_UPGRADES])
    out = run(apt_config, "-c", debian, "-c", auto, "-c", ours, "dump").stdout.splitlines()
    origins = [line for line in out if line.startswith("Unattended-Upgrade::Origins-Pattern:: ")]
    assert origins and all("label=Debian-Security" in o for o in origins), origins
    assert 'APT::Periodic::Unattended-Upgrade "1";' in out
    assert 'APT::Periodic::Update-Package-Lists "1";' in out
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in out


def test_journal_is_persistent():
    lines = rendered("prod", "app")[c.JOURNALD].splitlines()
    assert "[Journal]" in lines and "Storage=persistent" in lines
    assert any(line.startswith("SystemMaxUse=") for line in lines)


def test_every_sysctl_key_exists_in_the_kernel():
    lines = [line for line in rendered("prod", "app")[c.SYSCTL].splitlines() if line and not line.startswith("#")]
    assert len(lines) == len(DEFAULTS["base_sysctl"])
    for line in lines:
        key, value = (part.strip() for part in line.split("=", 1))
        assert Path("/proc/sys", *key.split(".")).exists(), f"unknown sysctl {key}"
        assert value.isdigit()


@pytest.mark.parametrize("stack", STACKS)
def test_first_boot_admins_are_in_the_admin_group(stack):
    topo = topology(stack)
    host = topo.hosts[0]
    doc = yaml.safe_load(render("cloud-init", "user-data.yaml", topo=topo, host=host))
    assert ADMIN_GROUP in doc["groups"]
    assert [u["name"] for u in doc["users"]] == [a.name for a in topo.admins]
    assert all(ADMIN_GROUP in u["groups"] for u in doc["users"])


def test_access_gate_unit_passes_systemd_analyze_verify_and_runs_before_logins_and_mariadb(tmp_path):
    from roles import access_gate

    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze is not installed (package systemd)")
    unit = tmp_path / "hastack-access-gate.service"
    unit.write_text(render("base", access_gate.UNIT))
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = unit.read_text().splitlines()
    before = next(line for line in lines if line.startswith("Before=")).split("=", 1)[1].split()
    assert {"ssh.service", "systemd-user-sessions.service", "mariadb.service"} <= set(before)
    # ordering only: restarting sshd or MariaDB in a converge must not pull the gate in
    assert not [line for line in lines if line.startswith(("Requires=", "RequiredBy=", "BindsTo="))]
    assert "TimeoutStartSec=infinity" in lines and "RemainAfterExit=yes" in lines


@pytest.mark.parametrize("stack", STACKS)
def test_blocked_modules_never_load_as_modprobe_reads_them(stack, tmp_path):
    text = rendered(stack, "app")[c.MODPROBE]
    conf = write(tmp_path / "hastack.conf", text)
    modprobe = tool("modprobe")
    shown = run(modprobe, "-C", conf, "--showconfig")
    assert "ignoring bad line" not in shown.stderr, shown.stderr
    for module in DEFAULTS["base_blocked_modules"]:
        name = module.replace("-", "_")  # modprobe's own spelling of a module name
        assert {f"install {name} /bin/true", f"blacklist {name}"} <= set(shown.stdout.splitlines())
        # what `modprobe <module>` would do: run /bin/true, load nothing
        assert run(modprobe, "-C", conf, "-n", "-v", module).stdout.split() == ["install", "/bin/true"]


def test_the_banner_and_core_dump_limit_are_what_lynis_and_pam_read():
    texts = rendered("prod", "mariadb")
    assert texts[c.ISSUE] == texts[c.ISSUE_NET] == DEFAULTS["base_banner"] + "\n"
    assert "\\" not in texts[c.ISSUE]  # getty would expand escapes in /etc/issue
    assert [line.split() for line in texts[c.NO_CORE_DUMPS].splitlines() if not line.startswith("#")] == [
        ["*", "hard", "core", "0"], ["root", "hard", "core", "0"]]  # "*" does not cover root


def test_login_shells_get_no_core_dumps_and_an_idle_logout_they_cannot_lift(tmp_path):
    """The rendered profile script in a real login shell (bash, as an admin's): core dumps 0, TMOUT set and
    readonly; with idleLogoutSeconds 0 no TMOUT at all. systemd-coredump keeps nothing either."""
    coredump = rendered("prod", "app")[c.NO_CORE_DUMPS_SYSTEMD]
    assert [line for line in coredump.splitlines() if line and not line.startswith("#")] == [
        "[Coredump]", "Storage=none", "ProcessSizeMax=0"]
    profile = write(tmp_path / "hastack.sh", rendered("prod", "app")[c.SHELL_PROFILE])
    probe = f'. {profile}; ulimit -c; echo "$TMOUT"; (TMOUT=0) 2>/dev/null || echo refused'
    assert run("bash", "-c", probe).stdout.split() == ["0", "900", "refused"]
    never = write(tmp_path / "never.sh",
                  rendered("prod", "app", {"base_idle_logout_seconds": 0})[c.SHELL_PROFILE])
    assert run("bash", "-c", f'. {never}; echo "[$TMOUT]"').stdout.strip() == "[]"
    assert run("dash", "-c", f". {profile}; ulimit -c").stdout.strip() == "0"


def test_login_defs_settings_apply_to_debians_file_once(tmp_path):
    """On Debian 12's own /etc/login.defs: each setting replaces its line (UMASK 022, #HOME_MODE ...);
    a second run changes nothing, and the check the deploy asks reads exactly what it wants."""
    login_defs = write(tmp_path / "login.defs", Path("/etc/login.defs").read_text())
    assert "UMASK\t\t022" in login_defs.read_text()

    def apply():
        for command in c.login_defs_commands():
            run("sh", "-c", command.replace(c.LOGIN_DEFS, str(login_defs)))

    apply()
    first = login_defs.read_text()
    apply()
    assert login_defs.read_text() == first
    read = run("sh", "-c", c.login_defs_read().replace(c.LOGIN_DEFS, str(login_defs))).stdout.strip()
    assert read == c.login_defs_wanted()
    assert len(first.splitlines()) <= len(Path("/etc/login.defs").read_text().splitlines()) + 2  # replaced, not added


@pytest.mark.parametrize("args,code", [
    (["mariadb", "restart"], 101), (["mariadb.service", "restart"], 101), (["--quiet", "redis-server", "stop"], 101),
    (["haproxy", "force-reload", "restart"], 101), (["keepalived", "try-restart"], 101),
    (["mariadb", "start"], 0), (["mariadb.service", "status"], 0),  # a fresh install starts it
    (["ssh", "restart"], 0), (["cron.service", "stop"], 0), (["--list", "ssh", "2"], 0),
])
def test_package_upgrades_never_stop_or_restart_a_replicated_service(tmp_path, args, code):
    """policy-rc.d as invoke-rc.d and deb-systemd-invoke call it in maintainer scripts: 101 forbids."""
    script = write(tmp_path / "policy-rc.d", rendered("prod", "mariadb")[c.POLICY_RC], 0o755)
    assert run(script, *args, ok=False).returncode == code


# ------------------------------------------------------------------ file integrity
def test_aide_configuration_passes_aide_and_watches_what_no_package_owns(tmp_path):
    aide = tool("aide")
    text = rendered("prod", "mariadb")[c.AIDE_CONF]
    run(aide, "--config", write(tmp_path / "aide.conf", text, 0o600), "-D")
    # aide does catch a broken file, so the template's check means something
    broken = write(tmp_path / "broken.conf", text + "/srv NoSuchGroup\n", 0o600)
    assert run(aide, "--config", broken, "-D", ok=False).returncode != 0
    selected = [line.split()[0] for line in text.splitlines() if line.startswith("/")]
    assert set(selected) == set(c.INTEGRITY_PATHS) and "/usr/bin" not in selected  # package files: debsums
    assert f"database_in=file:{c.AIDE_DB}" in text and "sha512" in text


def test_package_runs_renew_the_integrity_baseline_except_a_converges(tmp_path):
    """The apt hook as apt reads it, run as dpkg runs it: outside a converge it renews the baseline, in one
    (whose package runs set the variable) it leaves that to the converge's end."""
    hook = write(tmp_path / "90hastack-integrity", rendered("prod", "app")[c.INTEGRITY_APT_HOOK])
    dumped = run(tool("apt-config"), "-c", hook, "dump", "DPkg::Post-Invoke").stdout
    ours = [cmd for cmd in re.findall(r'^DPkg::Post-Invoke:: "(.*)";$', dumped, re.M) if c.INTEGRITY in cmd]
    assert len(ours) == 1, dumped  # (the host's own hooks are in the dump too)
    command = ours[0]
    ran = tmp_path / "ran"
    fake = write(tmp_path / "hastack-integrity", f"#!/bin/sh\necho \"$@\" >> {ran}\n", 0o755)
    command = command.replace(c.INTEGRITY, str(fake))
    env = {"PATH": "/usr/bin:/bin"}
    subprocess.run(["sh", "-c", command], env={**env, **c.CONVERGE_ENV}, check=True)
    assert not ran.exists()
    subprocess.run(["sh", "-c", command], env=env, check=True)
    assert ran.read_text() == "accept packages\n"
    assert "HASTACK_CONVERGE=1 " in c.SECURITY_UPGRADE  # the converge's own upgrade: no renewal per run
