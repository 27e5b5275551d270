"""Several provisioning networks: the inventory's rules and the rendered DHCP/DNS/firewall
files follow every one of them (one subnet block per network)."""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any

import pytest
from test_dhcp_networks import RACK1_LOOPBACK, fleet, fleet_doc

from plasmaboot.inventory import InventoryError, parse_inventory
from plasmaboot.render import RenderContext, render
from plasmaboot.render.firewall import resolved_rules

Doc = dict[str, Any]


def problems(mutate: Callable[[Doc], None]) -> list[str]:
    doc = fleet_doc()
    mutate(doc)
    with pytest.raises(InventoryError) as info:
        parse_inventory(doc, "fleet.yaml")
    found = [p.render("fleet.yaml") for p in info.value.problems]
    assert all("Fix:" in line for line in found)
    return found


def one(mutate: Callable[[Doc], None], *needles: str) -> str:
    found = problems(mutate)
    matching = [line for line in found if all(n in line for n in needles)]
    assert matching, f"no problem mentions {needles}; got {found}"
    return matching[0]


def test_the_fleet_inventory_is_valid() -> None:
    inv = fleet()
    assert [n.name for n in inv.dhcp_networks] == ["provisioning", "rack1", "rack2"]
    assert inv.network_of(inv.nodes[3].provisioning_ip) == inv.network("rack1")


def test_node_outside_every_served_network() -> None:
    line = one(
        lambda d: d["nodes"][3].update(provisioning_ip="10.50.0.9"),
        "nodes[3].provisioning_ip",
        "not inside any provisioning network",
    )
    assert "rack1 10.41.1.0/24" in line and "dhcp: section" in line


def test_rack_node_inside_its_rack_pool() -> None:
    one(
        lambda d: d["nodes"][3].update(provisioning_ip="10.41.1.101"),
        "nodes[3].provisioning_ip",
        "pool 10.41.1.100-10.41.1.102 of network rack1",
    )


def test_rack_pool_outside_its_subnet() -> None:
    one(
        lambda d: d["networks"][1]["dhcp"]["pool"].update(end="10.41.2.50"),
        "networks[1].dhcp.pool.end",
        "keep the pool inside",
    )


def test_overlapping_rack_subnets() -> None:
    one(
        lambda d: d["networks"][2].update(subnet="10.41.0.0/16", gateway="10.41.0.1"),
        "networks[2].subnet",
        "overlaps networks[1]",
    )


def test_relay_inside_another_served_network() -> None:
    one(
        lambda d: d["networks"][1]["dhcp"].update(relays=["10.41.2.1"]),
        "networks[1].dhcp.relays[0]",
        "inside network rack2",
    )


def test_relay_listed_by_two_networks() -> None:
    one(
        lambda d: d["networks"][2]["dhcp"].update(relays=[str(RACK1_LOOPBACK)]),
        "networks[2].dhcp.relays[0]",
        "already listed by network rack1",
    )


def test_two_networks_on_one_interface() -> None:
    one(
        lambda d: d["networks"][2]["dhcp"].update(interface="eth9"),
        "networks[2].dhcp.interface",
        "provisioning answers on the same interface",
    )


def test_proxy_beside_leasing_networks() -> None:
    def mutate(d: Doc) -> None:
        d["networks"][2]["dhcp"] = {"mode": "proxy"}

    one(mutate, "networks[*].dhcp.mode", "give every dhcp: section mode proxy")


def test_malformed_relay_address() -> None:
    one(
        lambda d: d["networks"][1]["dhcp"].update(relays=["10.99.0.300"]),
        "networks[1].dhcp.relays[0]",
        "not a valid IPv4 address",
    )


def text(files: dict[str, str | bytes], name: str) -> str:
    content = files[name]
    return content if isinstance(content, str) else content.decode()


def test_dhcpd_has_one_subnet_per_network_and_a_shared_network_for_the_relay() -> None:
    conf = text(render("dhcpd", fleet(), RenderContext()), "dhcpd.conf")
    for block in (
        "subnet 10.40.0.0 netmask 255.255.255.0 {",
        "subnet 10.41.1.0 netmask 255.255.255.0 {",
        "subnet 10.41.2.0 netmask 255.255.255.128 {",
    ):
        assert block in conf
    assert "shared-network rack1 {" in conf
    assert f"subnet {RACK1_LOOPBACK} netmask 255.255.255.255 {{ }}" in conf
    assert "option routers 10.41.2.1;" in conf and "range 10.41.2.100 10.41.2.110;" in conf


def test_kea_reserves_each_node_in_its_own_subnet_and_knows_the_relay() -> None:
    doc = json.loads(text(render("kea", fleet(), RenderContext()), "kea-dhcp4.json"))
    subnets = {s["subnet"]: s for s in doc["Dhcp4"]["subnet4"]}
    assert list(subnets) == ["10.40.0.0/24", "10.41.1.0/24", "10.41.2.0/25"]
    assert [r["hostname"] for r in subnets["10.41.1.0/24"]["reservations"]] == ["r1n1"]
    assert [r["hostname"] for r in subnets["10.41.2.0/25"]["reservations"]] == ["r2n1"]
    assert len(subnets["10.40.0.0/24"]["reservations"]) == 3
    assert subnets["10.41.1.0/24"]["relay"] == {"ip-addresses": [str(RACK1_LOOPBACK)]}
    assert subnets["10.41.2.0/25"]["valid-lifetime"] == 1200
    assert {"name": "routers", "data": "10.41.2.1"} in subnets["10.41.2.0/25"]["option-data"]


def test_dnsmasq_has_one_range_per_network_and_a_shared_network_for_the_relay() -> None:
    conf = text(render("dnsmasq", fleet(), RenderContext()), "dnsmasq.conf")
    assert "dhcp-range=set:net1,10.41.1.100,10.41.1.102,255.255.255.0,900" in conf
    assert "dhcp-range=set:net2,10.41.2.100,10.41.2.110,255.255.255.128,1200" in conf
    assert "dhcp-option=tag:net2,option:router,10.41.2.1" in conf
    assert f"shared-network={RACK1_LOOPBACK},10.41.1.0" in conf


def test_zones_have_a_reverse_zone_per_rack() -> None:
    files = render("zones", fleet(), RenderContext())
    assert "1.41.10.in-addr.arpa.zone" in files and "2.41.10.in-addr.arpa.zone" in files
    assert "r2n1" in text(files, "fleet.internal.zone")


def test_firewall_without_production_opens_cluster_ports_to_every_rack() -> None:
    inv = fleet()
    rules = {r.rule.port: r.sources for r in resolved_rules(inv, inv.profiles["cp"])}
    racks = tuple(IPv4Network(n) for n in ("10.40.0.0/24", "10.41.1.0/24", "10.41.2.0/25"))
    assert rules[2380] == racks and rules[22] == racks
    nft = text(render("nftables", inv, RenderContext()), "cp.nft")
    assert "ip saddr { 10.40.0.0/24, 10.41.1.0/24, 10.41.2.0/25 } tcp dport 2380" in nft
    ipt = text(render("iptables", inv, RenderContext()), "cp.rules")
    assert "-s 10.40.0.0/24,10.41.1.0/24,10.41.2.0/25 -p tcp -m tcp --dport 2380" in ipt
