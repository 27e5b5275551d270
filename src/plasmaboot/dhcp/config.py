"""What the DHCP server serves, read once from the inventory and checked with clear errors."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from plasmaboot.dhcp.leases import FixedHost
from plasmaboot.inventory import Inventory
from plasmaboot.inventory.models import DhcpMode


class DhcpConfigError(ValueError):
    """The inventory or the arguments do not let DHCP start; the message says how to fix it."""


@dataclass(frozen=True)
class ServingConfig:
    mode: DhcpMode
    server_ip: IPv4Address
    subnet: IPv4Network
    router: IPv4Address | None
    dns: tuple[IPv4Address, ...]
    ntp: tuple[IPv4Address, ...]
    domain: str
    lease_time: int
    pool: tuple[IPv4Address, IPv4Address] | None
    fixed: dict[str, FixedHost]
    http_base: str
    chain_when_on_disk: bool

    @property
    def proxy(self) -> bool:
        return self.mode == "proxy"

    @classmethod
    def from_inventory(
        cls,
        inv: Inventory,
        *,
        proxy: bool | None = None,
        http_base: str | None = None,
        chain_when_on_disk: bool = False,
    ) -> ServingConfig:
        net = inv.provisioning
        if net.dhcp is None:
            raise DhcpConfigError(
                "networks[provisioning].dhcp is not set: add `dhcp: {mode: full, interface: IF}` "
                "to the provisioning network, or do not start the DHCP server"
            )
        mode: DhcpMode = "proxy" if proxy else net.dhcp.mode
        if proxy is False and mode == "proxy":
            mode = "full"
        if mode == "full" and net.dhcp.pool is None:
            raise DhcpConfigError(
                "networks[provisioning].dhcp.pool is missing in full mode: add "
                "`pool: {start: ..., end: ...}` or set `mode: reservation`"
            )
        server_ip = inv.server.provisioning_ip
        if server_ip not in net.subnet:
            raise DhcpConfigError(
                f"server.provisioning_ip {server_ip} is outside {net.subnet}: DHCP would name "
                "a server id its clients cannot reach; put the server on the provisioning subnet"
            )
        pool = (net.dhcp.pool.start, net.dhcp.pool.end) if net.dhcp.pool else None
        fixed = {
            mac: FixedHost(mac, node.provisioning_ip, node.hostname)
            for node in inv.nodes
            if node.provisioning_ip in net.subnet
            for mac in node.macs
        }
        return cls(
            mode=mode,
            server_ip=server_ip,
            subnet=net.subnet,
            router=net.gateway,
            dns=net.dns,
            ntp=net.ntp,
            domain=inv.cluster.domain,
            lease_time=net.dhcp.lease_time,
            pool=pool if mode == "full" else None,
            fixed=fixed,
            http_base=http_base or f"http://{server_ip}:{inv.server.http_port}",
            chain_when_on_disk=chain_when_on_disk,
        )
