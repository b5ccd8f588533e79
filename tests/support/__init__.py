"""What the lab tests and the measurement scripts (scripts/) share to drive and
observe a running lab. Test support only: nothing here is part of the product.

  lab             polling, the application through the floating IP, TCP reachability
  probe           a client that requests a URL at a fixed interval (runs in the internet namespace)
  failover        the load balancers: keepalived state, the floating IP's owner, a kill under load
  mariadb_pair    the MariaDB pair: the writer, replication, a writer kill under a write stream
  cassandra_ring  the Cassandra ring: the orchestrator on the lab, CQL through a node
  cql_client      the CQL client uploaded to a Cassandra machine and run there
"""
