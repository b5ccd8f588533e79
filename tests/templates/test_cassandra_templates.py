"""Cassandra templates, checked by Cassandra itself.

The bundle is built by the project's own code (cached under .lab/cache, so
only the first run resolves it from Maven Central) and installed with the
role's install script into a temporary prefix. The templates are rendered
for a prod Cassandra node, with only its addresses and locations moved onto
this machine (127.0.0.2, a ring of one), and a real CassandraDaemon runs them
with the command line of the rendered systemd unit: TLS from a temporary
stack CA, password authentication, local JMX with a password file, the
Prometheus agent.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from cassandra import AuthenticationFailed
from cassandra.cluster import NoHostAvailable

from roles.cassandra import bundle as cb
from hastack.pki import CertificateAuthority
from roles.cassandra import passwords as cassandra_passwords
from hastack.templating import render
from roles.cassandra import auth
from roles.cassandra.config import (CONFIG_FILES, NODETOOL, REPAIR_SERVICE, REPAIR_TIMER, UNIT, node_pem,
                                    repair_timer_vars, template_vars)
from tests.templates.hostdata import SEED, host_data, topology

ADDRESS = "127.0.0.2"
PW = cassandra_passwords(SEED)  # what the inventory gives every node (host data cassandra_passwords)
START_TIMEOUT = 240


def _prod_node():
    topo = topology("prod")
    return topo, topo.host(topo.cluster("cassandra").nodes[0].host)


def _vars(data: dict, root: Path | None = None) -> dict:
    assert data["cassandra_passwords"] == PW
    v = template_vars(data, mem_mb=1024, jmx_password=data["cassandra_passwords"]["jmx"])  # 1 GiB machine: 512 MiB heap
    if root is not None:
        v.update(home=str(root / "opt" / "cassandra"), conf_dir=str(root / "etc"), tls_dir=str(root / "etc" / "tls"),
                 data_dir=str(root / "data"), log_dir=str(root / "log"), java=shutil.which("java"))
    return v


def _require(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} not found: install the Debian package {package} (make host-deps)")
    return path


def _port_free(address: str, port: int) -> None:
    with socket.socket() as s:
        if s.connect_ex((address, port)) == 0:
            pytest.fail(f"{address}:{port} is in use; the Cassandra template test needs it")


def _render_all(v: dict, root: Path) -> dict[str, Path]:
    paths = {}
    for target, mode in CONFIG_FILES.items():
        path = Path(v["conf_dir"]) / Path(target).name
        path.write_text(render("cassandra", target, **v))
        path.chmod(int(mode, 8))
        paths[target] = path
    for target in (UNIT, NODETOOL):
        paths[target] = root / Path(target).name
        paths[target].write_text(render("cassandra", target, **v))
    paths[NODETOOL].chmod(0o755)
    return paths


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    _require("java", "openjdk-17-jre-headless")
    _require("mvn", "maven")
    root = tmp_path_factory.mktemp("cassandra")
    archive = cb.build()  # the project's bundle, cached under .lab/cache/cassandra
    install = subprocess.run(["sh", "-c", cb.install_script(str(archive), cb.sha256_file(archive),
                                                            cb.CASSANDRA_VERSION, str(root / "opt"))],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stderr

    topo, host = _prod_node()
    data = host_data("prod", host, "cassandra", private_ip=ADDRESS, cassandra_seeds=[ADDRESS],
                     cassandra_replication_factor=1,
                     # a ring of one: no need to wait for gossip from peers that do not exist
                     cassandra_extra_jvm_options=["-Dcassandra.ring_delay_ms=1000",
                                                  "-Dcassandra.skip_wait_for_gossip_to_settle=0",
                                                  # and no 10 s pause before the default superuser exists
                                                  "-Dcassandra.superuser_setup_delay_ms=0"])
    v = _vars(data, root)
    for d in (v["tls_dir"], v["data_dir"], v["log_dir"]):
        Path(d).mkdir(parents=True)
    ca = CertificateAuthority.own(root / "pki", "cassandra-test")
    issued = ca.issue("cassandra-test", dns=[host.name], ips=[ADDRESS], client=True)
    (Path(v["tls_dir"]) / "node.pem").write_text(node_pem(issued))
    (Path(v["tls_dir"]) / "node.pem").chmod(0o600)
    (Path(v["tls_dir"]) / "ca.crt").write_text(issued.ca_pem)
    paths = _render_all(v, root)
    for port in (v["storage_port"], v["native_port"], v["exporter_port"]):
        _port_free(ADDRESS, port)
    _port_free("127.0.0.1", v["jmx_port"])

    # exactly the unit's command line
    unit = paths[UNIT].read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    out = open(root / "stdout.log", "w")
    # as systemd runs it: an unset $CASSANDRA_REPLACE (no replace.env) is no argument at all
    argv = [w for w in shlex.split(exec_start.removeprefix("ExecStart=")) if w != "$CASSANDRA_REPLACE"]
    proc = subprocess.Popen(argv, cwd=v["data_dir"],
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    system_log = Path(v["log_dir"]) / "system.log"
    started = time.monotonic()
    try:
        while "Startup complete" not in (system_log.read_text() if system_log.exists() else ""):
            if proc.poll() is not None or time.monotonic() - started > START_TIMEOUT:
                tail = (root / "stdout.log").read_text()[-3000:]
                pytest.fail(f"CassandraDaemon did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(1)
        yield {"v": v, "paths": paths, "root": root, "ca": issued.ca_pem, "proc": proc,
               "startup_seconds": time.monotonic() - started}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def _cluster(node, user, password, tls=True):
    ctx = auth.tls_context(str(Path(node["v"]["tls_dir"]) / "ca.crt")) if tls else None
    return auth.node_cluster(ADDRESS, node["v"]["native_port"], ctx, user, password)


def _connect(node, user, password, tls=True):
    cluster = _cluster(node, user, password, tls)
    try:
        return cluster.connect().execute("SELECT release_version FROM system.local").one().release_version
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def secured(node):
    """The deploy's procedure against the real node: first run does the work, a second nothing."""
    ca_file = str(Path(node["v"]["tls_dir"]) / "ca.crt")
    args = (ADDRESS, node["v"]["native_port"], ca_file, "admin", PW["admin"], node["v"]["datacenter"], 1)
    first = auth.secure(*args)
    second = auth.secure(*args)
    return first, second


def test_installed_jars_match_the_manifest(node):
    home = Path(node["v"]["home"])
    cb.verify_tree(home)
    assert subprocess.run(["sh", "-c", cb.verify_command(str(home))]).returncode == 0
    assert (home / "lib" / f"cassandra-all-{cb.CASSANDRA_VERSION}.jar").exists()


def test_nodetool_wrapper_reports_the_node_up_and_normal(node):
    result = subprocess.run([str(node["paths"][NODETOOL]), "status"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if ADDRESS in line)
    assert line.startswith("UN ") and line.split()[-1] == node["v"]["rack"]
    assert f"Datacenter: {node['v']['datacenter']}" in result.stdout
    assert PW["jmx"] not in open(node["paths"][NODETOOL]).read()


def test_jmx_refuses_a_wrong_password_and_listens_on_loopback_only(node):
    bad = node["root"] / "bad.password"
    bad.write_text(f"{node['v']['jmx_user']} wrong\n")
    wrapper = node["paths"][NODETOOL].read_text().replace(str(Path(node["v"]["conf_dir"]) / "jmxremote.password"),
                                                          str(bad))
    result = subprocess.run(["sh", "-c", wrapper, "nodetool", "status"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Invalid username or password" in result.stdout + result.stderr
    with socket.socket() as s:
        assert s.connect_ex((ADDRESS, node["v"]["jmx_port"])) != 0


def test_default_superuser_replaced_and_system_auth_replicated(node, secured):
    first, second = secured
    assert "created superuser admin" in first and "disabled the default superuser cassandra" in first
    assert f"replicated system_auth ({node['v']['datacenter']}: 1)" in first
    assert second == []
    assert _connect(node, "admin", PW["admin"]) == cb.CASSANDRA_VERSION
    # the credentials cache (credentials_validity: 2000ms) may let the old login pass briefly
    deadline = time.monotonic() + 15
    while True:
        try:
            _connect(node, "cassandra", "cassandra")
        except NoHostAvailable as e:
            # a dict of host -> error: the login itself was refused. A list: the control connection
            # got in on a cached login and the pool did not; not conclusive yet, so try again.
            if isinstance(e.errors, dict):
                assert any(isinstance(err, AuthenticationFailed) for err in e.errors.values()), e.errors
                break
        assert time.monotonic() < deadline, "cassandra/cassandra still logs in 15 s after it was disabled"
        time.sleep(1)


def test_wrong_password_refused(node, secured):
    with pytest.raises(NoHostAvailable) as e:
        _connect(node, "admin", "not-the-password")
    assert any(isinstance(err, AuthenticationFailed) for err in e.value.errors.values())


def test_client_without_tls_refused(node, secured):
    with pytest.raises(NoHostAvailable):
        _connect(node, "admin", PW["admin"], tls=False)


def test_client_that_does_not_trust_the_stack_ca_refused(node):
    other = CertificateAuthority.own(node["root"] / "other-pki", "other")
    cluster = auth.node_cluster(ADDRESS, node["v"]["native_port"],
                                ssl.create_default_context(cafile=str(other.cert_path)), "admin", PW["admin"])
    try:
        with pytest.raises(NoHostAvailable):
            cluster.connect()
    finally:
        cluster.shutdown()


def test_internode_port_demands_a_client_certificate(node):
    """require_client_auth: a TLS handshake without a certificate is refused."""
    ctx = ssl.create_default_context(cafile=str(Path(node["v"]["tls_dir"]) / "ca.crt"))
    with socket.create_connection((ADDRESS, node["v"]["storage_port"]), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            with ctx.wrap_socket(raw, server_hostname=ADDRESS) as tls:
                # TLS 1.3 reports the missing certificate on the first read
                tls.sendall(b"\0" * 8)
                tls.recv(1)


def test_exporter_agent_serves_cassandra_metrics_on_the_listen_address(node):
    url = f"http://{ADDRESS}:{node['v']['exporter_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "cassandra_failuredetector_downendpointcount 0.0" in text
    assert "cassandra_storage_load" in text and "jvm_memory_used_bytes" in text


def test_the_exporter_includes_every_mbean_its_rules_read():
    """The agent walks only the MBeans in includeObjectNames (walking them all costs a second of CPU per
    scrape): every MBean a rule matches (its literal keys, each alternative of `(a|b)` spelled out) is
    matched by one of them."""
    import itertools
    import re

    topo, host = _prod_node()
    config = yaml.safe_load(render("cassandra", "/etc/cassandra/jmx-exporter.yaml", **_vars(host_data("prod", host, "cassandra"))))
    includes = []
    for name in config["includeObjectNames"]:
        domain, keys = name.split(":")
        props = dict(p.split("=") for p in keys.split(",") if p != "*")
        includes.append((domain, props, keys.endswith("*")))
    missing = []
    for rule in config["rules"]:
        domain, keys = re.fullmatch(r"([\w.]+)<([^>]*)>.*", rule["pattern"]).groups()
        options = []
        for key, value in (p.split("=", 1) for p in keys.split(", ")):
            alternatives = re.fullmatch(r"\(([\w|]+)\)", value)
            if value == r"(\S+)":
                continue  # any value: matched by a wildcard include
            options.append([(key, v) for v in (alternatives.group(1).split("|") if alternatives else [value])])
        for combo in itertools.product(*options):
            mbean = dict(combo)
            if not any(d == domain and all(mbean.get(k) == v for k, v in props.items()) and (wild or props == mbean)
                       for d, props, wild in includes):
                missing.append(f"{domain}:{mbean}")
    assert missing == [], missing


def test_heap_and_secret_file_modes_as_rendered(node):
    cmdline = Path(f"/proc/{node['proc'].pid}/cmdline").read_bytes().split(b"\0")
    assert PW["jmx"].encode() not in b" ".join(cmdline)
    options = node["paths"]["/etc/cassandra/jvm.options"].read_text().splitlines()
    assert "-Xms512m" in options and "-Xmx512m" in options
    for name in ("jmxremote.password", "jmxremote.access"):
        assert (Path(node["v"]["conf_dir"]) / name).stat().st_mode & 0o077 == 0


def test_unit_passes_systemd_analyze_verify(tmp_path):
    _require("systemd-analyze", "systemd")
    topo, host = _prod_node()
    unit = tmp_path / "cassandra.service"
    unit.write_text(render("cassandra", UNIT, **_vars(host_data("prod", host, "cassandra"))))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = unit.read_text()
    for line in ("User=cassandra", "LimitNOFILE=1048576", "LimitMEMLOCK=infinity",
                 "RequiresMountsFor=/var/lib/cassandra",
                 "EnvironmentFile=-/etc/cassandra/replace.env",
                 "ExecStart=/usr/bin/java @/etc/cassandra/jvm17.options @/etc/cassandra/jvm.options "
                 "$CASSANDRA_REPLACE org.apache.cassandra.service.CassandraDaemon"):
        assert line in text.splitlines()


def test_prod_node_config_as_rendered():
    topo, host = _prod_node()
    v = _vars(host_data("prod", host, "cassandra"))
    conf = yaml.safe_load(render("cassandra", "/etc/cassandra/cassandra.yaml", **v))
    seeds = conf["seed_provider"][0]["parameters"][0]["seeds"].split(",")
    nodes = topo.cluster("cassandra").nodes
    assert seeds == [topo.host(n.host).private_ip for n in nodes if n.seed] and len(seeds) < len(nodes)
    assert conf["listen_address"] == conf["rpc_address"] == host.private_ip
    assert conf["allocate_tokens_for_local_replication_factor"] == topo.cluster("cassandra").replication_factor == 3
    assert conf["num_tokens"] == 16 and conf["endpoint_snitch"] == "GossipingPropertyFileSnitch"
    assert (conf["authenticator"], conf["authorizer"]) == ("PasswordAuthenticator", "CassandraAuthorizer")
    server, client = conf["server_encryption_options"], conf["client_encryption_options"]
    assert server["internode_encryption"] == "all" and server["require_client_auth"] and not server["optional"]
    assert client["enabled"] and not client["optional"]
    rackdc = render("cassandra", "/etc/cassandra/cassandra-rackdc.properties", **v).splitlines()
    rack = next(n.rack for n in topo.cluster("cassandra").nodes if n.host == host.name)  # rack1: fewer locations than replicas
    assert f"dc={topo.cluster('cassandra').datacenter}" in rackdc and f"rack={rack}" in rackdc
    options = render("cassandra", "/etc/cassandra/jvm.options", **v).splitlines()
    assert "-Xmx512m" in options and "-Dcassandra.jmx.local.port=7199" in options
    assert f"-javaagent:/opt/cassandra/agents/{cb.agent_jar()}={host.private_ip}:7070:/etc/cassandra/jmx-exporter.yaml" \
        in options


@pytest.mark.parametrize("stack", ["prod", "staging"])
def test_repair_timers_run_weekly_on_a_different_weekday_per_node(stack):
    topo = topology(stack)
    calendars = []
    for node in topo.cluster("cassandra").nodes:
        data = host_data(stack, node.host, "cassandra")
        lines = render("cassandra", REPAIR_TIMER, **repair_timer_vars(data)).splitlines()
        calendar = [line for line in lines if line.startswith("OnCalendar=")]
        assert len(calendar) == 1 and calendar[0].endswith(" *-*-* 03:00:00")
        calendars.append(calendar[0])
    assert calendars[0] == "OnCalendar=Mon *-*-* 03:00:00"
    assert len(set(calendars)) == len(topo.cluster("cassandra").nodes) == 3
    service = render("cassandra", REPAIR_SERVICE).splitlines()
    assert any(line.startswith("ExecStart=") and "repair -pr" in line for line in service)
