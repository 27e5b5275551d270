"""DhcpServer start-up checks and its /metrics export (no sockets needed)."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from test_dhcp_responder import INVENTORY

from plasmaboot.dhcp import DhcpConfigError, DhcpServer, metrics
from plasmaboot.inventory import parse_inventory
from plasmaboot.store import open_store

POOL_IP = IPv4Address("10.9.0.100")


async def test_server_without_a_named_interface_refuses_to_start(tmp_path: Path) -> None:
    inv = parse_inventory(
        yaml.safe_load(
            INVENTORY.replace("MODE", "full").replace(",\n            interface: eth9", "")
        )
    )
    store = open_store(tmp_path)
    try:
        server = DhcpServer(inv, store, interface=None)
        with pytest.raises(DhcpConfigError, match=r"dhcp\.interface in the inventory or pass"):
            await server.start()
    finally:
        store.close()


def test_metrics_export_the_live_server_counters() -> None:
    class Live:
        def __init__(self) -> None:
            self.stats = {"discover": 3, "nak": 1}
            self.active_leases = 2

    live = Live()
    metrics.track(live)
    try:
        sample = REGISTRY.get_sample_value
        assert sample("plasmaboot_dhcp_events_total", {"event": "discover"}) == 3
        assert sample("plasmaboot_dhcp_events_total", {"event": "nak"}) == 1
        assert sample("plasmaboot_dhcp_active_leases") == 2
    finally:
        metrics.untrack(live)


def test_reload_takes_new_fixed_hosts_and_keeps_leases(tmp_path: Path) -> None:
    inv = parse_inventory(yaml.safe_load(INVENTORY.replace("MODE", "full")))
    store = open_store(tmp_path)
    try:
        server = DhcpServer(inv, store, interface="eth9")
        lease = server.allocator.bind("52:54:00:ff:00:01", "52:54:00:ff:00:01", POOL_IP, 0.0)
        assert lease is not None
        moved = INVENTORY.replace("MODE", "full").replace("52:54:00:00:00:03", "52:54:00:00:00:33")
        server.reload(parse_inventory(yaml.safe_load(moved)))
        assert server.allocator.fixed_for("52:54:00:00:00:33") is not None
        assert server.allocator.fixed_for("52:54:00:00:00:03") is None
        assert server.allocator.lease_of("52:54:00:ff:00:01") == lease
        with pytest.raises(DhcpConfigError, match="restart the server"):
            server.reload(parse_inventory(yaml.safe_load(INVENTORY.replace("MODE", "reservation"))))
    finally:
        store.close()
