"""RFC 2131 server behaviour as a pure function of (request, leases, node states, config).

No sockets here: the server feeds decoded packets in and sends the `Reply` it gets back,
so every RFC clause is testable without root. Each request is first given its network
(`networks.NetworkMap.select`: RFC 3527 link selection, RFC 3011 subnet selection, giaddr,
ciaddr, receiving interface); its reply carries that network's mask, router, DNS and lease
time, and its address comes from that network. A request of no served network is dropped
and counted under the reason (`foreign_relay`, `foreign_link_selection`, ...).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from plasmaboot.boot.policy import BootKind, ClientFacts, dhcp_boot
from plasmaboot.dhcp import options as o
from plasmaboot.dhcp.config import ServingConfig
from plasmaboot.dhcp.leases import LeaseAllocator
from plasmaboot.dhcp.networks import ServedNetwork
from plasmaboot.dhcp.options import MessageType, Opt
from plasmaboot.dhcp.packet import (
    BOOTREPLY,
    BOOTREQUEST,
    BROADCAST_FLAG,
    MIN_DHCP_SIZE,
    UNSPECIFIED,
    DhcpPacket,
)
from plasmaboot.lifecycle import State

BROADCAST = "255.255.255.255"
_NETBOOT_VENDORS = ("PXEClient", "HTTPClient")


@dataclass(frozen=True)
class Reply:
    packet: DhcpPacket
    address: tuple[str, int]
    max_size: int
    durable: bool  # an ACK that binds a lease: send only once the lease is on disk
    neighbour: bytes | None = None  # unicast to a client that cannot answer ARP yet
    request: DhcpPacket | None = None  # what a durable ACK answers (a NAK if the store refuses)


@dataclass(frozen=True)
class NodeView:
    hostname: str
    state: State
    boot_overrides: dict[str, str]


NodeLookup = Callable[[str], NodeView | None]
PxeSeen = Callable[[NodeView, ClientFacts], None]


def _facts(request: DhcpPacket) -> ClientFacts:
    arches = o.client_arches(request.options.get(Opt.CLIENT_ARCH))
    return ClientFacts(
        mac=request.mac,
        arch=arches[0] if arches else None,
        vendor_class=o.text(request.options.get(Opt.VENDOR_CLASS)),
        is_ipxe=o.is_ipxe(request.options),
    )


def _is_netboot(facts: ClientFacts) -> bool:
    return facts.is_ipxe or (facts.vendor_class or "").startswith(_NETBOOT_VENDORS)


def client_key(request: DhcpPacket) -> str:
    """Option 61 when present (RFC 2132 9.14), else the hardware address."""
    client_id = request.options.get(Opt.CLIENT_ID)
    return f"id:{client_id.hex()}" if client_id else request.mac


class Responder:
    def __init__(
        self,
        config: ServingConfig,
        allocator: LeaseAllocator,
        nodes: NodeLookup,
        on_pxe: PxeSeen,
        *,
        server_port: int = 67,
    ) -> None:
        self.config = config
        self.allocator = allocator
        self.nodes = nodes
        self.on_pxe = on_pxe
        self.server_port = server_port
        self.client_port = 68 if server_port == 67 else server_port + 1
        self.stats: Counter[str] = Counter()

    def respond(
        self,
        request: DhcpPacket,
        source: tuple[str, int],
        now: float,
        *,
        pxe_port: bool = False,
        interface: str | None = None,
    ) -> Reply | None:
        """The reply to `request`, received from `source` on `interface`, or None."""
        kind = request.message_type
        if request.op != BOOTREQUEST or kind is None or request.htype != 1:
            self.stats["ignored"] += 1
            return None
        self.stats[kind.name.lower()] += 1
        choice = self.config.networks.select(request, interface)
        net = choice.network
        if net is None:
            self.stats[choice.reason] += 1  # a network nobody named: stay silent
            return None
        if self.config.proxy or pxe_port:
            return self._proxy(request, kind, source, pxe_port)
        node = self.nodes(request.mac)
        fixed = self.allocator.fixed_for(request.mac)
        if net.mode == "reservation" and fixed is None:
            self.stats["unknown_mac"] += 1
            return None
        if fixed is not None and fixed.ip not in net.subnet and kind is not MessageType.RELEASE:
            # The node is reserved on another network: never an address from this one.
            self.stats["fixed_on_other_network"] += 1
            if kind is MessageType.REQUEST:
                return self._nak(request, f"{fixed.ip} is not on {net.subnet}")
            return None
        if kind is MessageType.DISCOVER:
            return self._discover(request, node, now, source, net)
        if kind is MessageType.REQUEST:
            return self._request(request, node, now, source, net)
        if kind is MessageType.INFORM:
            return self._inform(request, node, source, net)
        if kind is MessageType.DECLINE:
            ip = o.ip_value(request.options.get(Opt.REQUESTED_IP))
            if ip is not None:
                self.allocator.decline(client_key(request), ip, now)
            return None
        if kind is MessageType.RELEASE:
            self.allocator.release(client_key(request), request.ciaddr, now)
            return None
        return None

    # ---- message handlers -----------------------------------------------------------

    def _discover(
        self,
        request: DhcpPacket,
        node: NodeView | None,
        now: float,
        source: tuple[str, int],
        net: ServedNetwork,
    ) -> Reply | None:
        requested = o.ip_value(request.options.get(Opt.REQUESTED_IP))
        ip = self.allocator.offer(client_key(request), request.mac, requested, now, net.subnet)
        if ip is None:
            self.stats["pool_exhausted"] += 1
            return None
        reply = self._reply(request, MessageType.OFFER, yiaddr=ip)
        self._add_lease_options(reply, node, net)
        self._add_boot(request, _facts(request), reply, node)
        return self._route(request, reply, source, durable=False)

    def _request(
        self,
        request: DhcpPacket,
        node: NodeView | None,
        now: float,
        source: tuple[str, int],
        net: ServedNetwork,
    ) -> Reply | None:
        key = client_key(request)
        server_id = o.ip_value(request.options.get(Opt.SERVER_ID))
        requested = o.ip_value(request.options.get(Opt.REQUESTED_IP))
        if server_id is not None and server_id != self.config.server_ip:
            # SELECTING another server's offer: ours goes, the address it takes is held
            self.allocator.forget_offer(key, request.mac, requested, now)
            return None
        wanted = requested if requested is not None else request.ciaddr
        if wanted == UNSPECIFIED:
            return self._nak(request, "REQUEST names no address (option 50 or ciaddr)")
        if wanted not in net.subnet:
            return self._nak(request, f"{wanted} is not on {net.subnet}")
        lease = self.allocator.bind(key, request.mac, wanted, now, node.hostname if node else None)
        if lease is None:
            return self._nak(request, f"{wanted} is not this client's address")
        reply = self._reply(request, MessageType.ACK, yiaddr=wanted)
        self._add_lease_options(reply, node, net)
        facts = _facts(request)
        self._add_boot(request, facts, reply, node)
        if node is not None and _is_netboot(facts):
            self.on_pxe(node, facts)
        self.stats["bound"] += 1
        return replace(self._route(request, reply, source, durable=True), request=request)

    def _inform(
        self,
        request: DhcpPacket,
        node: NodeView | None,
        source: tuple[str, int],
        net: ServedNetwork,
    ) -> Reply | None:
        """RFC 2131 3.4: configuration only, no lease, no yiaddr, sent to ciaddr."""
        reply = self._reply(request, MessageType.ACK, yiaddr=UNSPECIFIED)
        self._add_lease_options(reply, node, net, with_times=False)
        self._add_boot(request, _facts(request), reply, node)
        return self._route(request, reply, source, durable=False)

    def refused(self, ack: Reply, why: str) -> Reply | None:
        """The NAK that replaces a durable ACK whose lease the store refused (another
        server's client holds the address): the client starts over and is offered the
        next candidate."""
        if ack.request is None:
            return None
        self.stats["lost_race"] += 1  # counters only grow: `bound` counted it already
        return self._nak(ack.request, why)

    def _nak(self, request: DhcpPacket, why: str) -> Reply:
        self.stats["nak"] += 1
        reply = self._reply(request, MessageType.NAK, yiaddr=UNSPECIFIED)
        reply.options[Opt.MESSAGE] = why.encode()
        reply.ciaddr = UNSPECIFIED
        if request.giaddr != UNSPECIFIED:
            reply.flags |= BROADCAST_FLAG  # RFC 2131 4.3.2: the relay broadcasts a NAK
            return Reply(reply, (str(request.giaddr), self.server_port), MIN_DHCP_SIZE, False)
        return Reply(reply, (BROADCAST, self.client_port), MIN_DHCP_SIZE, False)

    def _proxy(
        self, request: DhcpPacket, kind: MessageType, source: tuple[str, int], pxe_port: bool
    ) -> Reply | None:
        """proxyDHCP (PXE spec 2.2.5): boot options only, never an address."""
        facts = _facts(request)
        if not _is_netboot(facts):
            return None
        if pxe_port and kind in (MessageType.REQUEST, MessageType.INFORM):
            reply = self._reply(request, MessageType.ACK, yiaddr=UNSPECIFIED)
            self._add_boot(request, facts, reply, self.nodes(request.mac), proxy=True)
            return Reply(reply, source, self._max_size(request), False, self._arp(request))
        if not pxe_port and kind is MessageType.DISCOVER:
            reply = self._reply(request, MessageType.OFFER, yiaddr=UNSPECIFIED)
            self._add_boot(request, facts, reply, self.nodes(request.mac), proxy=True)
            return self._route(request, reply, source, durable=False)
        return None

    # ---- building replies -------------------------------------------------------------

    def _reply(self, request: DhcpPacket, kind: MessageType, *, yiaddr: IPv4Address) -> DhcpPacket:
        reply = DhcpPacket(
            op=BOOTREPLY,
            xid=request.xid,
            chaddr=request.chaddr,
            htype=request.htype,
            flags=request.flags,
            ciaddr=request.ciaddr,
            yiaddr=yiaddr,
            giaddr=request.giaddr,
        )
        reply.options[Opt.MESSAGE_TYPE] = bytes((kind,))
        reply.options[Opt.SERVER_ID] = self.config.server_ip.packed
        client_id = request.options.get(Opt.CLIENT_ID)
        if client_id:
            reply.options[Opt.CLIENT_ID] = client_id  # RFC 6842
        relay_info = request.options.get(Opt.RELAY_AGENT)
        if relay_info is not None and request.giaddr != UNSPECIFIED:
            reply.options[Opt.RELAY_AGENT] = relay_info  # RFC 3046 2.2
        subnet_selection = request.options.get(Opt.SUBNET_SELECTION)
        if subnet_selection is not None:
            reply.options[Opt.SUBNET_SELECTION] = subnet_selection  # RFC 3011 3: echoed
        self.stats[f"sent_{kind.name.lower()}"] += 1
        return reply

    def _add_lease_options(
        self,
        reply: DhcpPacket,
        node: NodeView | None,
        net: ServedNetwork,
        *,
        with_times: bool = True,
    ) -> None:
        """The network's mask, router, DNS, ... (bytes built once per loaded config)."""
        if with_times:
            reply.options.update(net.times)
        reply.options.update(net.options)
        fixed = self.allocator.fixed_for(reply.mac)
        hostname = node.hostname if node else fixed.hostname if fixed else None
        if hostname is not None:
            reply.options[Opt.HOSTNAME] = hostname.encode()

    def _add_boot(
        self,
        request: DhcpPacket,
        facts: ClientFacts,
        reply: DhcpPacket,
        node: NodeView | None,
        *,
        proxy: bool = False,
    ) -> None:
        if not _is_netboot(facts):
            return
        decision = dhcp_boot(
            facts,
            node.state if node else None,
            self.config.http_base,
            overrides=node.boot_overrides if node else None,
            chain_when_on_disk=self.config.chain_when_on_disk,
        )
        if decision.kind is BootKind.NONE or decision.filename is None:
            return
        name = decision.filename.encode()
        reply.options[Opt.BOOTFILE] = name
        if len(name) <= 128:
            reply.file = name
        if decision.kind is BootKind.TFTP:
            reply.siaddr = self.config.server_ip
            reply.options[Opt.TFTP_SERVER] = str(self.config.server_ip).encode()
        if decision.vendor_class or proxy:
            # PXE spec 2.2.5: a proxyDHCP reply always says PXEClient, or it is not one.
            vendor = decision.vendor_class or "PXEClient"
            reply.options[Opt.VENDOR_CLASS] = vendor.encode()
        uuid = request.options.get(Opt.CLIENT_UUID)
        if uuid is not None:
            reply.options[Opt.CLIENT_UUID] = uuid
        if proxy:
            reply.siaddr = self.config.server_ip  # iPXE takes a proxy reply only with one
        if proxy or decision.kind is BootKind.TFTP:
            # PXE spec 2.4.4: discovery control 8 = boot the file named here. Without
            # option 43, EDK2 treats the offer as BINL and asks port 4011 first.
            reply.options[Opt.VENDOR_SPECIFIC] = o.build_tlvs({o.PXE_DISCOVERY_CONTROL: b"\x08"})
        if facts.is_ipxe and not proxy:
            reply.options[Opt.IPXE] = o.build_tlvs({o.IPXE_NO_PXEDHCP: b"\x01"})

    def _max_size(self, request: DhcpPacket) -> int:
        """RFC 2132 9.10: never more than option 57 allows (576 if absent)."""
        size = o.u16_value(request.options.get(Opt.MAX_MESSAGE_SIZE))
        return max(size or MIN_DHCP_SIZE, MIN_DHCP_SIZE)

    def _route(
        self, request: DhcpPacket, reply: DhcpPacket, source: tuple[str, int], *, durable: bool
    ) -> Reply:
        """RFC 2131 4.1: via the relay, to ciaddr, or broadcast to a client with no address."""
        size = self._max_size(request)
        if request.giaddr != UNSPECIFIED:
            relay_info = o.parse_tlvs(request.options.get(Opt.RELAY_AGENT, b""))
            # RFC 8357: a relay that asks for it gets the reply on its own source port.
            port = source[1] if o.RELAY_SOURCE_PORT in relay_info else self.server_port
            return Reply(reply, (str(request.giaddr), port), size, durable)
        if request.ciaddr != UNSPECIFIED:
            return Reply(reply, (str(request.ciaddr), self.client_port), size, durable)
        if request.broadcast or reply.yiaddr == UNSPECIFIED or self._arp(request) is None:
            return Reply(reply, (BROADCAST, self.client_port), size, durable)
        # Unicast to yiaddr at chaddr; the server fills the ARP cache first.
        return Reply(reply, (str(reply.yiaddr), self.client_port), size, durable, request.chaddr)

    @staticmethod
    def _arp(request: DhcpPacket) -> bytes | None:
        return request.chaddr if request.htype == 1 and len(request.chaddr) == 6 else None
