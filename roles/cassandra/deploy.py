"""The cassandra role: Cassandra installed, configured and ready to start.

This deploy never starts, stops or restarts Cassandra: a ring must change one
node at a time, each step only when the ring is healthy, which is the ring
orchestrator's business (roles/cassandra/ring.py, run by the converge right
after the roles). A changed configuration on a running node is marked for the
orchestrator's rolling restart.
"""

from io import StringIO
from pathlib import Path

from gevent.lock import Semaphore
from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd

from roles.cassandra import bundle as cassandra_bundle
from roles.tls_files import issue
from hastack.templating import template_path
from roles.cassandra import DEFAULTS
from roles.cassandra.config import (CONF_DIR, CONFIG_FILES, DATA_DIR, LOG_DIR, NODETOOL, READ_AGAIN_WHEN_USED,
                                    REPAIR_SERVICE, REPAIR_TIMER, TLS_DIR, UNIT, node_pem, repair_timer_vars, template_vars)
from roles.cassandra.ring import AUTH_DONE, AUTH_SCRIPT, CQL_TOOL, OTHER_PASSWORDS, RESTART_MARK, STATE_DIR
from roles import rolling_restart
from roles.data_volume import mount_data_volume
from roles import packages

AUTH_SOURCE = Path(__file__).parent / "auth.py"
CQL_TOOL_SOURCE = Path(__file__).parent / "cql_tool.py"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
_build_lock = Semaphore()  # hosts are prepared in parallel greenlets: one Maven build


def _bundle() -> tuple[str, str]:
    """The bundle built (or cached) on the operator's machine: path and sha256."""
    with _build_lock:
        archive = cassandra_bundle.build(version=host.data.cassandra_version,
                                         agent_version=host.data.cassandra_jmx_exporter_version)
    return str(archive), cassandra_bundle.sha256_file(archive)


def _install(version: str) -> None:
    d = host.data
    files.directory(name="Download directory", path="/var/cache/hastack", user="root", group="root", mode="0755")
    installed = host.get_fact(Command, f"test -e /opt/cassandra-{version}/.installed && "
                                       f"readlink /opt/cassandra || true") == f"/opt/cassandra-{version}"
    # the archive is needed to install a version only: once it is installed, no hashing of
    # a hundred megabytes here and on the host at every converge
    if not installed:
        if d.cassandra_tarball_url:
            # Apache's binary tarball: same lib/ layout; the exporter agent from Maven Central, checksum pinned
            archive, sha256 = f"/var/cache/hastack/apache-cassandra-{version}-bin.tar.gz", d.cassandra_tarball_sha256
            if not sha256:
                raise ValueError(f"{host.name}: cassandra_tarball_url is set but cassandra_tarball_sha256 is not")
            files.download(name="Cassandra tarball", src=d.cassandra_tarball_url, dest=archive, sha256sum=sha256)
        else:
            local, sha256 = _bundle()
            archive = f"/var/cache/hastack/{cassandra_bundle.bundle_name(version)}"
            files.put(name="Cassandra bundle", src=local, dest=archive, user="root", group="root", mode="0644")
        server.shell(name=f"Cassandra {version} installed (checksums verified)",
                     commands=[cassandra_bundle.install_script(archive, sha256, version)])
    if d.cassandra_tarball_url:
        jar = cassandra_bundle.agent_jar(d.cassandra_jmx_exporter_version)
        pinned = cassandra_bundle.read_lock()[f"agents/{jar}"]
        files.directory(name="Agents directory", path=f"/opt/cassandra-{version}/agents", mode="0755")
        files.download(name="JMX exporter agent", dest=f"/opt/cassandra-{version}/agents/{jar}", sha256sum=pinned,
                       src=f"{MAVEN_CENTRAL}/io/prometheus/jmx/{cassandra_bundle.JMX_EXPORTER_ARTIFACT}/"
                           f"{d.cassandra_jmx_exporter_version}/{jar}")


@deploy("cassandra", data_defaults=DEFAULTS)
def cassandra() -> None:
    d = host.data
    version = d.cassandra_version
    packages.install("Java 17 and the CQL driver", packages=["openjdk-17-jre-headless", "python3-cassandra"],
                 no_recommends=True)
    server.sysctl(name="Memory map areas for Cassandra", key="vm.max_map_count",
                  value=int(d.cassandra_vm_max_map_count), persist=True,
                  persist_file="/etc/sysctl.d/60-hastack-cassandra.conf")
    server.group(name="cassandra group", group="cassandra", system=True)
    server.user(name="cassandra user", user="cassandra", group="cassandra", system=True, home=DATA_DIR,
                shell="/usr/sbin/nologin", create_home=False)  # nosec B604  # a login shell (none), not a command
    mount_data_volume(DATA_DIR)
    for path, mode in ((DATA_DIR, "0750"), (LOG_DIR, "0750"), (CONF_DIR, "0755"), (TLS_DIR, "0700")):
        files.directory(name=f"{path}", path=path, user="cassandra", group="cassandra", mode=mode)
    files.directory(name="Ring state directory", path=STATE_DIR, user="root", group="root", mode="0700")
    _install(version)

    mem_mb = int(host.get_fact(Command, "awk '/^MemTotal/ {print int($2 / 1024)}' /proc/meminfo"))
    v = template_vars(d, mem_mb, d.cassandra_passwords["jmx"])
    changed = []
    for target, mode in CONFIG_FILES.items():
        written = files.template(name=f"Cassandra {target.rsplit('/', 1)[1]}", src=template_path("cassandra", target),
                                 dest=target, user="cassandra", group="cassandra", mode=mode, **v)
        if target not in READ_AGAIN_WHEN_USED:  # a new JMX password (the seed rotating) restarts no node
            changed.append(written)
    issued = issue(f"cassandra-{host.name}", [f"{TLS_DIR}/node.pem"], dns=[host.name], ips=[d.private_ip],
                   client=True)
    tls = [files.put(name="Cassandra TLS key and chain", src=StringIO(node_pem(issued)),
                     dest=f"{TLS_DIR}/node.pem", user="cassandra", group="cassandra", mode="0600"),
           files.put(name="Cassandra TLS CA", src=StringIO(issued.ca_pem), dest=f"{TLS_DIR}/ca.crt",
                     user="cassandra", group="cassandra", mode="0644")]
    unit = files.template(name="Cassandra unit", src=template_path("cassandra", UNIT), dest=UNIT,
                          user="root", group="root", mode="0644", **v)
    changed.append(unit)
    files.template(name="nodetool", src=template_path("cassandra", NODETOOL), dest=NODETOOL,
                   user="root", group="root", mode="0755", **v)
    systemd.daemon_reload(name="systemd knows the Cassandra unit", _if=unit.did_change)
    # Enabled, so a rebooted member rejoins by itself; a node that never joined is started by the ring
    # orchestrator (it starts nothing here).
    server.shell(name="Cassandra enabled at boot", commands=["systemctl enable cassandra.service"],
                 _if=lambda: host.get_fact(Command, "systemctl is-enabled cassandra.service || true") != "enabled")
    rolling_restart.mark("Cassandra marked for a rolling restart", RESTART_MARK, "cassandra.service", changed)
    # new TLS files alone (a certificate renewed, the stack CA rotating): reloaded in place, client and
    # internode, for new connections; no restart of the ring
    rolling_restart.reload_in_place("Cassandra reloads its TLS files", "cassandra.service", f"{NODETOOL} reloadssl", tls)

    # -- ring maintenance: the auth bootstrap script, and a primary-range repair well inside gc_grace_seconds
    files.directory(name="hastack directory", path="/opt/hastack", user="root", group="root", mode="0755")
    files.put(name="Cassandra auth bootstrap", src=str(AUTH_SOURCE), dest=AUTH_SCRIPT, user="root", group="root",
              mode="0644")
    files.put(name="CQL tool for restores", src=str(CQL_TOOL_SOURCE), dest=CQL_TOOL, user="root", group="root",
              mode="0644")
    admin = files.put(name="Cassandra admin password (root only)", src=StringIO(d.cassandra_passwords["admin"]),
                      dest=f"{STATE_DIR}/admin-password", user="root", group="root", mode="0600")
    # while the seed rotates: the admin's other password, so the ring orchestrator can log in and change it
    others = [pw for pw in (d.get("cassandra_accepted") or {}).get("admin", []) if pw != d.cassandra_passwords["admin"]]
    files.put(name="Cassandra admin's other password (root only)", src=StringIO("".join(f"{pw}\n" for pw in others)),
              dest=OTHER_PASSWORDS, user="root", group="root", mode="0600")
    # a new admin password: the ring orchestrator secures the ring again, which sets it
    files.file(name="Cassandra auth to be secured again", path=AUTH_DONE, present=False, _if=admin.did_change)
    svc = files.template(name="Repair service", src=template_path("cassandra", REPAIR_SERVICE), dest=REPAIR_SERVICE,
                         user="root", group="root", mode="0644")
    timer = files.template(name="Repair timer", src=template_path("cassandra", REPAIR_TIMER), dest=REPAIR_TIMER,
                           user="root", group="root", mode="0644", **repair_timer_vars(d))
    systemd.service(name="Repair timer running", service="cassandra-repair.timer", running=True, enabled=True,
                    daemon_reload=svc.will_change or timer.will_change, restarted=timer.will_change)
