"""Which served network a DHCP request belongs to, decided once per packet from a table
built once per (re)loaded inventory.

A request's network is chosen, first match wins (docs/dhcp.md):

1. RFC 3527 link selection (option 82 sub-option 5), only in a relayed request (giaddr
   set): the relay names the client's subnet apart from the address it is reached at.
   RFC 3527 section 3 gives it precedence over option 118 when both are present.
2. RFC 3011 subnet selection (option 118): the subnet named by the client or a relay;
   it overrides giaddr and the receiving interface.
3. giaddr (RFC 2131 4.3.1): a relay address a network lists under `dhcp.relays`, else the
   network whose subnet holds it.
4. ciaddr of a direct (unrelayed) client that already has an address (RENEWING, INFORM):
   the network holding it.
5. The receiving interface: the network that names it under `dhcp.interface`, else the
   one holding the server's own address.

An address that no served network holds is never answered from another network: the
caller drops the request and counts the reason returned here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Generic, TypeVar

from plasmaboot.dhcp import options as o
from plasmaboot.dhcp.options import Opt
from plasmaboot.dhcp.packet import UNSPECIFIED, DhcpPacket
from plasmaboot.inventory.models import DhcpMode

T = TypeVar("T")
# Plain ints on the per-packet path: an IntEnum member lookup costs about a microsecond.
_RELAY_AGENT = int(Opt.RELAY_AGENT)
_SUBNET_SELECTION = int(Opt.SUBNET_SELECTION)
_LINK_SELECTION = int(o.RELAY_LINK_SELECTION)


class SubnetTable(Generic[T]):
    """Which of several disjoint subnets holds an address: one dict probe per distinct
    prefix length (usually one or two), whatever the number of subnets."""

    def __init__(self, items: Iterable[tuple[IPv4Network, T]]) -> None:
        by_length: dict[int, dict[int, T]] = {}
        for subnet, value in items:
            by_length.setdefault(subnet.prefixlen, {})[int(subnet.network_address)] = value
        # Longest prefix first, should subnets ever nest.
        self._probes = tuple(
            (int(IPv4Network(f"0.0.0.0/{length}").netmask), table)
            for length, table in sorted(by_length.items(), reverse=True)
        )

    def get(self, ip: IPv4Address) -> T | None:
        number = int(ip)
        for mask, table in self._probes:
            value = table.get(number & mask)
            if value is not None:
                return value
        return None


@dataclass(frozen=True)
class ServedNetwork:
    """One network DHCP serves, with the option bytes every reply on it carries."""

    name: str
    mode: DhcpMode
    subnet: IPv4Network
    router: IPv4Address | None
    dns: tuple[IPv4Address, ...]
    ntp: tuple[IPv4Address, ...]
    lease_time: int
    pool: tuple[IPv4Address, IPv4Address] | None
    relays: tuple[IPv4Address, ...]
    interface: str | None
    times: Mapping[int, bytes]  # lease, renewal (T1) and rebinding (T2) time
    options: Mapping[int, bytes]  # mask, router, DNS, broadcast, domain, NTP

    @classmethod
    def build(
        cls,
        *,
        name: str,
        mode: DhcpMode,
        subnet: IPv4Network,
        router: IPv4Address | None,
        dns: tuple[IPv4Address, ...],
        ntp: tuple[IPv4Address, ...],
        domain: str,
        lease_time: int,
        pool: tuple[IPv4Address, IPv4Address] | None,
        relays: tuple[IPv4Address, ...] = (),
        interface: str | None = None,
    ) -> ServedNetwork:
        times: dict[int, bytes] = {
            Opt.LEASE_TIME: o.u32(lease_time),
            Opt.RENEWAL_TIME: o.u32(lease_time // 2),
            Opt.REBINDING_TIME: o.u32(lease_time * 7 // 8),
        }
        network: dict[int, bytes] = {Opt.SUBNET_MASK: subnet.netmask.packed}
        if router is not None:
            network[Opt.ROUTER] = router.packed
        if dns:
            network[Opt.DNS] = o.ip_list(dns)
        network[Opt.BROADCAST] = subnet.broadcast_address.packed
        network[Opt.DOMAIN_NAME] = domain.encode()
        if ntp:
            network[Opt.NTP] = o.ip_list(ntp)
        return cls(
            name, mode, subnet, router, dns, ntp, lease_time, pool, relays, interface,
            times, network,
        )  # fmt: skip


@dataclass(slots=True)
class Choice:
    """The network of a request, or None and the reason (a stats key) it has none."""

    network: ServedNetwork | None
    reason: str


class NetworkMap:
    """The served networks, indexed for `select`: built at config time, read per packet."""

    def __init__(self, networks: Iterable[ServedNetwork], home: ServedNetwork | None) -> None:
        self.networks = tuple(networks)
        self.home = home
        self._subnets: SubnetTable[ServedNetwork] = SubnetTable(
            (net.subnet, net) for net in self.networks
        )
        self._relays = {relay: net for net in self.networks for relay in net.relays}
        self._interfaces = {net.interface: net for net in self.networks if net.interface}

    def holding(self, ip: IPv4Address) -> ServedNetwork | None:
        """The served network whose subnet holds `ip`."""
        return self._subnets.get(ip)

    def select(self, request: DhcpPacket, interface: str | None) -> Choice:
        options = request.options
        giaddr = request.giaddr
        relayed = giaddr != UNSPECIFIED
        if relayed and _RELAY_AGENT in options:
            link = o.ip_value(o.parse_tlvs(options[_RELAY_AGENT]).get(_LINK_SELECTION))
            if link is not None:
                return self._by_address(link, "link_selection")
        if _SUBNET_SELECTION in options:
            subnet = o.ip_value(options[_SUBNET_SELECTION])
            if subnet is not None:
                return self._by_address(subnet, "subnet_selection")
        if relayed:
            net = self._relays.get(giaddr) or self._subnets.get(giaddr)
            return Choice(net, "relay") if net is not None else Choice(None, "foreign_relay")
        if request.ciaddr != UNSPECIFIED:
            return self._by_address(request.ciaddr, "client")
        net = self._interfaces.get(interface) if interface is not None else None
        net = net or self.home
        return Choice(net, "interface") if net is not None else Choice(None, "no_network")

    def _by_address(self, ip: IPv4Address, how: str) -> Choice:
        net = self._subnets.get(ip)
        return Choice(net, how) if net is not None else Choice(None, f"foreign_{how}")
