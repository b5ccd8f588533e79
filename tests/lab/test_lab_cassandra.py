"""The Cassandra ring on the lab's machines: formed by the converge, secured,
fault tolerant at QUORUM, grown by a node and shrunk again."""

import pytest

from hastack.converge import converge
from hastack.lab import Lab
from hastack.lab.layout import lab_topology
from tests.support import cassandra_ring


@pytest.fixture(scope="module")
def ring(lab):
    nodes = [n.host for n in lab.topo.cluster("cassandra").nodes]
    cassandra_ring.cql(lab, nodes[0], cassandra_ring.KEYSPACE)
    return lab, nodes


def status(lab, node):
    return cassandra_ring.ring(lab).status(node)


def test_every_node_up_normal_in_every_view(ring):
    lab, nodes = ring
    addresses = {lab.topo.host(n).private_ip for n in nodes}
    for node in nodes:
        view = status(lab, node)
        assert set(view) == addresses and all(m.state == "UN" for m in view.values()), (node, view)
        assert {m.rack for m in view.values()} == {n.rack for n in lab.topo.cluster("cassandra").nodes}
    out = lab.exec(nodes[0], ["nodetool", "describecluster"]).stdout
    assert "hastack-lab" in out and "lab" in out


def test_clients_need_tls_and_the_generated_superuser(ring):
    lab, nodes = ring
    result = cassandra_ring.client(lab, nodes[0], "check", lab.topo.host(nodes[1]).private_ip)
    assert result["admin over TLS"] == "accepted"
    assert result["cassandra/cassandra"].startswith("refused")  # the default superuser is gone
    assert result["admin without TLS"].startswith("refused")
    assert result["admin, wrong password"].startswith("refused")
    rows = cassandra_ring.cql(lab, nodes[0], "SELECT replication FROM system_schema.keyspaces "
                                             "WHERE keyspace_name = 'system_auth'")
    assert "'lab': '3'" in rows[0][0] and "NetworkTopologyStrategy" in rows[0][0]
    # JMX answers on loopback only, and only with the password (nodetool's wrapper has it)
    jmx = lab.exec(nodes[0], ["ss", "-Htln", "sport = :7199"]).stdout
    assert "127.0.0.1:7199" in jmx and lab.topo.host(nodes[0]).private_ip not in jmx


def test_quorum_keeps_succeeding_with_one_node_stopped(ring):
    lab, nodes = ring
    result = cassandra_ring.quorum_during_stop(lab, victim=nodes[-1], via=nodes[0], seconds=25, stop_at=4,
                                               start_at=16)
    assert result["requests"] > 150 and result["failed"] == 0, result
    cassandra_ring.ring(lab).wait_normal(nodes[-1], timeout=300)


def test_data_written_while_a_node_is_down_is_on_it_after_repair(ring):
    lab, nodes = ring
    victim = nodes[-1]
    lab.exec(victim, ["systemctl", "stop", "cassandra.service"])
    try:
        cassandra_ring.cql(lab, nodes[0], "INSERT INTO hastack_probe.kv (k, v) "
                                          "VALUES (11111111-1111-1111-1111-111111111111, 'while-down')")
    finally:
        lab.exec(victim, ["systemctl", "start", "cassandra.service"])
    cassandra_ring.ring(lab).wait_normal(victim, timeout=300)
    repair = lab.exec(victim, ["nodetool", "repair", "--full", "hastack_probe"])
    assert repair.returncode == 0, repair.stdout[-500:] + repair.stderr[-500:]
    # read at ONE from the returned node alone: only its own replica can answer
    row = cassandra_ring.cql(lab, victim, "SELECT v FROM hastack_probe.kv WHERE k = 11111111-1111-1111-1111-111111111111",
                             consistency="ONE")
    assert row == [["while-down"]]


def test_a_fourth_node_joins_with_data_and_decommissioning_it_returns_to_three(ring):
    lab, nodes = ring
    cassandra_ring.cql(lab, nodes[0], "; ".join(f"INSERT INTO hastack_probe.kv (k, v) VALUES (uuid(), 'grow-{i}')"
                                                for i in range(200)))
    big = Lab("lab", topo=lab_topology("lab", counts={"cassandra": 4}), log=lambda m: None)
    new = next(n.host for n in big.topo.cluster("cassandra").nodes if n.host not in nodes)
    try:
        result = big.up(converge=False)
        assert "boot" in result["timings"]
        report = converge(big.inventory_entries())
        assert report.ok, {n: r.failed for n, r in report.hosts.items() if r.failed}
        assert "Cassandra ring: joined the ring" in report.hosts[new].changed_operations
        view = cassandra_ring.ring(big, big.topo).status(nodes[0])
        assert len(view) == 4 and all(m.state == "UN" for m in view.values()), view
        # ranges streamed to it: it holds data of the keyspace, and answers at ONE from its own replicas
        load = big.exec(new, ["nodetool", "tablestats", "hastack_probe.kv"]).stdout
        assert "Number of partitions (estimate): 0" not in load, load
        again = converge(big.inventory_entries())
        assert again.changes == 0, {n: r.changed_operations for n, r in again.hosts.items() if r.changed}

        cassandra_ring.ring(big, big.topo).decommission(new, replication_factor=3)
        view = cassandra_ring.ring(lab).status(nodes[0])
        assert len(view) == 3 and all(m.state == "UN" for m in view.values()), view
    finally:
        big.machine(new).remove()
    # back to the three-node config: the hosts forget the fourth, then all is quiet again
    assert converge(lab.inventory_entries()).ok
    again = converge(lab.inventory_entries())
    assert again.changes == 0, {n: r.changed_operations for n, r in again.hosts.items() if r.changed}
