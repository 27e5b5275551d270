"""Several provisioning networks behind one real relay (isc-dhcp-relay), with real clients.

    client ns (rack1) ─┐
    client ns (rack2) ─┼─ relay ns (dhcrelay, router) ── server ns (plasmaboot)
    client ns (nobody) ┘

Each rack segment is its own /24 with its own router (the relay's address there, also
its giaddr): a client on each must get an address from its rack's /24 and that rack's
router and lease time; a client on a segment the inventory does not name gets nothing,
and the server counts the drop.
"""
# ruff: noqa: F811  (pytest fixtures imported from the support module)

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from dhcp_support import (  # noqa: F401  (fixtures)
    Namespaces,
    Rack,
    ServerProcess,
    dhclient_lease,
    fleet_inventory_yaml,
    namespaces,
    require_root_and,
    servers,
    udhcpc_lease,
)
from polling import wait_for

pytestmark = pytest.mark.integration

SERVER_IP = "10.231.0.1"
RELAY_UP = "10.231.0.2"
RACK1 = Rack("rack1", "10.232.1.0/24", "10.232.1.1", ("10.232.1.100", "10.232.1.150"), 900)
RACK2 = Rack("rack2", "10.232.2.0/24", "10.232.2.1", ("10.232.2.100", "10.232.2.150"), 1200)
NOBODY_ROUTER = "10.233.9.1"  # a segment behind the same relay that no network names
RACK1_NODE = ("rack1n1", "52:54:00:e1:01:01", "10.232.1.20")
RACK2_CLIENT = "52:54:00:e1:02:99"
NOBODY_CLIENT = "52:54:00:e1:09:99"


def _fleet(nets: Namespaces, servers: list[ServerProcess], tmp: Path) -> dict[str, str]:
    """Server, relay and three client segments; returns the client namespace per segment."""
    srv, relay = nets.ns("s"), nets.ns("r")
    clients = {"rack1": nets.ns("a"), "rack2": nets.ns("b"), "nobody": nets.ns("u")}
    nets.link(srv, "pbdsv", relay, "pbdru")
    server_if, up = nets.ifname("pbdsv"), nets.ifname("pbdru")
    nets.exec(srv, "ip", "addr", "add", f"{SERVER_IP}/24", "dev", server_if)
    nets.exec(relay, "ip", "addr", "add", f"{RELAY_UP}/24", "dev", up)
    for supernet in ("10.232.0.0/16", "10.233.0.0/16"):
        nets.exec(srv, "ip", "route", "add", supernet, "via", RELAY_UP)
    downs = []
    segments = (
        ("rack1", "1", RACK1.router, RACK1_NODE[1]),
        ("rack2", "2", RACK2.router, RACK2_CLIENT),
        ("nobody", "3", NOBODY_ROUTER, NOBODY_CLIENT),
    )
    for segment, n, router, mac in segments:
        nets.link(relay, f"pbdr{n}", clients[segment], f"pbdc{n}", mac)
        down = nets.ifname(f"pbdr{n}")
        nets.exec(relay, "ip", "addr", "add", f"{router}/24", "dev", down)
        downs += ["-id", down]
    inventory = tmp / "cluster.yaml"
    inventory.write_text(fleet_inventory_yaml(server_if, (RACK1, RACK2), nodes=(RACK1_NODE,)))
    servers.append(ServerProcess(srv, inventory, tmp / "state", server_if).start())
    relay_log = (tmp / "dhcrelay.log").open("ab")
    subprocess.Popen(
        ["ip", "netns", "exec", relay, "dhcrelay", "-4", "-d", *downs, "-iu", up, SERVER_IP],
        stdout=relay_log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip  (killed with the namespace)
    assert wait_for(lambda: "Sending on" in (tmp / "dhcrelay.log").read_text(), 10)
    return clients


def test_rfc2131_4_3_1_each_rack_behind_the_relay_gets_its_own_subnet_and_router(
    namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    require_root_and("dhcrelay", "dhclient", "udhcpc")
    nets = namespaces
    clients = _fleet(nets, servers, tmp_path)
    server = servers[0]
    relay_log = tmp_path / "dhcrelay.log"

    rack1 = dhclient_lease(nets, clients["rack1"], nets.ifname("pbdc1"), tmp_path)
    assert rack1.get("address") == RACK1_NODE[2], server.log + relay_log.read_text()
    assert rack1["routers"] == RACK1.router
    assert rack1["subnet-mask"] == "255.255.255.0"
    assert rack1["dhcp-lease-time"] == str(RACK1.lease_time)
    assert rack1["host-name"] == f'"{RACK1_NODE[0]}"'

    rack2 = udhcpc_lease(nets, clients["rack2"], nets.ifname("pbdc2"), tmp_path)
    assert rack2, server.log + relay_log.read_text()
    address = IPv4Address(rack2["address"])
    assert address in IPv4Network(RACK2.subnet)
    assert IPv4Address(RACK2.pool[0]) <= address <= IPv4Address(RACK2.pool[1])
    assert rack2["routers"] == RACK2.router
    assert rack2["subnet-mask"] == "255.255.255.0"
    assert rack2["lease-time"] == str(RACK2.lease_time)

    # The replies went back through the relay's address on each rack (RFC 2131 4.1).
    assert server.logged(f"via ('{RACK1.router}', 67)", f"via ('{RACK2.router}', 67)"), server.log


def test_a_segment_no_network_names_gets_nothing_and_is_counted(
    namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    require_root_and("dhcrelay", "dhclient")
    nets = namespaces
    clients = _fleet(nets, servers, tmp_path)
    server = servers[0]
    lease = dhclient_lease(nets, clients["nobody"], nets.ifname("pbdc3"), tmp_path, timeout_s=5)
    assert lease == {}, lease
    assert server.logged(f"no answer to DISCOVER from {NOBODY_CLIENT}"), server.log
    server.kill()
    assert server.logged("dhcp stopped:"), server.log
    stopped = next(line for line in server.log.splitlines() if "dhcp stopped:" in line)
    counts = dict(field.split("=") for field in stopped.split("dhcp stopped:")[1].split())
    assert int(counts["foreign_relay"]) >= 1, stopped  # the relay forwarded; we dropped
    assert int(counts.get("sent_offer", "0")) == 0, stopped
