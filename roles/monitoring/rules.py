"""Prometheus alert rules: the stack's own and the external uptime Prometheus's.

Pure Python (no pyinfra): the deploy and the template tests both take the variables from here.
"""

from __future__ import annotations

from typing import Any

RULES_FILE = "/etc/prometheus/rules/hastack.rules.yml"
UPTIME_RULES_FILE = "/etc/prometheus/rules/uptime.rules.yml"

# every alert of both files (tests check this against the rendered rules and their promtool tests)
ALERTS: dict[str, str] = {
    "HostDown": "A host's node exporter does not answer: the host is down or unreachable.",
    "TargetDown": "An exporter other than the node exporter is down while its host is up.",
    "DiskAlmostFull": "A real filesystem is more than 85 % full.",
    "DiskFillingUp": "A filesystem will be full within 24 h at the rate of the last 6 h.",
    "RebootRequired": "A host needs a reboot to apply installed updates.",
    "HostFilesChanged": "Files differ from the host's integrity baseline (AIDE) or from their packages (debsums).",
    "IntegrityCheckTooOld": "A host's daily file integrity check has not run to its end for 26 h.",
    "LoadBalancerFloatingIPOwners": "Not exactly one load balancer holds the floating IP.",
    "FloatingIPMoved": "The floating IP moved to another load balancer in the last 10 minutes.",
    "FloatingIPWithheld": "A MASTER load balancer has not taken the floating IP from its peer for a minute.",
    "AppBackendNoHealthyServer": "HAProxy has no healthy app server: the site is down.",
    "AppServerDown": "An app server is not UP in HAProxy.",
    "MariaDBDown": "A MariaDB server does not answer its exporter.",
    "MariaDBNoWriter": "No MariaDB master accepts writes, and writes are not held for a restore.",
    "MariaDBTwoWriters": "Both MariaDB masters accept writes (split brain).",
    "MariaDBReplicationStopped": "A MariaDB replication IO or SQL thread is not running.",
    "MariaDBReplicationLag": "A MariaDB master is more than 10 s behind its peer.",
    "MariaDBMasterFenced": "A MariaDB master powered off its peer and the peer is still off after 5 minutes.",
    "MariaDBWitnessUnreachable": "A MariaDB master has not reached the witness for 2 minutes: no failover is possible.",
    "RedisDown": "A Redis server does not answer its exporter.",
    "RedisNoPrimary": "No Redis server is primary.",
    "RedisSentinelQuorumLost": "Fewer Sentinels answer than a failover needs.",
    "CassandraNodeDown": "A Cassandra node is down or not in NORMAL mode.",
    "CassandraNodeSeesPeersDown": "A Cassandra node sees peers down.",
    "CassandraPendingCompactionsGrowing": "A Cassandra node's compaction backlog is large and growing.",
    "CassandraDroppedMessages": "A Cassandra node keeps dropping messages (overloaded).",
    "CertificateExpiringSoon": "An internal TLS certificate or the site's expires within 21 days.",
    "SiteDown": "The public site fails its HTTPS probe.",
    "SiteSlow": "The public site takes more than 2 s to answer, for 5 minutes.",
    "SiteCertificateExpiring": "The public site's certificate expires within 21 days.",
    "SiteHTTPRedirectBroken": "Plain http:// does not redirect to the https site.",
    "BackupTooOld": "A daily backup kind has not succeeded for 26 h, or never has.",
    "BinlogShippingStale": "A MariaDB master has not shipped its binlogs for 5 minutes, or never has.",
    "BackupFailed": "The last run of a daily backup kind failed.",
    "RestoreVerificationFailed": "The last weekly test restore failed.",
    "RestoreVerificationTooOld": "No test restore has succeeded for 8 days.",
}


def rules_vars(sentinel_quorum: int, mariadb_hosts: int, cassandra_nodes: int) -> dict[str, Any]:
    """hastack.rules.yml: sentinel_quorum 0 leaves the Sentinel rule out (a stack without Sentinels)."""
    return {"sentinel_quorum": int(sentinel_quorum), "mariadb_hosts": int(mariadb_hosts),
            "cassandra_nodes": int(cassandra_nodes)}


def uptime_rules_vars(site_url: str) -> dict[str, Any]:
    return {"site_url": site_url}
