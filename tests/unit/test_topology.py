"""The topology model: good stacks produce the expected hosts, bad ones fail with clear messages."""

import copy
import ipaddress
from pathlib import Path

import pytest

from hastack.stackfile import available_stacks, load_stack
from hastack.model import TopologyError, load

SECRETS = {"hastack:failoverToken", "hastack:secretSeed", "hastack:ca"}


def problems_of(config, stack="prod", secrets=SECRETS):
    with pytest.raises(TopologyError) as exc:
        load(stack, config, secret_keys=secrets)
    return exc.value.problems


def only_problem(config, **kw):
    problems = problems_of(config, **kw)
    assert len(problems) == 1, problems
    return problems[0]


# ------------------------------------------------------------------ good stacks


@pytest.mark.parametrize("stack", ["prod", "staging", "dr", "example"])
def test_every_stack_file_is_valid(stack):
    assert stack in available_stacks()
    topo = load_stack(stack)
    assert len(topo.hosts) >= 10


def test_lab_stack_gets_generated_admin_keys(tmp_path):
    from hastack.lab.layout import Paths, lab_topology
    paths = Paths(tmp_path)
    topo = lab_topology("lab", paths)
    assert [a.name for a in topo.admins] == ["labadmin", "labops"]
    assert topo.admins[0].ssh_key == (tmp_path / "ssh/labadmin.pub").read_text().strip()
    assert oct((tmp_path / "ssh/labadmin").stat().st_mode & 0o777) == "0o600"
    # keys are generated once and reused
    assert lab_topology("lab", paths).admins == topo.admins
    assert [a.name for a in lab_topology("lab", paths, drop_admins=("labops",)).admins] == ["labadmin"]


def test_prod_shape():
    topo = load_stack("prod")
    counts = {r: len(topo.hosts_with_role(r)) for r in topo.roles_in_use}
    assert counts == {"loadbalancer": 2, "app": 3, "mariadb": 2, "redis": 2, "cassandra": 3, "monitoring": 1}
    # spread over both German locations, every role that has two hosts uses both
    for role in ("loadbalancer", "app", "mariadb", "redis", "cassandra"):
        assert {h.location for h in topo.hosts_with_role(role)} == {"nbg1", "fsn1"}, role
    names = [h.name for h in topo.hosts]
    assert len(set(names)) == len(names)
    assert names[:2] == ["prod-lb1", "prod-lb2"]


def test_private_ips_are_unique_inside_the_subnet_and_stable():
    topo = load_stack("prod")
    subnet = ipaddress.ip_network(topo.subnet)
    ips = [ipaddress.ip_address(h.private_ip) for h in topo.hosts]
    assert len(set(ips)) == len(ips)
    assert all(ip in subnet for ip in ips)
    assert topo.host("prod-db1").private_ip == "10.20.1.60"


def test_growing_one_role_does_not_renumber_another(prod_config):
    before = load("prod", prod_config, SECRETS)
    prod_config["roles"]["app"]["count"] = 10
    prod_config["roles"]["cassandra"]["count"] = 6
    after = load("prod", prod_config, SECRETS)
    for host in before.hosts:
        assert after.host(host.name).private_ip == host.private_ip
        assert after.host(host.name).location == host.location


def test_mariadb_pair_facts():
    topo = load_stack("prod")
    assert [(n.server_id, n.gtid_domain_id, n.auto_increment_offset) for n in topo.cluster("mariadb").nodes] == [(1, 1, 1), (2, 2, 2)]
    assert topo.cluster("mariadb").auto_increment_increment == 2
    data = topo.host_data(topo.host("prod-db2"))
    assert data["mariadb_peer"] == "prod-db1" and data["auto_increment_offset"] == 2


def test_cassandra_seeds_one_per_rack_never_every_node(prod_config):
    topo = load_stack("prod")
    seeds = [n for n in topo.cluster("cassandra").nodes if n.seed]
    # two locations, RF 3: Cassandra's token allocation needs 1 rack or at least RF racks
    assert {n.rack for n in topo.cluster("cassandra").nodes} == {"rack1"}
    assert sorted(topo.host(n.host).location for n in seeds) == ["fsn1", "nbg1"]  # seeds in both locations
    three = copy.deepcopy(prod_config)
    three["locations"] = ["nbg1", "fsn1", "hel1"]
    spread = load("prod", three, SECRETS)
    assert {n.rack for n in spread.cluster("cassandra").nodes} == {"nbg1", "fsn1", "hel1"}
    assert len([n for n in spread.cluster("cassandra").nodes if n.seed]) == 2
    prod_config["roles"]["cassandra"]["count"] = 9
    big = load("prod", prod_config, SECRETS)
    seeds = [n for n in big.cluster("cassandra").nodes if n.seed]
    assert len(seeds) == 2 and len(big.cluster("cassandra").nodes) == 9
    # a single location: two seeds in the one rack, not all three nodes
    staging = load_stack("staging")
    assert sum(n.seed for n in staging.cluster("cassandra").nodes) == 2 and len(staging.cluster("cassandra").nodes) == 3


def test_redis_primary_replica_and_three_sentinels():
    topo = load_stack("prod")
    assert topo.cluster("redis").primary == "prod-redis1"
    assert topo.cluster("redis").replicas == ("prod-redis2",)
    assert topo.cluster("redis").sentinels == ("prod-redis1", "prod-redis2", "prod-mon1")
    assert load_stack("staging").cluster("redis").sentinels == ()  # one Redis host: no failover to vote on


def test_floating_ip_home_and_monitoring_host():
    topo = load_stack("prod")
    assert topo.floating_ip_home == "nbg1"
    assert topo.hosts_with_role("monitoring")[0].name == "prod-mon1"


def test_database_ports_are_private_and_only_for_their_clients():
    topo = load_stack("prod")
    app_ips = {f"{h.private_ip}/32" for h in topo.hosts_with_role("app")}
    db_ips = {f"{h.private_ip}/32" for h in topo.hosts_with_role("mariadb")}
    lb_ips = {f"{h.private_ip}/32" for h in topo.hosts_with_role("loadbalancer")}
    mysql = next(r for r in topo.host_rules(topo.host("prod-db1")) if r.port.port == 3306)
    assert set(mysql.cidrs) == app_ips | db_ips
    assert not set(mysql.cidrs) & lb_ips
    for role in ("mariadb", "redis", "cassandra", "app", "monitoring"):
        public = topo.public_rules(role)
        assert [r.port.port for r in public] == [22], role
    lb_public = {r.port.port: r.cidrs for r in topo.public_rules("loadbalancer")}
    assert lb_public == {22: ("203.0.113.0/24",), 80: ("0.0.0.0/0", "::/0"), 443: ("0.0.0.0/0", "::/0")}


def test_node_exporter_only_from_monitoring():
    topo = load_stack("prod")
    mon = f"{topo.host(topo.hosts_with_role('monitoring')[0].name).private_ip}/32"
    for host in topo.hosts:
        rule = next(r for r in topo.host_rules(host) if r.port.name == "node-exporter")
        assert rule.cidrs == (mon,)


# ------------------------------------------------------------------ bad stacks


def test_two_cassandra_nodes_refused(prod_config):
    prod_config["roles"]["cassandra"]["count"] = 2
    problems = problems_of(prod_config)
    assert problems == ["hastack:roles.cassandra.count = 2: must be at least 3 and at most 60"]


def test_fewer_cassandra_nodes_than_replication_factor(prod_config):
    prod_config["cassandra"]["replicationFactor"] = 5
    assert only_problem(prod_config) == (
        "hastack:roles.cassandra.count = 3: fewer nodes than hastack:cassandra.replicationFactor (5); "
        "give at least 5 nodes or lower the replication factor")


@pytest.mark.parametrize("count", [1, 3])
def test_mariadb_must_be_a_pair(prod_config, count):
    prod_config["roles"]["mariadb"]["count"] = count
    assert only_problem(prod_config) == f"hastack:roles.mariadb.count = {count}: must be exactly 2: a master-master pair"


@pytest.mark.parametrize("count", [1, 3])
def test_loadbalancers_must_be_two(prod_config, count):
    prod_config["roles"]["loadbalancer"]["count"] = count
    assert only_problem(prod_config) == (
        f"hastack:roles.loadbalancer.count = {count}: must be exactly 2: one active, one standby sharing the floating IP")


def test_subnet_outside_ip_range(prod_config):
    prod_config["network"]["subnet"] = "10.99.1.0/24"
    assert only_problem(prod_config) == "hastack:network.subnet = '10.99.1.0/24': must lie inside hastack:network.ipRange (10.20.0.0/16)"


def test_public_ip_range_refused(prod_config):
    prod_config["network"]["ipRange"] = "8.8.0.0/16"
    problem = only_problem(prod_config)
    assert problem.startswith("hastack:network.ipRange = '8.8.0.0/16': not a private range; use one inside 10.0.0.0/8")


def test_overlapping_lab_and_private_ranges():
    import copy
    from hastack.stackfile import hastack_config, read_stack_file
    config = copy.deepcopy(hastack_config(read_stack_file("lab")[0]))
    for admin in config["admins"]:
        admin["sshKey"] = load_stack("prod").admins[0].ssh_key
    config["lab"]["publicRange"] = "10.77.0.0/24"
    config["lab"]["floatingIp"] = "10.77.0.100"
    problems = problems_of(config, stack="lab", secrets=set())
    assert ("hastack:lab.publicRange = '10.77.0.0/24': overlaps hastack:network.ipRange (10.77.0.0/16); "
            "choose ranges that do not overlap") in problems


def test_malformed_cidr(prod_config):
    prod_config["network"]["subnet"] = "10.20.1.0/33"
    assert only_problem(prod_config).startswith("hastack:network.subnet = '10.20.1.0/33': not a network in CIDR form")


def test_unknown_location(prod_config):
    prod_config["locations"] = ["nbg1", "ber1"]
    assert only_problem(prod_config) == (
        "hastack:locations[1] = 'ber1': unknown location; valid: fsn1, nbg1, hel1, ash, hil, sin")


def test_locations_in_two_network_zones(prod_config):
    prod_config["locations"] = ["nbg1", "ash"]
    assert "span network zones ['eu-central', 'us-east']" in only_problem(prod_config)


def test_unknown_server_type(prod_config):
    prod_config["roles"]["app"]["serverType"] = "cx99"
    problem = only_problem(prod_config)
    assert problem.startswith("hastack:roles.app.serverType = 'cx99': unknown server type; valid: cax11")


def test_no_admins(prod_config):
    prod_config["admins"] = []
    assert only_problem(prod_config) == (
        "hastack:admins = []: at least one admin with a name and an SSH public key is required (SSH is key-only)")


def test_mangled_admin_key(prod_config):
    prod_config["admins"][0]["sshKey"] = "ssh-ed25519 AAAAC3NzaC1yc2EAAAADAQABAAABAQ alice"
    assert "hastack:admins[0].sshKey" in only_problem(prod_config)


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0"])
def test_ssh_from_everywhere_refused(prod_config, cidr):
    prod_config["adminCidrs"] = ["203.0.113.0/24", cidr]
    assert only_problem(prod_config) == (
        f"hastack:adminCidrs[1] = '{cidr}': would open SSH to the whole internet; "
        "list your office or VPN ranges instead, e.g. 203.0.113.0/24")


def test_duplicate_host_names(prod_config):
    prod_config["roles"]["redis"]["names"] = ["prod-cache1", "prod-db1"]
    prod_config["roles"]["mariadb"]["names"] = ["prod-db1", "prod-db2"]
    assert only_problem(prod_config) == (
        "hastack:roles.redis.names: host name 'prod-db1' is also used by role mariadb; host names must be unique")


def test_missing_required_secret(prod_config):
    assert only_problem(prod_config, secrets={"hastack:secretSeed", "hastack:ca"}) == (
        "hastack:failoverToken: required secret is not set; run `pulumi config set --secret hastack:failoverToken <value>`")


def test_missing_ca_points_to_ca_store(prod_config):
    assert only_problem(prod_config, secrets={"hastack:secretSeed", "hastack:failoverToken"}) == (
        "hastack:ca: required secret is not set; run `hastack ca store --stack prod`")


def test_secret_in_plain_text_refused(prod_config):
    prod_config["failoverToken"] = "abc"
    problems = problems_of(prod_config, secrets=set())
    assert problems[0] == ("hastack:failoverToken: is stored in plain text; remove it and run "
                           "`pulumi config set --secret hastack:failoverToken <value>`")


def test_unknown_role(prod_config):
    prod_config["roles"]["webserver"] = {"count": 2, "serverType": "cx22"}
    assert only_problem(prod_config) == (
        "hastack:roles.webserver: unknown role; valid roles: loadbalancer, app, mariadb, redis, cassandra, monitoring")


def test_unknown_key_names_the_valid_ones(prod_config):
    prod_config["cassandra"]["replication"] = 3
    problem = only_problem(prod_config)
    assert problem.startswith("hastack:cassandra.replication: unknown key; valid keys here: clusterName, datacenter")


def test_wrong_type(prod_config):
    prod_config["roles"]["app"]["count"] = "many"
    assert only_problem(prod_config).startswith("hastack:roles.app.count = 'many': Input should be a valid integer")


def test_every_problem_is_reported_at_once(prod_config):
    prod_config["roles"]["mariadb"]["count"] = 3
    prod_config["adminCidrs"] = ["0.0.0.0/0"]
    prod_config["locations"] = ["nbg1", "ber1"]
    assert len(problems_of(prod_config)) == 3


# ------------------------------------------------------------------ restoring from another stack (hastack:restoreFrom)


def test_restore_from_is_on_the_topology_and_holds_a_new_mariadb_pair():
    dr, prod = load_stack("dr"), load_stack("prod")
    assert dr.restore_from == "prod" and prod.restore_from is None
    for topo, hold in ((dr, True), (prod, False)):
        for host in topo.hosts_with_role("mariadb"):
            assert topo.host_data(host)["mariadb_hold_new_pair"] is hold
        for host in topo.hosts_with_role("app") + topo.hosts_with_role("cassandra"):
            assert "mariadb_hold_new_pair" not in topo.host_data(host)


@pytest.mark.parametrize("value", ["prod", "prod-eu", "acme/hastack/prod", "hastack/prod", "acme/other.project/prod_2"])
def test_restore_from_takes_a_stack_name_or_reference(prod_config, value):
    prod_config["restoreFrom"] = value
    assert load("staging", prod_config, SECRETS).restore_from == value


@pytest.mark.parametrize("value, problem", [
    ("a b", "hastack:restoreFrom = 'a b': must name a stack (e.g. prod) or a Pulumi stack reference "
            "(org/project/stack) of letters, digits, '_', '.' and '-'"),
    ("", "hastack:restoreFrom = '': must name a stack (e.g. prod) or a Pulumi stack reference "
         "(org/project/stack) of letters, digits, '_', '.' and '-'"),
    ("a/b/c/prod", "hastack:restoreFrom = 'a/b/c/prod': must name a stack (e.g. prod) or a Pulumi stack reference "
                   "(org/project/stack) of letters, digits, '_', '.' and '-'"),
    ("acme/hastack/", "hastack:restoreFrom = 'acme/hastack/': must name a stack (e.g. prod) or a Pulumi stack "
                      "reference (org/project/stack) of letters, digits, '_', '.' and '-'"),
    ("prod", "hastack:restoreFrom = 'prod': names this stack (prod); give the stack whose backups this one "
             "restores from, e.g. prod"),
    ("acme/hastack/prod", "hastack:restoreFrom = 'acme/hastack/prod': names this stack (prod); give the stack "
                          "whose backups this one restores from, e.g. prod"),
])
def test_bad_restore_from_is_refused_naming_the_key(prod_config, value, problem):
    prod_config["restoreFrom"] = value
    assert only_problem(prod_config) == problem


def test_restore_from_is_refused_on_a_lab_stack():
    from hastack.stackfile import hastack_config, read_stack_file
    config = copy.deepcopy(hastack_config(read_stack_file("lab")[0]))
    for admin in config["admins"]:
        admin["sshKey"] = load_stack("prod").admins[0].ssh_key
    config["restoreFrom"] = "prod"
    assert only_problem(config, stack="lab", secrets=set()) == (
        "hastack:restoreFrom = 'prod': not possible when hastack:provider is 'lab' (the lab has one bucket only, "
        "its own); remove the key")


def test_restore_from_problems_come_with_the_others(prod_config):
    prod_config["restoreFrom"] = "prod"
    prod_config["roles"]["mariadb"]["count"] = 3
    problems = problems_of(prod_config)
    assert sorted(p.split(" = ")[0] for p in problems) == ["hastack:restoreFrom", "hastack:roles.mariadb.count"]


# ------------------------------------------------------------------ role settings (hastack:settings)


def test_role_settings_reach_the_hosts_of_that_role_only(prod_config):
    prod_config["settings"] |= {"mariadb": {"failoverAfter": 3}, "cassandra": {"heapMb": 2048}}
    topo = load("prod", prod_config, secret_keys=SECRETS)
    assert topo.host_data(topo.host("prod-db1"))["mariadb_failover_after"] == 3.0
    assert topo.host_data(topo.host("prod-cass1"))["cassandra_heap_mb"] == 2048
    assert "mariadb_failover_after" not in topo.host_data(topo.host("prod-cass1"))
    # settings not given stay with the role's defaults on the host (pyinfra data_defaults)
    assert "mariadb_innodb_buffer_pool_size" not in topo.host_data(topo.host("prod-db1"))


def test_mappings_in_settings_add_to_the_defaults(prod_config):
    prod_config["settings"] |= {"base": {"sshd": {"MaxAuthTries": 2}, "sysctl": {"vm.swappiness": 10}}}
    topo = load("prod", prod_config, secret_keys=SECRETS)
    data = topo.host_data(topo.hosts[0])
    assert data["base_sshd"]["MaxAuthTries"] == 2 and data["base_sshd"]["PasswordAuthentication"] == "no"
    assert data["base_sysctl"]["vm.swappiness"] == 10 and data["base_sysctl"]["net.ipv4.tcp_syncookies"] == 1


@pytest.mark.parametrize("settings, problem", [
    ({"mariadb": {"failoverAfter": 0.2}},
     "hastack:settings.mariadb.failoverAfter = 0.2: Input should be greater than or equal to 1"),
    ({"mariadb": {"failoverSeconds": 2}},
     "hastack:settings.mariadb.failoverSeconds: unknown key; valid keys here: database, innodbBufferPoolSize, failoverAfter"),
    ({"webserver": {}},
     "hastack:settings.webserver: unknown key; valid keys here: base, loadbalancer, app, mariadb, redis, cassandra, monitoring, "
     "sentinel, backup"),
    ({"loadbalancer": {"certificate": "provided"}},
     "hastack:settings.loadbalancer: certificate is 'provided': give certificateFile, the PEM (chain and key) on the operator's machine"),
    ({"loadbalancer": {"certificate": "acme"}},
     "hastack:settings.loadbalancer.certificate = 'acme': Input should be 'internal' or 'provided'"),
    ({"base": {"sshd": {"PasswordAuthentication": "yes"}}},
     "hastack:settings.base.sshd: PasswordAuthentication keep SSH key-only and cannot be changed (changeable: "
     "any other sshd option, e.g. MaxAuthTries)"),
    ({"base": {"sysctl": {"kernel.x": "1\nkernel.y=2"}}},
     "hastack:settings.base.sysctl: kernel.x: '1\\nkernel.y=2' must be a number or a one-line string without '#'"),
    ({"base": {"banner": "Authorised use only \\l on \\n"}},
     "hastack:settings.base.banner = 'Authorised use only \\\\l on \\\\n': the banner is plain text: printable "
     "characters and line breaks, no backslashes"),
    ({"base": {"blockedModules": ["sctp", "usb storage"]}},
     "hastack:settings.base.blockedModules = ['sctp', 'usb storage']: ['usb storage']: kernel module names are "
     "lower-case letters, digits, '_' and '-', e.g. sctp"),
    ({"cassandra": {"version": "4.1.0"}},
     "hastack:settings.cassandra: version '4.1.0': the bundle is locked to 5.0.9 (roles/cassandra/bundle.lock); "
     "another version needs tarballUrl and tarballSha256"),
    ({"app": {"exec": "python3 app.py"}},
     "hastack:settings.app.exec = 'python3 app.py': one line starting with the program's absolute path, "
     "e.g. /usr/bin/python3 /opt/app/main.py"),
    ({"monitoring": {"alertWebhooks": ["ftp://x"]}},
     "hastack:settings.monitoring.alertWebhooks = ['ftp://x']: not http(s) URLs: ftp://x (expected e.g. https://hooks.example.com/alerts)"),
    ({"monitoring": {"alertEmail": None, "alertWebhooks": []}},
     "hastack:settings.monitoring: no receiver for alerts; "
     "give alertWebhooks (a list of http(s) URLs) and/or alertEmail ({to: [name@domain], from: name@domain, smarthost: host:port})"),
    ({"monitoring": {"alertEmail": {"to": ["ops"], "from": "a@b.c", "smarthost": "smtp:25"}}},
     "hastack:settings.monitoring.alertEmail.to = ['ops']: not email addresses: ops (expected name@domain)"),
    ({"monitoring": {"journalRetentionDays": "90d"}},
     "hastack:settings.monitoring.journalRetentionDays = '90d': Input should be a valid integer, unable to parse string as an integer"),
    ({"monitoring": {"journalRetentionDays": 0}},
     "hastack:settings.monitoring.journalRetentionDays = 0: Input should be greater than or equal to 1"),
    ({"monitoring": {"scrapeInterval": "15"}},
     "hastack:settings.monitoring.scrapeInterval = '15': '15' is not a duration: "
     "a number and a unit (ms, s, m, h, d, w, y), e.g. 15s or 30d"),
])
def test_bad_role_settings_are_refused_naming_the_key(prod_config, settings, problem):
    prod_config["settings"] |= settings
    assert problems_of(prod_config) == [problem]


def test_every_setting_is_documented_in_the_example_stack():
    """stacks/Pulumi.example.yaml names every key of hastack:settings, so operators can find them."""
    from roles import all_roles

    text = (Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.example.yaml").read_text()
    for r in all_roles():
        for _name, f in r.settings.model_fields.items():
            assert f"{f.alias}:" in text, f"settings.{r.name}.{f.alias} is not in the example stack"


def test_every_top_level_key_is_documented_in_the_example_stack():
    """stacks/Pulumi.example.yaml names every hastack:<key> (set, or commented out when optional)."""
    from hastack.model.schema import stack_config_model

    text = (Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.example.yaml").read_text()
    for _name, f in stack_config_model().model_fields.items():
        assert f"hastack:{f.alias}:" in text, f"hastack:{f.alias} is not in the example stack"


def test_the_lab_stack_sets_its_overrides_in_its_stack_file():
    from hastack.lab.layout import lab_topology

    topo = lab_topology("lab")
    cass = topo.hosts_with_role("cassandra")[0]
    assert topo.host_data(cass)["cassandra_heap_mb"] == 512
    assert topo.host_data(topo.hosts_with_role("loadbalancer")[0])["lb_reconcile_interval"] == "5s"
