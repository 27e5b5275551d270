"""What the DHCP server serves, read once from the inventory and checked with clear errors.

Every network with a `dhcp:` section is served; `networks.NetworkMap` picks a request's.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from plasmaboot.dhcp.leases import AddressScope, FixedHost
from plasmaboot.dhcp.networks import NetworkMap, ServedNetwork
from plasmaboot.inventory import Inventory
from plasmaboot.inventory.models import DhcpMode, Network


class DhcpConfigError(ValueError):
    """The inventory or the arguments do not let DHCP start; the message says how to fix it."""


@dataclass(frozen=True)
class ServingConfig:
    """Everything DHCP answers from: the served networks (one per `dhcp:` section, indexed
    for the per-packet choice of `networks.select`), the fixed hosts, the boot URLs."""

    mode: DhcpMode  # proxy for a proxyDHCP server, else the home network's mode
    server_ip: IPv4Address
    networks: NetworkMap
    domain: str
    fixed: dict[str, FixedHost]
    http_base: str
    chain_when_on_disk: bool

    @property
    def proxy(self) -> bool:
        return self.mode == "proxy"

    @property
    def home(self) -> ServedNetwork:
        """The network of direct clients on an interface no network names: the one holding
        the server's address, else the first served one."""
        return self.networks.home or self.networks.networks[0]

    # The single-network view (the home network), kept for callers of one subnet.
    @property
    def subnet(self) -> IPv4Network:
        return self.home.subnet

    @property
    def pool(self) -> tuple[IPv4Address, IPv4Address] | None:
        return self.home.pool

    @property
    def router(self) -> IPv4Address | None:
        return self.home.router

    @property
    def lease_time(self) -> int:
        return self.home.lease_time

    @property
    def scopes(self) -> list[AddressScope]:
        """One allocator scope per served network, in inventory order."""
        return [AddressScope(n.subnet, n.pool, n.lease_time) for n in self.networks.networks]

    @property
    def reserved(self) -> set[IPv4Address]:
        """Addresses never leased: the server's, every router's and every relay's."""
        reserved = {self.server_ip}
        for net in self.networks.networks:
            reserved |= set(net.relays) | ({net.router} if net.router else set())
        return reserved

    @classmethod
    def from_inventory(
        cls,
        inv: Inventory,
        *,
        proxy: bool | None = None,
        http_base: str | None = None,
        chain_when_on_disk: bool = False,
    ) -> ServingConfig:
        served = inv.dhcp_networks
        if not served:
            raise DhcpConfigError(
                "networks[provisioning].dhcp is not set: add `dhcp: {mode: full, interface: IF}` "
                "to the provisioning network, or do not start the DHCP server"
            )
        server_ip = inv.server.provisioning_ip
        provisioning = inv.network("provisioning")
        if provisioning is not None and provisioning.dhcp and server_ip not in provisioning.subnet:
            raise DhcpConfigError(
                f"server.provisioning_ip {server_ip} is outside {provisioning.subnet}: DHCP "
                "would name a server id its clients cannot reach; put the server on the "
                "provisioning subnet"
            )
        as_proxy = proxy is True or (
            proxy is None and all(n.dhcp is not None and n.dhcp.mode == "proxy" for n in served)
        )
        networks = [_served(inv, net, as_proxy) for net in served]
        home = next((n for n in networks if server_ip in n.subnet), None)
        table = NetworkMap(networks, home)
        fixed = {
            mac: FixedHost(mac, node.provisioning_ip, node.hostname)
            for node in inv.nodes
            if table.holding(node.provisioning_ip) is not None
            for mac in node.macs
        }
        return cls(
            mode="proxy" if as_proxy else (home or networks[0]).mode,
            server_ip=server_ip,
            networks=table,
            domain=inv.cluster.domain,
            fixed=fixed,
            http_base=http_base or f"http://{server_ip}:{inv.server.http_port}",
            chain_when_on_disk=chain_when_on_disk,
        )


def _served(inv: Inventory, net: Network, as_proxy: bool) -> ServedNetwork:
    dhcp = net.dhcp
    assert dhcp is not None
    mode: DhcpMode = "proxy" if as_proxy else ("full" if dhcp.mode == "proxy" else dhcp.mode)
    if mode == "full" and dhcp.pool is None:
        raise DhcpConfigError(
            f"networks[{net.name}].dhcp.pool is missing in full mode: add "
            "`pool: {start: ..., end: ...}` or set `mode: reservation`"
        )
    pool = (dhcp.pool.start, dhcp.pool.end) if dhcp.pool and mode == "full" else None
    return ServedNetwork.build(
        name=net.name,
        mode=mode,
        subnet=net.subnet,
        router=net.gateway,
        dns=net.dns,
        ntp=net.ntp,
        domain=inv.cluster.domain,
        lease_time=dhcp.lease_time,
        pool=pool,
        relays=dhcp.relays,
        interface=dhcp.interface,
    )
