"""The witness: the third vote of each pair (the MariaDB masters, the load
balancers). It runs on the monitoring host (roles/monitoring/witness_server.py);
this module is what its clients share: where it is, the port, and the mutual
TLS files every participant holds.

Why a third vote: two machines that lose sight of each other cannot tell a
dead peer from a cut link. With the witness, a side acts only with a
majority: a master promotes only when the witness grants it the next writer
epoch, and a load balancer takes the floating IP from its peer only when the
witness cannot reach that peer either.
"""

from __future__ import annotations

import json

from pyinfra import host

from roles.tls_files import issue, put_tls_files

WITNESS_PORT = 9107
TLS_DIR = "/etc/hastack/witness"
CLIENT_FILES = ("client.crt", "client.key", "ca.crt")
SERVER_FILES = ("server.crt", "server.key", "ca.crt")
ACCESS_DIR = "/etc/hastack-witness"
ACCESS_FILE = f"{ACCESS_DIR}/admins.json"


def access_list_json(admins) -> str:
    """The stack's admins and their keys, as the witness hands them to an access gate."""
    return json.dumps({"admins": {a["name"]: [a["ssh_key"]] for a in admins}}, indent=2, sort_keys=True) + "\n"


def client_data(topo) -> dict:
    """Host data of a witness client: the monitoring host's name (its certificate's) and private address."""
    mon = topo.hosts_with_role("monitoring")[0]
    return {"witness_name": mon.name, "witness_ip": mon.private_ip, "witness_port": WITNESS_PORT}


def client_config() -> dict:
    """The witness part of an agent's JSON configuration."""
    d = host.data
    return {"witness_name": d.witness_name, "witness_ip": d.witness_ip, "witness_port": d.witness_port,
            "witness_cert": f"{TLS_DIR}/{CLIENT_FILES[0]}", "witness_key": f"{TLS_DIR}/{CLIENT_FILES[1]}",
            "witness_ca": f"{TLS_DIR}/{CLIENT_FILES[2]}"}


def put_client_tls() -> list:
    """This host's client certificate for the witness (its name is its identity there); root only."""
    issued = issue(f"witness-{host.name}", [f"{TLS_DIR}/{CLIENT_FILES[0]}", f"{TLS_DIR}/{CLIENT_FILES[1]}"],
                   dns=[host.name], client=True)
    return put_tls_files("Witness client", TLS_DIR, "root", issued, dir_mode="0700", names=CLIENT_FILES)
