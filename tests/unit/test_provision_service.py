"""The one write path for lifecycle state: whoever fires a transition (DHCP, the CLI's
node operations, the APIs), it is counted in /metrics and heard by every listener."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from plasmaboot.dhcp import DhcpServer
from plasmaboot.inventory import load_inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.operations.nodes import NodeOperations
from plasmaboot.provision import Provisioner, ProvisionerSettings, TokenRefused
from plasmaboot.store import EventRecord, SqliteStore

ROOT = Path(__file__).resolve().parents[2]


def transitions(event: Event, to: State) -> float:
    sample = REGISTRY.get_sample_value(
        "plasmaboot_lifecycle_transitions_total", {"event": event.value, "to": to.value}
    )
    return sample or 0.0


@pytest.fixture
def provisioner(tmp_path: Path) -> Provisioner:
    inv = load_inventory(ROOT / "examples/lab/miniature.yaml")
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(inv)
    settings = ProvisionerSettings(tmp_path, tmp_path, tmp_path, "http://10.77.0.1:8080")
    return Provisioner(inv, store, settings)


def test_dhcp_and_cli_transitions_are_counted_and_heard(provisioner: Provisioner) -> None:
    heard: list[EventRecord] = []
    provisioner.listeners.append(heard.append)
    before_pxe = transitions(Event.PXE_BOOT, State.PXE_BOOTING)
    before_decommission = transitions(Event.DECOMMISSION, State.DECOMMISSIONED)

    dhcp = DhcpServer(
        provisioner.inventory, provisioner.store, interface="pb-lab0",
        lifecycle=provisioner.lifecycle,
    )  # fmt: skip
    dhcp._transition("node01", {"mac": "52:54:00:12:34:56", "arch": 0, "vendor_class": None})
    ops = NodeOperations(provisioner.inventory, provisioner.store, lifecycle=provisioner.lifecycle)
    asyncio.run(ops.decommission("node02"))

    assert [(e.node, e.event, e.actor) for e in heard] == [
        ("node01", "pxe-boot", "dhcp"),
        ("node02", "decommission", "operator"),
    ]
    assert transitions(Event.PXE_BOOT, State.PXE_BOOTING) == before_pxe + 1
    assert transitions(Event.DECOMMISSION, State.DECOMMISSIONED) == before_decommission + 1


def test_discovery_goes_through_the_provisioner_once_per_mac(provisioner: Provisioner) -> None:
    counted = REGISTRY.get_sample_value("plasmaboot_nodes_discovered_total", {"actor": "http"})
    first = provisioner.discover("52:54:00:aa:bb:cc", "http", {"remote": "10.77.0.9"})
    again = provisioner.discover("52:54:00:aa:bb:cc", "http", {"remote": "10.77.0.9"})
    assert first.hostname == again.hostname and first.state is State.DISCOVERED
    after = REGISTRY.get_sample_value("plasmaboot_nodes_discovered_total", {"actor": "http"})
    assert after == (counted or 0.0) + 1


def test_reprovision_and_decommission_revoke_the_nodes_tokens(provisioner: Provisioner) -> None:
    session = provisioner.tokens.issue_session("node01")
    assert provisioner.tokens.verify_session(session).hostname == "node01"
    provisioner.fire("node01", Event.DECOMMISSION, "admin")
    with pytest.raises(TokenRefused, match="unknown session token"):
        provisioner.tokens.verify_session(session)
