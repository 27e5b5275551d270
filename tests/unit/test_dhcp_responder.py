"""RFC 2131 server behaviour, checked on the pure responder (no sockets, no root)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from plasmaboot.dhcp import options as o
from plasmaboot.dhcp.config import DhcpConfigError, ServingConfig
from plasmaboot.dhcp.leases import DECLINE_HOLD_S, LeaseAllocator
from plasmaboot.dhcp.options import MessageType, Opt
from plasmaboot.dhcp.packet import BROADCAST_FLAG, UNSPECIFIED, DhcpPacket, decode, encode
from plasmaboot.dhcp.responder import NodeView, Reply, Responder
from plasmaboot.inventory import Inventory, parse_inventory
from plasmaboot.lifecycle import State

SERVER = IPv4Address("10.9.0.1")
KNOWN_MAC = "52:54:00:00:00:01"
KNOWN_IP = IPv4Address("10.9.0.50")
INVENTORY = f"""
cluster: {{name: t, domain: t.internal}}
networks:
  - name: provisioning
    vlan: 100
    subnet: 10.9.0.0/16
    gateway: 10.9.0.1
    dns: [10.9.0.1]
    dhcp: {{mode: MODE, pool: {{start: 10.9.0.100, end: 10.9.0.102}}, lease_time: 600,
            interface: eth9}}
server: {{provisioning_ip: {SERVER}, http_port: 8080}}
profiles:
  cp: {{role: control-plane, services: [chainfire], image: img}}
images: {{img: {{kernel: k, initrd: i}}}}
nodes:
  - {{hostname: node01, macs: ['{KNOWN_MAC}'], profile: cp, provisioning_ip: {KNOWN_IP},
      bootstrap: true}}
  - {{hostname: node02, macs: ['52:54:00:00:00:02'], profile: cp, provisioning_ip: 10.9.0.51,
      bootstrap: true}}
  - {{hostname: node03, macs: ['52:54:00:00:00:03'], profile: cp, provisioning_ip: 10.9.0.52,
      bootstrap: true}}
"""


def inventory(mode: str = "full") -> Inventory:
    return parse_inventory(yaml.safe_load(INVENTORY.replace("MODE", mode)))


class Harness:
    def __init__(self, mode: str = "full", proxy: bool | None = None) -> None:
        self.config = ServingConfig.from_inventory(inventory(mode), proxy=proxy)
        self.allocator = LeaseAllocator(
            self.config.subnet, self.config.pool, self.config.fixed, 600, {SERVER}
        )
        self.states: dict[str, NodeView] = {}
        self.pxe_seen: list[str] = []
        self.responder = Responder(
            self.config,
            self.allocator,
            self.states.get,
            lambda node, facts: self.pxe_seen.append(node.hostname),
        )
        self.now = 1000.0

    def send(
        self,
        kind: MessageType,
        mac: str = "52:54:00:ff:00:01",
        *,
        source: tuple[str, int] = ("0.0.0.0", 68),
        pxe_port: bool = False,
        **fields: object,
    ) -> Reply | None:
        opts: dict[int, bytes] = {Opt.MESSAGE_TYPE: bytes((kind,))}
        opts |= fields.pop("options", {})  # type: ignore[arg-type]
        packet = DhcpPacket(
            op=1, xid=42, chaddr=bytes.fromhex(mac.replace(":", "")), options=opts, **fields
        )  # type: ignore[arg-type]
        wire = encode(packet, 1500)  # through the codec, as on the wire
        return self.responder.respond(decode(wire), source, self.now, pxe_port=pxe_port)

    def dora(self, mac: str, **fields: object) -> Reply:
        offer = self.send(MessageType.DISCOVER, mac, **fields)
        assert offer is not None
        request_opts = {Opt.SERVER_ID: SERVER.packed, Opt.REQUESTED_IP: offer.packet.yiaddr.packed}
        request_opts |= fields.pop("options", {})  # type: ignore[arg-type]
        ack = self.send(MessageType.REQUEST, mac, options=request_opts, **fields)
        assert ack is not None
        return ack


def kind(reply: Reply | None) -> MessageType | None:
    return reply.packet.message_type if reply else None


def test_rfc2131_4_3_1_known_mac_is_offered_its_fixed_address() -> None:
    offer = Harness().send(MessageType.DISCOVER, KNOWN_MAC)
    assert kind(offer) is MessageType.OFFER and offer is not None
    assert offer.packet.yiaddr == KNOWN_IP
    assert offer.packet.options[Opt.HOSTNAME] == b"node01"
    assert not offer.durable  # offers are never waited on


def test_rfc2131_4_3_1_unknown_mac_is_offered_a_pool_address() -> None:
    offer = Harness().send(MessageType.DISCOVER)
    assert offer is not None and offer.packet.yiaddr == IPv4Address("10.9.0.100")
    assert offer.packet.options[Opt.SERVER_ID] == SERVER.packed
    assert offer.packet.options[Opt.LEASE_TIME] == o.u32(600)


def test_rfc2131_4_3_1_exhausted_pool_is_silent_not_a_duplicate() -> None:
    h = Harness()
    given = {h.dora(f"52:54:00:ff:00:0{i}").packet.yiaddr for i in range(3)}
    assert len(given) == 3
    assert h.send(MessageType.DISCOVER, "52:54:00:ff:00:09") is None
    assert h.responder.stats["pool_exhausted"] == 1


def test_rfc2131_4_3_2_selecting_request_is_acked_after_the_lease_is_durable() -> None:
    h = Harness()
    ack = h.dora("52:54:00:ff:00:01")
    assert kind(ack) is MessageType.ACK and ack.durable
    assert [le.ip for le in h.allocator.drain_dirty()] == [str(ack.packet.yiaddr)]


def test_rfc2131_4_3_2_request_naming_another_server_is_silent_and_holds_its_address() -> None:
    """The other server is binding the address the client requests: it is not handed to
    the next client (two servers on one store offer alike: it is mostly our offer too)."""
    h = Harness()
    offer = h.send(MessageType.DISCOVER, "52:54:00:ff:00:01")
    assert offer is not None
    other = {Opt.SERVER_ID: b"\x0a\x09\x00\x63", Opt.REQUESTED_IP: offer.packet.yiaddr.packed}
    assert h.send(MessageType.REQUEST, "52:54:00:ff:00:01", options=other) is None
    again = h.send(MessageType.DISCOVER, "52:54:00:ff:00:02")
    assert again is not None and again.packet.yiaddr != offer.packet.yiaddr


def test_rfc2131_4_3_2_another_servers_different_address_frees_our_offer() -> None:
    h = Harness()
    ours = h.send(MessageType.DISCOVER, "52:54:00:ff:00:01")
    assert ours is not None
    assert ours.packet.yiaddr == IPv4Address("10.9.0.100")  # the pool: .100-.102
    theirs = IPv4Address("10.9.0.102")
    other = {Opt.SERVER_ID: b"\x0a\x09\x00\x63", Opt.REQUESTED_IP: theirs.packed}
    assert h.send(MessageType.REQUEST, "52:54:00:ff:00:01", options=other) is None
    # the next clients: ours is free again, theirs is held for the client that took it
    offers = [h.send(MessageType.DISCOVER, f"52:54:00:ff:00:0{n}") for n in (2, 3, 4)]
    assert [o.packet.yiaddr if o else None for o in offers] == [
        IPv4Address("10.9.0.100"), IPv4Address("10.9.0.101"), None,
    ]  # fmt: skip


def test_rfc2131_4_3_2_nak_for_address_on_wrong_subnet() -> None:
    reply = Harness().send(
        MessageType.REQUEST, options={Opt.REQUESTED_IP: IPv4Address("192.0.2.7").packed}
    )
    assert kind(reply) is MessageType.NAK and reply is not None
    assert reply.address == ("255.255.255.255", 68)
    assert reply.packet.yiaddr == UNSPECIFIED


def test_rfc2131_4_3_2_nak_for_address_of_another_client() -> None:
    h = Harness()
    taken = h.dora("52:54:00:ff:00:01").packet.yiaddr
    reply = h.send(
        MessageType.REQUEST, "52:54:00:ff:00:02", options={Opt.REQUESTED_IP: taken.packed}
    )
    assert kind(reply) is MessageType.NAK
    fixed = h.send(MessageType.REQUEST, options={Opt.REQUESTED_IP: KNOWN_IP.packed})
    assert kind(fixed) is MessageType.NAK  # another node's fixed address


def test_rfc2131_4_1_relayed_reply_goes_to_giaddr_port_67() -> None:
    h = Harness()
    giaddr = IPv4Address("10.9.5.1")
    relay = {Opt.RELAY_AGENT: bytes([1, 3]) + b"sw1"}
    offer = h.send(MessageType.DISCOVER, giaddr=giaddr, hops=1, options=relay)
    assert offer is not None and offer.address == ("10.9.5.1", 67)
    assert offer.packet.giaddr == giaddr
    assert offer.packet.options[Opt.RELAY_AGENT] == relay[Opt.RELAY_AGENT]  # RFC 3046 2.2


def test_rfc8357_relay_source_port_is_honoured() -> None:
    relay = {Opt.RELAY_AGENT: bytes([o.RELAY_SOURCE_PORT, 0])}
    offer = Harness().send(
        MessageType.DISCOVER, giaddr=IPv4Address("10.9.5.1"), source=("10.9.5.1", 16867),
        options=relay,
    )  # fmt: skip
    assert offer is not None and offer.address == ("10.9.5.1", 16867)


def test_rfc2131_4_1_relay_from_an_unnamed_network_is_ignored() -> None:
    h = Harness()
    assert h.send(MessageType.DISCOVER, giaddr=IPv4Address("192.0.2.1")) is None
    assert h.responder.stats["foreign_relay"] == 1


def test_rfc2131_4_1_renewal_is_unicast_to_ciaddr() -> None:
    h = Harness()
    address = h.dora("52:54:00:ff:00:01").packet.yiaddr
    ack = h.send(MessageType.REQUEST, "52:54:00:ff:00:01", ciaddr=address)
    assert kind(ack) is MessageType.ACK and ack is not None
    assert ack.address == (str(address), 68) and ack.packet.yiaddr == address


def test_rfc2131_4_1_broadcast_to_a_client_without_address() -> None:
    h = Harness()
    offer = h.send(MessageType.DISCOVER, flags=BROADCAST_FLAG)
    assert offer is not None and offer.address == ("255.255.255.255", 68)
    assert offer.packet.flags & BROADCAST_FLAG


def test_rfc2131_4_3_3_decline_quarantines_the_address() -> None:
    h = Harness()
    address = h.dora("52:54:00:ff:00:01").packet.yiaddr
    h.send(MessageType.DECLINE, "52:54:00:ff:00:01", options={Opt.REQUESTED_IP: address.packed})
    offers = [h.send(MessageType.DISCOVER, f"52:54:00:ff:00:0{i}") for i in range(1, 4)]
    assert address not in {r.packet.yiaddr for r in offers if r}
    h.now += DECLINE_HOLD_S + 1  # the hold is over: the address is back in use
    later = [h.send(MessageType.DISCOVER, f"52:54:00:ff:00:1{i}") for i in range(3)]
    assert address in {r.packet.yiaddr for r in later if r}


def test_rfc2131_4_3_4_release_frees_the_address() -> None:
    h = Harness()
    given = [h.dora(f"52:54:00:ff:00:0{i}").packet.yiaddr for i in range(3)]
    h.send(MessageType.RELEASE, "52:54:00:ff:00:00", ciaddr=given[0])
    offer = h.send(MessageType.DISCOVER, "52:54:00:ff:00:09")
    assert offer is not None and offer.packet.yiaddr == given[0]
    written = {le.ip: le.state for le in h.allocator.drain_dirty()}
    assert written[str(given[0])] == "released"


def test_rfc2131_4_3_5_inform_gets_options_without_a_lease() -> None:
    h = Harness()
    ack = h.send(MessageType.INFORM, ciaddr=IPv4Address("10.9.7.7"))
    assert kind(ack) is MessageType.ACK and ack is not None
    assert ack.packet.yiaddr == UNSPECIFIED and Opt.LEASE_TIME not in ack.packet.options
    assert ack.address == ("10.9.7.7", 68)
    assert not h.allocator.dirty


def test_rfc6842_client_id_is_the_key_and_is_echoed() -> None:
    h = Harness()
    cid = {Opt.CLIENT_ID: b"\x01node-a"}
    first = h.dora("52:54:00:ff:00:01", options=cid)
    assert first.packet.options[Opt.CLIENT_ID] == cid[Opt.CLIENT_ID]
    # Same client id behind another NIC keeps its address; same MAC, new id does not.
    moved = h.send(MessageType.DISCOVER, "52:54:00:ff:00:02", options=cid)
    assert moved is not None and moved.packet.yiaddr == first.packet.yiaddr
    other = h.send(MessageType.DISCOVER, "52:54:00:ff:00:01", options={Opt.CLIENT_ID: b"\x01b"})
    assert other is not None and other.packet.yiaddr != first.packet.yiaddr


def test_rfc2132_9_10_reply_fits_option_57() -> None:
    h = Harness()
    offer = h.send(
        MessageType.DISCOVER, KNOWN_MAC, options={Opt.MAX_MESSAGE_SIZE: b"\x02\x40"}
    )  # 576
    assert offer is not None and offer.max_size == 576
    assert len(encode(offer.packet, offer.max_size)) + 28 <= 576


def test_reservation_mode_answers_only_known_macs() -> None:
    h = Harness("reservation")
    assert h.send(MessageType.DISCOVER) is None
    assert h.responder.stats["unknown_mac"] == 1
    assert h.dora(KNOWN_MAC).packet.yiaddr == KNOWN_IP


PXE = {
    Opt.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003000",
    Opt.CLIENT_ARCH: b"\x00\x07",
    Opt.CLIENT_UUID: b"\x00" + bytes(range(16)),
}
HTTP_BOOT = {Opt.VENDOR_CLASS: b"HTTPClient:Arch:00016:UNDI:003000", Opt.CLIENT_ARCH: b"\x00\x10"}
IPXE = {Opt.USER_CLASS: b"iPXE", Opt.IPXE: bytes([19, 1, 1]), Opt.CLIENT_ARCH: b"\x00\x07"}


def test_rfc4578_edk2_pxe_gets_ipxe_efi_over_tftp() -> None:
    h = Harness()
    h.states[KNOWN_MAC] = NodeView("node01", State.ENROLLED, {})
    ack = h.dora(KNOWN_MAC, options=dict(PXE))
    assert ack.packet.file == b"ipxe.efi" and ack.packet.siaddr == SERVER
    # No PXEClient echo in a full-DHCP reply: EDK2 would take it (without option 43) for
    # a BINL offer and look for a boot server on port 4011 (seen in the OVMF lab).
    assert Opt.VENDOR_CLASS not in ack.packet.options
    assert ack.packet.options[Opt.CLIENT_UUID] == PXE[Opt.CLIENT_UUID]
    assert h.pxe_seen == ["node01"]


def test_uefi_http_boot_gets_url_and_httpclient() -> None:
    offer = Harness().send(MessageType.DISCOVER, options=dict(HTTP_BOOT))
    assert offer is not None
    assert offer.packet.options[Opt.BOOTFILE] == b"http://10.9.0.1:8080/boot/ipxe/ipxe.efi"
    assert offer.packet.options[Opt.VENDOR_CLASS] == b"HTTPClient"


def test_ipxe_gets_entry_script_and_no_pxedhcp() -> None:
    offer = Harness().send(MessageType.DISCOVER, options=dict(IPXE))
    assert offer is not None
    assert offer.packet.options[Opt.BOOTFILE] == b"http://10.9.0.1:8080/boot/ipxe/boot.ipxe"
    assert o.parse_tlvs(offer.packet.options[Opt.IPXE]) == {o.IPXE_NO_PXEDHCP: b"\x01"}


def test_installed_node_gets_no_bootfile() -> None:
    h = Harness()
    h.states[KNOWN_MAC] = NodeView("node01", State.ACTIVE, {})
    ack = h.dora(KNOWN_MAC, options=dict(PXE))
    assert ack.packet.file == b"" and Opt.BOOTFILE not in ack.packet.options
    assert ack.packet.yiaddr == KNOWN_IP


def test_plain_client_gets_no_boot_options() -> None:
    offer = Harness().send(MessageType.DISCOVER)
    assert offer is not None and Opt.BOOTFILE not in offer.packet.options


def test_proxydhcp_offer_has_boot_options_and_no_address() -> None:
    h = Harness(proxy=True)
    offer = h.send(MessageType.DISCOVER, options=dict(PXE))
    assert kind(offer) is MessageType.OFFER and offer is not None
    assert offer.packet.yiaddr == UNSPECIFIED and offer.packet.file == b"ipxe.efi"
    assert o.parse_tlvs(offer.packet.options[Opt.VENDOR_SPECIFIC]) == {6: b"\x08"}
    assert Opt.LEASE_TIME not in offer.packet.options
    assert h.send(MessageType.DISCOVER) is None  # not a netboot client: the real server's
    assert h.send(MessageType.REQUEST, options=dict(PXE)) is None  # port 67 REQUEST


def test_proxydhcp_port_4011_request_is_acked_to_its_source() -> None:
    h = Harness(proxy=True)
    ack = h.send(
        MessageType.REQUEST, ciaddr=IPv4Address("10.9.0.77"), source=("10.9.0.77", 4011),
        pxe_port=True, options=dict(PXE),
    )  # fmt: skip
    assert kind(ack) is MessageType.ACK and ack is not None
    assert ack.address == ("10.9.0.77", 4011) and ack.packet.file == b"ipxe.efi"


def test_config_refuses_full_mode_without_pool() -> None:
    data = yaml.safe_load(INVENTORY.replace("MODE", "reservation"))
    inv = parse_inventory(data)
    net = inv.provisioning
    assert net.dhcp is not None
    broken = inv.model_copy(
        update={"networks": (net.model_copy(update={"dhcp": net.dhcp.model_copy(
            update={"mode": "full", "pool": None})}),)}
    )  # fmt: skip
    with pytest.raises(DhcpConfigError, match=r"dhcp\.pool is missing"):
        ServingConfig.from_inventory(broken)


def test_boot_facts_reach_pxe_callback_only_for_netboot_clients() -> None:
    h = Harness()
    h.states[KNOWN_MAC] = NodeView("node01", State.ENROLLED, {})
    h.dora(KNOWN_MAC)
    assert h.pxe_seen == []


def test_rfc2131_4_1_unicast_to_yiaddr_at_chaddr_without_broadcast_flag() -> None:
    offer = Harness().send(MessageType.DISCOVER, KNOWN_MAC)
    assert offer is not None and offer.address == (str(KNOWN_IP), 68)
    assert offer.neighbour == bytes.fromhex("525400000001")  # ARP entry before unicast


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.integers(1, 254), st.binary(max_size=40), max_size=8),
    st.sampled_from(list(MessageType)),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
def test_fuzz_responder_never_raises(
    extra: dict[int, bytes], message: MessageType, ciaddr: int, giaddr: int
) -> None:
    h = Harness()
    h.send(message, options=extra, ciaddr=IPv4Address(ciaddr), giaddr=IPv4Address(giaddr))
    h.send(message, options=extra, source=("10.9.0.9", 68), pxe_port=True)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("drqxl"), st.integers(0, 5)), max_size=60))
def test_allocator_never_gives_one_address_to_two_clients(steps: list[tuple[str, int]]) -> None:
    """Random DISCOVER/REQUEST/RELEASE/DECLINE/time-lapse sequences over a 3-address pool."""
    h = Harness()
    for action, n in steps:
        mac = f"52:54:00:ff:00:0{n}"
        asked = {Opt.REQUESTED_IP: bytes([10, 9, 0, 100 + n % 3])}
        if action == "d":
            h.send(MessageType.DISCOVER, mac)
        elif action == "r":
            h.send(MessageType.REQUEST, mac, options=asked)
        elif action == "q":
            h.send(MessageType.RELEASE, mac, ciaddr=IPv4Address(f"10.9.0.{100 + n % 3}"))
        elif action == "x":
            h.send(MessageType.DECLINE, mac, options=asked)
        else:
            h.now += 100 * n
        holders: dict[str, str] = {}
        for lease in h.allocator.active(h.now):
            assert holders.setdefault(lease.ip, lease.client_key) == lease.client_key
        keys = [le.client_key for le in h.allocator.active(h.now)]
        assert len(keys) == len(set(keys))  # one bound address per client


def test_fixed_host_keeps_its_address_whatever_client_id_each_boot_stage_sends() -> None:
    h = Harness()
    pxe = h.dora(KNOWN_MAC, options={Opt.CLIENT_ID: b"\x01pxe"})
    http_boot = h.dora(KNOWN_MAC, options={Opt.CLIENT_ID: b"\x00uuid"})
    assert pxe.packet.yiaddr == http_boot.packet.yiaddr == KNOWN_IP


def test_rfc4578_pxe_reply_carries_option_43_so_edk2_skips_binl() -> None:
    offer = Harness().send(MessageType.DISCOVER, KNOWN_MAC, options=dict(PXE))
    assert offer is not None
    assert o.parse_tlvs(offer.packet.options[Opt.VENDOR_SPECIFIC]) == {6: b"\x08"}
