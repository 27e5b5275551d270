"""The SQLite store: idempotent import, history kept, migrations, leases, tokens."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import yaml

from plasmaboot.inventory import Inventory, parse_inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.store import Lease, SqliteStore, Token, UnknownNode
from plasmaboot.store.migrations import LATEST

ROOT = Path(__file__).resolve().parents[2]


def lab_doc() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "examples/lab/cluster.yaml").read_text())
    assert isinstance(data, dict)
    return data


def lab(mutate: Any = None) -> Inventory:
    doc = copy.deepcopy(lab_doc())
    if mutate:
        mutate(doc)
    return parse_inventory(doc)


def test_import_is_idempotent(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    first = store.import_inventory(lab())
    assert first.added == ["node01", "node02", "node03", "node04"]
    events = store.events()
    second = store.import_inventory(lab())
    assert not second.changed and len(second.unchanged) == 4
    assert store.events() == events


def test_reimport_keeps_state_and_history(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(lab())
    store.transition("node01", Event.PXE_BOOT, "dhcp")

    def new_mac(doc: dict[str, Any]) -> None:
        doc["nodes"][0]["macs"] = ["52:54:00:aa:bb:cc"]

    result = store.import_inventory(lab(new_mac))
    assert result.updated == ["node01"]
    node = store.get_node("node01")
    assert node is not None and node.state is State.PXE_BOOTING
    assert node.macs == ("52:54:00:aa:bb:cc",)
    assert store.node_by_mac("52:54:00:12:34:56") is None
    assert [e.event for e in store.events("node01")] == ["enroll", "pxe-boot", "inventory-updated"]
    assert store.events("node01")[-1].detail["fields"] == ["macs"]


def test_node_removed_from_inventory_keeps_its_history(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(lab())
    result = store.import_inventory(lab(lambda d: d["nodes"].pop()))
    assert result.retired == ["node04"]
    node = store.get_node("node04")
    assert node is not None and not node.in_inventory
    assert [e.event for e in store.events("node04")] == ["enroll", "removed-from-inventory"]
    back = store.import_inventory(lab())
    assert back.updated == ["node04"]
    node = store.get_node("node04")
    assert node is not None and node.in_inventory


def test_discovered_machine_is_adopted_by_the_inventory(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(lab(lambda d: d["nodes"].pop()))
    found = store.discover("52:54:00:12:34:59", "http", {"arch": 7})
    assert found.state is State.DISCOVERED and found.hostname == "discovered-525400123459"
    assert store.discover("52:54:00:12:34:59", "http").hostname == found.hostname
    store.import_inventory(lab())
    node = store.get_node("node04")
    assert node is not None and node.state is State.ENROLLED
    assert store.get_node(found.hostname) is None
    assert [e.event for e in store.events("node04")] == ["discovered", "enroll"]


def test_state_counts(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(lab())
    store.transition("node02", Event.PXE_BOOT, "dhcp")
    assert store.state_counts() == {"enrolled": 3, "pxe-booting": 1}


def test_migration_from_version_1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "db"
    old = SqliteStore(path, migrate_to=1)
    old.import_inventory(lab())
    old.transition("node01", Event.PXE_BOOT, "dhcp")
    assert old.schema_version() == 1
    old.close()
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "leases" not in tables

    store = SqliteStore(path)
    assert store.schema_version() == LATEST
    node = store.get_node("node01")
    assert node is not None and node.state is State.PXE_BOOTING
    store.save_leases([Lease("10.77.0.100", "aa", "52:54:00:00:00:01", "bound", 1e10)])
    assert [le.ip for le in store.leases()] == ["10.77.0.100"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 5}")
    try:
        SqliteStore(path)
    except RuntimeError as exc:
        assert "newer" in str(exc)
    else:
        raise AssertionError("a newer schema must be refused")


HARDWARE = {
    "system": {"vendor": "QEMU", "product": "Standard PC", "serial": None, "uuid": None},
    "cpu": {"model": "AMD EPYC", "count": 2},
    "memory_bytes": 536870912,
    "disks": [{"name": "vda", "size_bytes": 4194304, "model": None, "serial": None,
               "rotational": True, "removable": False}],
    "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56", "link": "up", "speed_mbps": None}],
}  # fmt: skip


def test_migration_from_version_2_keeps_nodes_and_adds_hardware(tmp_path: Path) -> None:
    path = tmp_path / "db"
    old = SqliteStore(path, migrate_to=2)
    old.import_inventory(lab())
    old.transition("node01", Event.PXE_BOOT, "dhcp")
    old.save_leases([Lease("10.77.0.100", "aa", "52:54:00:00:00:01", "bound", 1e10)])
    before = old.get_node("node01")
    assert before is not None and before.hardware is None  # read without the column
    events = old.events()
    old.close()
    with sqlite3.connect(path) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(nodes)")}
    assert "hardware" not in columns

    store = SqliteStore(path)
    assert store.schema_version() == LATEST >= 3
    assert [n.hostname for n in store.list_nodes()] == ["node01", "node02", "node03", "node04"]
    assert store.get_node("node01") == before
    assert store.events() == events and [le.ip for le in store.leases()] == ["10.77.0.100"]

    store.set_hardware("node01", HARDWARE)
    store.close()
    node = SqliteStore(path).get_node("node01")
    assert node is not None and node.hardware == HARDWARE and node.hardware_at is not None
    assert node.state is State.PXE_BOOTING and node.updated_at == before.updated_at
    assert node.as_json()["hardware"] == HARDWARE


def test_hardware_is_replaced_and_an_unknown_node_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(lab())
    events = store.events()
    store.set_hardware("node02", HARDWARE)
    store.set_hardware("node02", dict(HARDWARE, memory_bytes=1 << 30))
    node = store.get_node("node02")
    assert node is not None and node.hardware is not None
    assert node.hardware["memory_bytes"] == 1 << 30
    assert store.events() == events, "facts are not an event; the report's event keeps them"
    other = store.get_node("node01")
    assert other is not None and other.hardware is None and other.as_json()["hardware"] is None
    try:
        store.set_hardware("node99", HARDWARE)
    except UnknownNode as exc:
        assert exc.hostname == "node99"
    else:
        raise AssertionError("facts for a node that does not exist must be refused")


def test_leases_survive_reopen(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    batch = [
        Lease(f"10.77.0.{100 + i}", f"01:{i:02x}", f"52:54:00:00:00:{i:02x}", "bound", 1e10)
        for i in range(20)
    ]
    store.save_leases(batch)
    store.save_leases([Lease("10.77.0.100", "01:00", "52:54:00:00:00:00", "released", 5.0)])
    store.delete_lease("10.77.0.119")
    store.close()
    reopened = SqliteStore(tmp_path / "db")
    leases = {le.ip: le for le in reopened.leases()}
    assert len(leases) == 19 and leases["10.77.0.100"].state == "released"


def test_a_token_hash_can_be_claimed_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    assert store.claim_token(Token("h1", "node01", "boot", 1.0, 100.0, 1.0))
    assert not store.claim_token(Token("h1", "node01", "boot", 2.0, 100.0, 2.0))
    token = store.get_token("h1")
    assert token is not None and token.used_at == 1.0
    assert store.claim_token(Token("s1", "node01", "session", 1.0, 100.0, None))
    assert store.claim_token(Token("n1", "node01", "node", 1.0, 100.0, None))
    store.revoke_tokens("node01", "node")
    assert store.get_token("n1") is None and store.get_token("s1") is not None
    store.revoke_tokens("node01")
    assert store.get_token("s1") is None
    # a spent boot token stays spent after a revocation: its replay is still refused
    assert not store.claim_token(Token("h1", "node01", "boot", 3.0, 100.0, 3.0))
