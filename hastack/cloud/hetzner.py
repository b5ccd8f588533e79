"""Hetzner Cloud resources for one stack, all derived from the topology."""

from __future__ import annotations


import pulumi
import pulumi_hcloud as hcloud

from hastack.model import Host, Rule, Topology
from hastack.templating import render_user_data

# Hetzner allows at most 10 servers in one spread placement group.
PLACEMENT_GROUP_SIZE = 10

# Attributes that, changed on a later run, would rebuild a server and lose
# its disk; the converge manages users and keys from then on.
SERVER_IGNORE_CHANGES = ["image", "user_data", "ssh_keys"]


def _int_id(resource: pulumi.CustomResource) -> pulumi.Output[int]:
    return resource.id.apply(int)


def firewall_rule_args(rule: Rule) -> hcloud.FirewallRuleArgs:
    port = rule.port
    return hcloud.FirewallRuleArgs(
        direction="in",
        protocol=port.protocol,
        port=str(port.port) if port.port else None,
        source_ips=list(rule.cidrs),
        description=f"{port.name}: {port.description}"[:255],
    )


class HetznerStack(pulumi.ComponentResource):
    """Network, firewalls, placement groups, servers, volumes and the floating IP."""

    def __init__(self, name: str, topo: Topology, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hastack:hetzner:Stack", name, None, opts)
        self.topo = topo
        child = pulumi.ResourceOptions(parent=self)
        base_labels = {"stack": topo.stack}

        self.ssh_keys = [
            hcloud.SshKey(f"admin-{a.name}", name=f"{topo.stack}-{a.name}", public_key=a.ssh_key,
                          labels=base_labels, opts=child)
            for a in topo.admins
        ]

        self.network = hcloud.Network("network", name=topo.stack, ip_range=topo.ip_range, labels=base_labels,
                                      delete_protection=True, opts=child)
        self.subnet = hcloud.NetworkSubnet("subnet", network_id=_int_id(self.network), type="cloud",
                                           network_zone=topo.network_zone, ip_range=topo.subnet, opts=child)

        self.firewalls: dict[str, hcloud.Firewall] = {}
        self.placement_groups: dict[str, hcloud.PlacementGroup] = {}
        for role in topo.roles_in_use:
            labels = {**base_labels, "role": role}
            self.firewalls[role] = hcloud.Firewall(
                f"firewall-{role}", name=f"{topo.stack}-{role}", labels=labels,
                rules=[firewall_rule_args(r) for r in topo.public_rules(role)], opts=child)
            hosts = topo.hosts_with_role(role)
            for group in range((len(hosts) + PLACEMENT_GROUP_SIZE - 1) // PLACEMENT_GROUP_SIZE):
                key = f"{role}-{group + 1}"
                self.placement_groups[key] = hcloud.PlacementGroup(
                    f"spread-{key}", name=f"{topo.stack}-{key}", type="spread", labels=labels, opts=child)

        self.servers: dict[str, hcloud.Server] = {}
        self.volumes: dict[str, hcloud.Volume] = {}
        for host in topo.hosts:
            self.servers[host.name] = self._server(host, base_labels)

        # The first load balancer holds the IP at creation. Later moves are the
        # failover agent's business: ignoring server_id means a `pulumi up`
        # after a failover never moves the address back.
        self.floating_ip = hcloud.FloatingIp(
            "floating-ip", name=f"{topo.stack}-web", type="ipv4", home_location=topo.floating_ip_home,
            description=f"{topo.stack} web entry point", labels=base_labels, delete_protection=True, opts=child)
        first_lb = topo.floating_ip_hosts[0].name
        self.floating_ip_assignment = hcloud.FloatingIpAssignment(
            "floating-ip-assignment", floating_ip_id=_int_id(self.floating_ip),
            server_id=_int_id(self.servers[first_lb]),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["server_id"]))

        self.register_outputs({
            "floating_ip": self.floating_ip.ip_address,
            "network_id": self.network.id,
        })

    def _server(self, host: Host, base_labels: dict[str, str]) -> hcloud.Server:
        topo = self.topo
        data = topo.placement(host.role).data_volume
        group = (host.index - 1) // PLACEMENT_GROUP_SIZE + 1
        server = hcloud.Server(
            host.name,
            name=host.name,
            server_type=host.server_type,
            image=topo.image,
            location=host.location,
            ssh_keys=[k.id for k in self.ssh_keys],
            labels={**base_labels, "role": host.role},
            placement_group_id=_int_id(self.placement_groups[f"{host.role}-{group}"]),
            firewall_ids=[_int_id(self.firewalls[host.role])],
            networks=[hcloud.ServerNetworkArgs(network_id=_int_id(self.network), ip=host.private_ip)],
            public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=True)],
            user_data=render_user_data(topo, host),
            delete_protection=data,
            rebuild_protection=data,
            shutdown_before_deletion=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.subnet], protect=data,
                                        ignore_changes=SERVER_IGNORE_CHANGES),
        )
        if data:
            volume = hcloud.Volume(
                f"{host.name}-data", name=f"{host.name}-data", size=host.volume_size, location=host.location,
                format="ext4", labels={**base_labels, "role": host.role}, delete_protection=True,
                opts=pulumi.ResourceOptions(parent=self, protect=True))
            hcloud.VolumeAttachment(
                f"{host.name}-data", server_id=_int_id(server), volume_id=_int_id(volume), automount=False,
                opts=pulumi.ResourceOptions(parent=self))
            self.volumes[host.name] = volume
        return server
