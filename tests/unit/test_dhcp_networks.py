"""Several served networks: which one a request gets, and what its reply carries.

RFC 3527 (option 82.5 link selection), RFC 3011 (option 118 subnet selection), RFC 2131
4.3.1 (giaddr) and the receiving interface, checked on the pure responder (no sockets).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

from plasmaboot.dhcp import options as o
from plasmaboot.dhcp.config import ServingConfig
from plasmaboot.dhcp.leases import LeaseAllocator
from plasmaboot.dhcp.networks import SubnetTable
from plasmaboot.dhcp.options import MessageType, Opt
from plasmaboot.dhcp.packet import UNSPECIFIED, DhcpPacket, decode, encode
from plasmaboot.dhcp.responder import Reply, Responder
from plasmaboot.dhcp.server import DhcpServer
from plasmaboot.inventory import Inventory, parse_inventory
from plasmaboot.store import open_store

SERVER = IPv4Address("10.40.0.1")
RACK1_RELAY = IPv4Address("10.41.1.1")  # the rack router, inside rack1
RACK1_LOOPBACK = IPv4Address("10.99.0.1")  # a relay address outside every subnet
RACK2_RELAY = IPv4Address("10.41.2.1")
R1_NODE = ("r1n1", "52:54:00:41:01:01", IPv4Address("10.41.1.20"))
R2_NODE = ("r2n1", "52:54:00:41:02:01", IPv4Address("10.41.2.20"))
CLIENT = "52:54:00:ff:00:01"

FLEET = f"""
cluster: {{name: fleet, domain: fleet.internal}}
networks:
  - name: provisioning
    vlan: 100
    subnet: 10.40.0.0/24
    gateway: {SERVER}
    dns: [{SERVER}]
    dhcp: {{mode: full, pool: {{start: 10.40.0.100, end: 10.40.0.150}}, lease_time: 600,
            interface: eth9}}
  - name: rack1
    vlan: 101
    subnet: 10.41.1.0/24
    gateway: {RACK1_RELAY}
    dns: [10.41.1.53]
    dhcp: {{mode: full, pool: {{start: 10.41.1.100, end: 10.41.1.102}}, lease_time: 900,
            relays: [{RACK1_LOOPBACK}]}}
  - name: rack2
    vlan: 102
    subnet: 10.41.2.0/25
    gateway: {RACK2_RELAY}
    dns: [10.41.2.53, 10.41.2.54]
    dhcp: {{mode: full, pool: {{start: 10.41.2.100, end: 10.41.2.110}}, lease_time: 1200,
            interface: eth2}}
server: {{provisioning_ip: {SERVER}, http_port: 8080}}
profiles:
  cp: {{role: control-plane, services: [chainfire], image: img}}
  worker: {{role: worker, services: [k8shost], image: img}}
images: {{img: {{kernel: k, initrd: i}}}}
nodes:
  - {{hostname: cp1, macs: ['52:54:00:40:00:01'], profile: cp, provisioning_ip: 10.40.0.11,
      bootstrap: true}}
  - {{hostname: cp2, macs: ['52:54:00:40:00:02'], profile: cp, provisioning_ip: 10.40.0.12,
      bootstrap: true}}
  - {{hostname: cp3, macs: ['52:54:00:40:00:03'], profile: cp, provisioning_ip: 10.40.0.13,
      bootstrap: true}}
  - {{hostname: {R1_NODE[0]}, macs: ['{R1_NODE[1]}'], profile: worker,
      provisioning_ip: {R1_NODE[2]}}}
  - {{hostname: {R2_NODE[0]}, macs: ['{R2_NODE[1]}'], profile: worker,
      provisioning_ip: {R2_NODE[2]}}}
"""


def fleet_doc() -> dict[str, Any]:
    doc = yaml.safe_load(FLEET)
    assert isinstance(doc, dict)
    return doc


def fleet(doc: dict[str, Any] | None = None) -> Inventory:
    return parse_inventory(doc or fleet_doc())


class Fleet:
    def __init__(self, inv: Inventory | None = None) -> None:
        self.config = ServingConfig.from_inventory(inv or fleet())
        self.allocator = LeaseAllocator.for_scopes(
            self.config.scopes, self.config.fixed, self.config.reserved
        )
        self.responder = Responder(self.config, self.allocator, lambda mac: None, lambda n, f: None)
        self.now = 1000.0

    def send(
        self,
        kind: MessageType,
        mac: str = CLIENT,
        *,
        interface: str | None = "eth9",
        options: dict[int, bytes] | None = None,
        **fields: Any,
    ) -> Reply | None:
        opts = {Opt.MESSAGE_TYPE: bytes((kind,)), **(options or {})}
        chaddr = bytes.fromhex(mac.replace(":", ""))
        packet = DhcpPacket(op=1, xid=7, chaddr=chaddr, options=opts, **fields)
        wire = decode(encode(packet, 1500))
        source = (str(fields.get("giaddr", "0.0.0.0")), 67)
        return self.responder.respond(wire, source, self.now, interface=interface)

    def dora(self, mac: str = CLIENT, **fields: Any) -> Reply:
        offer = self.send(MessageType.DISCOVER, mac, **fields)
        assert offer is not None
        asked = {Opt.SERVER_ID: SERVER.packed, Opt.REQUESTED_IP: offer.packet.yiaddr.packed}
        options = {**fields.pop("options", {}), **asked}
        ack = self.send(MessageType.REQUEST, mac, options=options, **fields)
        assert ack is not None and ack.packet.message_type is MessageType.ACK
        return ack


def relay_info(**subs: bytes) -> dict[int, bytes]:
    codes = {"circuit": 1, "link": o.RELAY_LINK_SELECTION}
    return {Opt.RELAY_AGENT: o.build_tlvs({codes[k]: v for k, v in subs.items()})}


def network_of(reply: Reply | None) -> tuple[str, str | None, int]:
    """(mask, router, lease time) a reply hands out."""
    assert reply is not None
    opts = reply.packet.options
    router = str(IPv4Address(opts[Opt.ROUTER])) if Opt.ROUTER in opts else None
    lease = int.from_bytes(opts.get(Opt.LEASE_TIME, b"\0\0\0\0"), "big")
    return str(IPv4Address(opts[Opt.SUBNET_MASK])), router, lease


def test_rfc2131_4_3_1_giaddr_inside_a_rack_subnet_leases_from_that_rack() -> None:
    f = Fleet()
    ack = f.dora(giaddr=RACK1_RELAY, hops=1)
    assert ack.packet.yiaddr in IPv4Network("10.41.1.0/24")
    assert network_of(ack) == ("255.255.255.0", "10.41.1.1", 900)
    assert ack.packet.options[Opt.DNS] == IPv4Address("10.41.1.53").packed
    assert ack.address == (str(RACK1_RELAY), 67)
    assert f.allocator.lease_of(CLIENT).expires_at == f.now + 900  # type: ignore[union-attr]


def test_rfc2131_4_3_1_each_rack_gets_its_own_mask_router_and_dns() -> None:
    f = Fleet()
    offer = f.send(MessageType.DISCOVER, giaddr=RACK2_RELAY)
    assert offer is not None and offer.packet.yiaddr in IPv4Network("10.41.2.0/25")
    assert network_of(offer) == ("255.255.255.128", "10.41.2.1", 1200)
    assert offer.packet.options[Opt.DNS] == o.ip_list(
        [IPv4Address("10.41.2.53"), IPv4Address("10.41.2.54")]
    )
    assert offer.packet.options[Opt.BROADCAST] == IPv4Address("10.41.2.127").packed
    assert offer.packet.options[Opt.SERVER_ID] == SERVER.packed  # one server for every rack


def test_listed_relay_address_outside_the_subnet_picks_its_network() -> None:
    offer = Fleet().send(MessageType.DISCOVER, giaddr=RACK1_LOOPBACK)
    assert offer is not None and offer.packet.yiaddr in IPv4Network("10.41.1.0/24")
    assert offer.address == (str(RACK1_LOOPBACK), 67)


def test_rfc3527_link_selection_picks_the_network_and_the_reply_still_goes_to_giaddr() -> None:
    f = Fleet()
    info = relay_info(circuit=b"port7", link=IPv4Address("10.41.2.0").packed)
    offer = f.send(MessageType.DISCOVER, giaddr=RACK1_LOOPBACK, options=info)
    assert offer is not None and offer.packet.yiaddr in IPv4Network("10.41.2.0/25")
    assert network_of(offer)[1] == "10.41.2.1"
    assert offer.address == (str(RACK1_LOOPBACK), 67)  # RFC 3527 3: giaddr still talks
    assert offer.packet.options[Opt.RELAY_AGENT] == info[Opt.RELAY_AGENT]  # RFC 3046 2.2


def test_rfc3527_link_selection_is_honoured_only_from_a_relay() -> None:
    # A client cannot pick a rack by sending option 82 itself (no giaddr): interface rules.
    info = relay_info(link=IPv4Address("10.41.2.0").packed)
    offer = Fleet().send(MessageType.DISCOVER, options=info)
    assert offer is not None and offer.packet.yiaddr in IPv4Network("10.40.0.0/24")


def test_rfc3011_subnet_selection_overrides_giaddr_and_is_echoed() -> None:
    f = Fleet()
    pick = {Opt.SUBNET_SELECTION: IPv4Address("10.41.2.5").packed}
    ack = f.dora(giaddr=RACK1_RELAY, options=pick)
    assert ack.packet.yiaddr in IPv4Network("10.41.2.0/25")
    assert ack.packet.options[Opt.SUBNET_SELECTION] == pick[Opt.SUBNET_SELECTION]  # RFC 3011 3
    assert ack.address == (str(RACK1_RELAY), 67)


def test_rfc3011_subnet_selection_from_a_direct_client() -> None:
    pick = {Opt.SUBNET_SELECTION: IPv4Address("10.41.1.0").packed}
    offer = Fleet().send(MessageType.DISCOVER, options=pick)
    assert offer is not None and offer.packet.yiaddr in IPv4Network("10.41.1.0/24")


def test_rfc3527_link_selection_takes_precedence_over_rfc3011_subnet_selection() -> None:
    both = {
        **relay_info(link=IPv4Address("10.41.1.0").packed),
        Opt.SUBNET_SELECTION: IPv4Address("10.41.2.0").packed,
    }
    offer = Fleet().send(MessageType.DISCOVER, giaddr=RACK2_RELAY, options=both)
    assert offer is not None and offer.packet.yiaddr in IPv4Network("10.41.1.0/24")


def test_direct_client_gets_the_receiving_interface_network() -> None:
    f = Fleet()
    home = f.send(MessageType.DISCOVER, interface="eth9")
    assert home is not None and home.packet.yiaddr in IPv4Network("10.40.0.0/24")
    assert network_of(home) == ("255.255.255.0", str(SERVER), 600)
    named = f.send(MessageType.DISCOVER, "52:54:00:ff:00:02", interface="eth2")
    assert named is not None and named.packet.yiaddr in IPv4Network("10.41.2.0/25")
    # An interface no network names: the network holding the server's own address.
    other = f.send(MessageType.DISCOVER, "52:54:00:ff:00:03", interface="eth7")
    assert other is not None and other.packet.yiaddr in IPv4Network("10.40.0.0/24")


def test_rfc2131_4_3_2_renewal_unicast_from_a_rack_is_acked_with_its_network() -> None:
    f = Fleet()
    address = f.dora(giaddr=RACK1_RELAY).packet.yiaddr
    renew = f.send(MessageType.REQUEST, ciaddr=address)  # routed, no relay, arrives on eth9
    assert renew is not None and renew.packet.message_type is MessageType.ACK
    assert network_of(renew) == ("255.255.255.0", "10.41.1.1", 900)
    assert renew.address == (str(address), 68)


def test_unknown_networks_are_ignored_and_counted_by_reason() -> None:
    f = Fleet()
    assert f.send(MessageType.DISCOVER, giaddr=IPv4Address("192.0.2.1")) is None
    unknown_link = relay_info(link=IPv4Address("192.0.2.0").packed)
    assert f.send(MessageType.DISCOVER, giaddr=RACK1_RELAY, options=unknown_link) is None
    unknown_subnet = {Opt.SUBNET_SELECTION: IPv4Address("198.51.100.0").packed}
    assert f.send(MessageType.DISCOVER, giaddr=RACK1_RELAY, options=unknown_subnet) is None
    assert f.send(MessageType.INFORM, ciaddr=IPv4Address("203.0.113.9")) is None
    assert f.send(MessageType.REQUEST, ciaddr=IPv4Address("203.0.113.9")) is None
    stats = f.responder.stats
    assert stats["foreign_relay"] == 1
    assert stats["foreign_link_selection"] == 1
    assert stats["foreign_subnet_selection"] == 1
    assert stats["foreign_client"] == 2
    assert not f.allocator.dirty and not f.allocator.active(f.now)


def test_reserved_node_gets_its_address_only_on_its_own_network() -> None:
    f = Fleet()
    hostname, mac, ip = R1_NODE
    assert f.send(MessageType.DISCOVER, mac, giaddr=RACK2_RELAY) is None
    assert f.send(MessageType.DISCOVER, mac, interface="eth9") is None
    assert f.responder.stats["fixed_on_other_network"] == 2
    asked = {Opt.REQUESTED_IP: ip.packed}
    wrong = f.send(MessageType.REQUEST, mac, giaddr=RACK2_RELAY, options=asked)
    assert wrong is not None and wrong.packet.message_type is MessageType.NAK
    ack = f.dora(mac, giaddr=RACK1_RELAY)
    assert ack.packet.yiaddr == ip and ack.packet.options[Opt.HOSTNAME] == hostname.encode()
    assert network_of(ack)[1] == "10.41.1.1"


def test_rfc2131_4_3_2_nak_for_an_address_of_another_rack() -> None:
    f = Fleet()
    other_rack = {Opt.REQUESTED_IP: IPv4Address("10.41.1.100").packed}
    nak = f.send(MessageType.REQUEST, giaddr=RACK2_RELAY, options=other_rack)
    assert nak is not None and nak.packet.message_type is MessageType.NAK
    assert nak.packet.yiaddr == UNSPECIFIED


def test_each_network_has_its_own_pool_and_moving_frees_the_old_address() -> None:
    f = Fleet()
    rack1 = [f.dora(f"52:54:00:ff:01:0{i}", giaddr=RACK1_RELAY).packet.yiaddr for i in range(3)]
    assert sorted(map(str, rack1)) == ["10.41.1.100", "10.41.1.101", "10.41.1.102"]
    assert f.send(MessageType.DISCOVER, "52:54:00:ff:01:09", giaddr=RACK1_RELAY) is None
    assert f.responder.stats["pool_exhausted"] == 1
    # Rack 2's pool is untouched by rack 1 running dry.
    moved = f.dora("52:54:00:ff:01:00", giaddr=RACK2_RELAY).packet.yiaddr
    assert moved == IPv4Address("10.41.2.100")
    # The client that moved let its rack-1 address go: a newcomer there gets it.
    again = f.send(MessageType.DISCOVER, "52:54:00:ff:01:09", giaddr=RACK1_RELAY)
    assert again is not None and again.packet.yiaddr == rack1[0]


def test_reservation_mode_is_per_network() -> None:
    doc = fleet_doc()
    doc["networks"][2]["dhcp"] = {"mode": "reservation", "lease_time": 1200}
    f = Fleet(fleet(doc))
    assert f.send(MessageType.DISCOVER, giaddr=RACK2_RELAY) is None
    assert f.responder.stats["unknown_mac"] == 1
    assert f.dora(R2_NODE[1], giaddr=RACK2_RELAY).packet.yiaddr == R2_NODE[2]
    assert f.send(MessageType.DISCOVER, giaddr=RACK1_RELAY) is not None  # rack1 stays full


def test_single_network_inventory_keeps_its_config() -> None:
    from test_dhcp_responder import inventory

    config = ServingConfig.from_inventory(inventory("full"))
    assert [n.name for n in config.networks.networks] == ["provisioning"]
    assert config.subnet == IPv4Network("10.9.0.0/16") and config.mode == "full"
    assert config.reserved == {IPv4Address("10.9.0.1")}


def test_subnet_table_finds_every_prefix_length_with_few_probes() -> None:
    table = SubnetTable(
        [(IPv4Network("10.41.1.0/24"), "a"), (IPv4Network("10.41.2.0/25"), "b"),
         (IPv4Network("10.42.0.0/16"), "c")]
    )  # fmt: skip
    assert table.get(IPv4Address("10.41.1.255")) == "a"
    assert table.get(IPv4Address("10.41.2.127")) == "b"
    assert table.get(IPv4Address("10.41.2.128")) is None
    assert table.get(IPv4Address("10.42.200.1")) == "c"
    assert len(table._probes) == 3  # one probe per prefix length, not per subnet


def test_foreign_relays_reach_the_metrics_of_a_live_server(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        server = DhcpServer(fleet(), store, interface="eth9")
        request = DhcpPacket(
            op=1, xid=1, chaddr=bytes(6), giaddr=IPv4Address("192.0.2.1"),
            options={Opt.MESSAGE_TYPE: bytes((MessageType.DISCOVER,))},
        )  # fmt: skip
        assert server.responder.respond(request, ("192.0.2.1", 67), 0.0) is None
        from plasmaboot.dhcp import metrics

        metrics.track(server)
        try:
            sample = REGISTRY.get_sample_value
            assert sample("plasmaboot_dhcp_events_total", {"event": "foreign_relay"}) == 1
        finally:
            metrics.untrack(server)
    finally:
        store.close()
