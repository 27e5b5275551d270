"""DhcpServer start-up checks, its /metrics export and its node view (no sockets needed)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from test_dhcp_responder import INVENTORY

from plasmaboot.dhcp import DhcpConfigError, DhcpServer, metrics
from plasmaboot.dhcp.server import NODE_POLL_S
from plasmaboot.inventory import parse_inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.store import SqliteStore, open_store

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


async def until(check: Callable[[], bool], within: float) -> float:
    """Seconds until `check()` holds; fails after `within`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < within, f"not within {within} s"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def state_of(server: DhcpServer, mac: str) -> State | None:
    view = server._node(mac)
    return view.state if view else None


async def test_the_node_view_follows_changes_made_elsewhere(tmp_path: Path) -> None:
    """Another process's transition (another connection to the file) is seen within a
    poll, one applied by this process's lifecycle service at once, and a MAC the
    inventory moved leaves the view."""
    inv = parse_inventory(yaml.safe_load(INVENTORY.replace("MODE", "full")))
    store = open_store(tmp_path)
    assert isinstance(store, SqliteStore)
    other = SqliteStore(store.path)  # what the CLI, in another process, writes through
    store.import_inventory(inv)
    server = DhcpServer(inv, store, interface="eth9")
    server._read_nodes()
    server._refresh_task = server._follow_nodes()
    try:
        two, three = "52:54:00:00:00:02", "52:54:00:00:00:03"
        assert state_of(server, two) is State.ENROLLED
        other.transition("node02", Event.PXE_BOOT, "cli")
        await until(lambda: state_of(server, two) is State.PXE_BOOTING, 1.0)

        server.lifecycle.fire("node03", Event.DECOMMISSION, "admin")
        waited = await until(lambda: state_of(server, three) is not State.ENROLLED, 1.0)
        assert waited < NODE_POLL_S / 2, "woken by the transition, not by the next poll"
        assert state_of(server, three) is State.DECOMMISSIONED

        moved = INVENTORY.replace("MODE", "full").replace("52:54:00:00:00:02", "52:54:00:00:00:22")
        other.import_inventory(parse_inventory(yaml.safe_load(moved)))
        await until(lambda: server._node("52:54:00:00:00:22") is not None, 1.0)
        assert server._node("52:54:00:00:00:02") is None, "the old MAC is no longer node02's"
        assert server.follow_nodes() == 0, "nothing new after the cursor: nothing re-read"
    finally:
        await server.stop()
        assert server.lifecycle.listeners == []
        other.close()
        store.close()


def test_a_discovered_record_folded_into_a_node_leaves_the_view(tmp_path: Path) -> None:
    """`node replace`: the new machine netbooted unknown (discovered), then the inventory
    gave node02 its MAC; the import folds the record in with no event of its own, and the
    view drops it all the same (the import's event names it)."""
    inv = parse_inventory(yaml.safe_load(INVENTORY.replace("MODE", "full")))
    store = open_store(tmp_path)
    try:
        store.import_inventory(inv)
        server = DhcpServer(inv, store, interface="eth9")
        server._read_nodes()
        new_mac = "52:54:00:00:00:99"
        discovered = store.discover(new_mac, "http").hostname
        server.follow_nodes()
        assert server._node(new_mac) is not None and discovered in server._node_macs

        replaced = INVENTORY.replace("MODE", "full").replace("52:54:00:00:00:02", new_mac)
        store.import_inventory(parse_inventory(yaml.safe_load(replaced)))
        server.follow_nodes()
        view = server._node(new_mac)
        assert view is not None and view.hostname == "node02"
        assert discovered not in server._node_macs
        assert server._node("52:54:00:00:00:02") is None
    finally:
        store.close()


def test_a_store_error_while_following_loses_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inv = parse_inventory(yaml.safe_load(INVENTORY.replace("MODE", "full")))
    store = open_store(tmp_path)
    try:
        store.import_inventory(inv)
        server = DhcpServer(inv, store, interface="eth9")
        server._read_nodes()
        store.transition("node02", Event.PXE_BOOT, "cli")

        def unavailable(hostname: str) -> None:
            raise sqlite3.OperationalError("database is locked")

        with monkeypatch.context() as patch:
            patch.setattr(store, "get_node", unavailable)
            with pytest.raises(sqlite3.OperationalError):
                server.follow_nodes()
        assert state_of(server, "52:54:00:00:00:02") is State.ENROLLED, "the view is kept"
        assert server.follow_nodes() == 1, "read again once the store answers"
        assert state_of(server, "52:54:00:00:00:02") is State.PXE_BOOTING
    finally:
        store.close()
