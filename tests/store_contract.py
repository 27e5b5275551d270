"""The store contract: what every `Store` does, checked against each implementation.

`StoreContract` holds the tests; a test module subclasses it as `Test...` and gives the
fixture `open_store`: a callable opening a new store on one fresh database (SQLite in
tests/unit/test_store.py, PostgreSQL in tests/integration/test_store_postgres.py).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from plasmaboot.inventory import Inventory, parse_inventory
from plasmaboot.lifecycle import Event, IllegalTransition, State
from plasmaboot.provision.tokens import AgentTokens, signing_key
from plasmaboot.store import Lease, LeaseConflict, ServerHeartbeat, Store, Token, UnknownNode

ROOT = Path(__file__).resolve().parents[1]

OpenStore = Callable[[], Store]


def lab_doc() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "examples/lab/miniature.yaml").read_text())
    assert isinstance(data, dict)
    return data


def lab(mutate: Any = None) -> Inventory:
    doc = copy.deepcopy(lab_doc())
    if mutate:
        mutate(doc)
    return parse_inventory(doc)


HARDWARE = {
    "system": {"vendor": "QEMU", "product": "Standard PC", "serial": None, "uuid": None},
    "cpu": {"model": "AMD EPYC", "count": 2},
    "memory_bytes": 536870912,
    "disks": [{"name": "vda", "size_bytes": 4194304, "model": None, "serial": None,
               "rotational": True, "removable": False}],
    "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56", "link": "up", "speed_mbps": None}],
}  # fmt: skip

FUTURE = 1e10  # an expiry that has not come


def bound(ip: str, key: str, mac: str, expires_at: float = FUTURE) -> Lease:
    return Lease(ip, key, mac, "bound", expires_at)


def together(*calls: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run `calls` in threads released at one instant; (results, errors)."""
    start = threading.Barrier(len(calls))
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(call: Callable[[], Any]) -> None:
        start.wait(timeout=10)
        try:
            results.append(call())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a racing call never returned"
    return results, errors


class StoreContract:
    @pytest.fixture
    def store(self, open_store: OpenStore) -> Iterator[Store]:
        store = open_store()
        yield store
        store.close()

    # ---- nodes, import, lifecycle ------------------------------------------------------

    def test_import_is_idempotent(self, store: Store) -> None:
        first = store.import_inventory(lab())
        assert first.added == ["node01", "node02", "node03", "node04"]
        events = store.events()
        second = store.import_inventory(lab())
        assert not second.changed and len(second.unchanged) == 4
        assert store.events() == events

    def test_reimport_keeps_state_and_history(self, store: Store) -> None:
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
        assert [e.event for e in store.events("node01")] == [
            "enroll",
            "pxe-boot",
            "inventory-updated",
        ]
        assert store.events("node01")[-1].detail["fields"] == ["macs"]

    def test_node_removed_from_inventory_keeps_its_history(self, store: Store) -> None:
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

    def test_discovered_machine_is_adopted_by_the_inventory(self, store: Store) -> None:
        store.import_inventory(lab(lambda d: d["nodes"].pop()))
        found = store.discover("52:54:00:12:34:59", "http", {"arch": 7})
        assert found.state is State.DISCOVERED and found.hostname == "discovered-525400123459"
        assert store.discover("52:54:00:12:34:59", "http").hostname == found.hostname
        assert found.macs == ("52:54:00:12:34:59",) and not found.in_inventory
        store.import_inventory(lab())
        node = store.get_node("node04")
        assert node is not None and node.state is State.ENROLLED
        assert store.get_node(found.hostname) is None
        assert [e.event for e in store.events("node04")] == ["discovered", "enroll"]
        assert store.events("node04")[-1].detail == {"discovered_as": found.hostname}

    def test_a_known_node_given_a_discovered_machines_mac_folds_that_record_in(
        self, store: Store
    ) -> None:
        store.import_inventory(lab())
        store.transition("node02", Event.PXE_BOOT, "dhcp")
        found = store.discover("52:54:00:aa:bb:cc", "http", {"arch": 7})

        def replaced(doc: dict[str, Any]) -> None:  # node02's NIC is the new machine's now
            doc["nodes"][1]["macs"] = ["52:54:00:aa:bb:cc"]

        result = store.import_inventory(lab(replaced))
        assert result.updated == ["node02"]
        node = store.get_node("node02")
        assert node is not None and node.macs == ("52:54:00:aa:bb:cc",)
        assert node.state is State.PXE_BOOTING  # the node's lifecycle, not the record's
        assert store.get_node(found.hostname) is None and store.events(found.hostname) == []
        assert [e.event for e in store.events("node02")] == [
            "enroll", "pxe-boot", "discovered", "inventory-updated",
        ]  # fmt: skip
        assert store.events("node02")[-1].detail["discovered_as"] == [found.hostname]
        assert all(n.state is not State.DISCOVERED for n in store.list_nodes())

    def test_state_counts(self, store: Store) -> None:
        store.import_inventory(lab())
        store.transition("node02", Event.PXE_BOOT, "dhcp")
        assert store.state_counts() == {"enrolled": 3, "pxe-booting": 1}

    def test_lookups_by_name_and_mac(self, store: Store) -> None:
        store.import_inventory(lab())
        assert [n.hostname for n in store.list_nodes()] == ["node01", "node02", "node03", "node04"]
        by_mac = store.node_by_mac("52-54-00-12-34-57")  # any spelling of the MAC
        assert by_mac is not None and by_mac == store.get_node("node02")
        assert by_mac.profile and by_mac.provisioning_ip and by_mac.spec["hostname"] == "node02"
        assert store.get_node("node99") is None and store.node_by_mac("52:54:00:ff:ff:ff") is None

    def test_transition_applies_the_table_and_records_the_event(self, store: Store) -> None:
        store.import_inventory(lab())
        before = store.get_node("node01")
        assert before is not None and before.target is None
        record = store.transition("node01", Event.PXE_BOOT, "dhcp", {"arch": 7})
        assert (record.from_state, record.to_state, record.event) == (
            "enrolled",
            "pxe-booting",
            "pxe-boot",
        )
        assert record.actor == "dhcp" and record.detail == {"arch": 7}
        assert store.events("node01")[-1] == record
        node = store.get_node("node01")
        assert node is not None and node.state is State.PXE_BOOTING
        assert node.target is State.ACTIVE and node.updated_at >= before.updated_at

    def test_illegal_and_stale_transitions_change_nothing(self, store: Store) -> None:
        store.import_inventory(lab())
        events = store.events()
        with pytest.raises(IllegalTransition):
            store.transition("node01", Event.JOINED, "agent")
        with pytest.raises(IllegalTransition):  # the caller saw another state: refused
            store.transition("node01", Event.PXE_BOOT, "dhcp", expect=State.BOOT_FAILED)
        with pytest.raises(UnknownNode):
            store.transition("node99", Event.PXE_BOOT, "dhcp")
        node = store.get_node("node01")
        assert node is not None and node.state is State.ENROLLED and store.events() == events
        store.transition("node01", Event.PXE_BOOT, "dhcp", expect=State.ENROLLED)
        with pytest.raises(IllegalTransition):  # the same event again: not from here
            store.transition("node01", Event.PXE_BOOT, "dhcp")

    def test_two_connections_racing_one_transition_exactly_one_wins(
        self, store: Store, open_store: OpenStore
    ) -> None:
        """Two servers (two connections) fire pxe-boot for one node at the same instant:
        the database serialises them, so one moves it and the other is refused."""
        store.import_inventory(lab())
        other = open_store()
        try:
            for name in ("node01", "node02", "node03", "node04"):
                won, refused = together(
                    partial(store.transition, name, Event.PXE_BOOT, "server-a"),
                    partial(other.transition, name, Event.PXE_BOOT, "server-b"),
                )
                assert len(won) == 1 and [type(e) for e in refused] == [IllegalTransition]
                assert won[0].from_state == "enrolled" and won[0].to_state == "pxe-booting"
                assert [e.event for e in other.events(name)] == ["enroll", "pxe-boot"]
                node = store.get_node(name)
                assert node is not None and node.state is State.PXE_BOOTING
        finally:
            other.close()

    def test_record_logs_without_changing_state(self, store: Store) -> None:
        store.import_inventory(lab())
        record = store.record("node03", "install-output", "installer", {"line": "ok\u0000"})
        assert (record.from_state, record.to_state) == ("enrolled", "enrolled")
        assert store.events("node03")[-1].detail == {"line": "ok\u0000"}
        node = store.get_node("node03")
        assert node is not None and node.state is State.ENROLLED
        with pytest.raises(UnknownNode):
            store.record("node99", "install-output", "installer")

    def test_events_after_and_limit(self, store: Store) -> None:
        store.import_inventory(lab())
        for _ in range(3):
            store.record("node01", "tick", "test")
        everything = store.events()
        assert [e.id for e in everything] == sorted(e.id for e in everything)
        assert len(everything) == 7  # 4 enrolls, 3 ticks
        assert store.events(limit=2) == everything[-2:]
        assert store.events(after=everything[3].id) == everything[4:]
        assert store.events(after=everything[2].id, limit=2) == everything[-2:]
        assert [e.event for e in store.events("node01", limit=2)] == ["tick", "tick"]
        assert store.events(after=everything[-1].id) == []

    def test_events_page_reads_forward_with_filters(self, store: Store) -> None:
        store.import_inventory(lab())
        store.transition("node01", Event.PXE_BOOT, "dhcp")
        store.record("node02", "tick", "test")
        everything = store.events()
        assert len(everything) == 6  # 4 enrolls, a pxe-boot, a tick
        assert store.events_page(0, 2) == everything[:2]  # the oldest, not the newest
        assert store.events_page(everything[1].id, 3) == everything[2:5]
        assert store.events_page(everything[-1].id, 10) == []
        node01 = store.events_page(0, 10, nodes=["node01"])
        assert [e.event for e in node01] == ["enroll", "pxe-boot"]
        assert store.events_page(0, 10, nodes=[]) == []
        both = store.events_page(0, 10, nodes=["node01", "node02"])
        assert [e.node for e in both] == ["node01", "node02", "node01", "node02"]
        # before or after the event: pxe-boot left enrolled; the tick was recorded there
        enrolled = store.events_page(everything[3].id, 10, states=["enrolled"])
        assert [e.event for e in enrolled] == ["pxe-boot", "tick"]
        booting = store.events_page(0, 10, nodes=["node01"], states=["pxe-booting"])
        assert [e.event for e in booting] == ["pxe-boot"]

    def test_hardware_is_replaced_and_an_unknown_node_is_refused(self, store: Store) -> None:
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

    def test_hardware_survives_reopen_and_leaves_the_state_alone(
        self, store: Store, open_store: OpenStore
    ) -> None:
        store.import_inventory(lab())
        store.transition("node01", Event.PXE_BOOT, "dhcp")
        before = store.get_node("node01")
        assert before is not None
        store.set_hardware("node01", HARDWARE)
        store.close()
        reopened = open_store()
        node = reopened.get_node("node01")
        reopened.close()
        assert node is not None and node.hardware == HARDWARE and node.hardware_at is not None
        assert node.state is State.PXE_BOOTING and node.updated_at == before.updated_at
        assert node.as_json()["hardware"] == HARDWARE

    # ---- leases ------------------------------------------------------------------------

    def test_leases_survive_reopen(self, store: Store, open_store: OpenStore) -> None:
        batch = [
            Lease(f"10.77.0.{100 + i}", f"01:{i:02x}", f"52:54:00:00:00:{i:02x}", "bound", 1e10)
            for i in range(20)
        ]
        assert store.save_leases(batch) == []
        assert (
            store.save_leases([Lease("10.77.0.100", "01:00", "52:54:00:00:00:00", "released", 5.0)])
            == []
        )
        store.delete_lease("10.77.0.119")
        store.close()
        reopened = open_store()
        leases = {le.ip: le for le in reopened.leases()}
        reopened.close()
        assert len(leases) == 19 and leases["10.77.0.100"].state == "released"
        assert leases["10.77.0.101"] == batch[1]

    def test_lease_of_another_client_is_refused_and_the_rest_written(self, store: Store) -> None:
        mine = bound("10.77.0.100", "01:aa", "52:54:00:00:00:aa")
        assert store.save_leases([mine]) == []
        theirs = bound("10.77.0.100", "01:bb", "52:54:00:00:00:bb")
        other = bound("10.77.0.101", "01:bb", "52:54:00:00:00:bb")
        conflicts = store.save_leases([theirs, other])
        assert conflicts == [LeaseConflict(theirs, mine)]
        assert "10.77.0.100" in str(conflicts[0]) and "01:aa" in str(conflicts[0])
        assert store.leases() == [mine, other]

    def test_the_holder_renews_and_releases_its_own_lease(self, store: Store) -> None:
        mine = bound("10.77.0.100", "01:aa", "52:54:00:00:00:aa")
        store.save_leases([mine])
        renewed = bound("10.77.0.100", "01:aa", "52:54:00:00:00:aa", FUTURE + 600)
        assert store.save_leases([renewed]) == []
        # the same machine with another client id (firmware, iPXE, OS): the MAC decides
        ipxe = bound("10.77.0.100", "ff:00:11", "52:54:00:00:00:aa")
        assert store.save_leases([ipxe]) == []
        # a decline's quarantine keeps the MAC, not the client id
        quarantine = Lease("10.77.0.100", "", "52:54:00:00:00:aa", "declined", FUTURE)
        assert store.save_leases([quarantine]) == []
        assert store.leases() == [quarantine]
        stranger = bound("10.77.0.100", "01:bb", "52:54:00:00:00:bb")
        assert store.save_leases([stranger]) == [LeaseConflict(stranger, quarantine)]

    def test_a_released_or_expired_address_goes_to_another_client(self, store: Store) -> None:
        now = time.time()
        store.save_leases(
            [
                Lease("10.77.0.100", "01:aa", "52:54:00:00:00:aa", "released", FUTURE),
                bound("10.77.0.101", "01:aa", "52:54:00:00:00:aa", now - 1),
            ]
        )
        taken = [
            bound("10.77.0.100", "01:bb", "52:54:00:00:00:bb"),
            bound("10.77.0.101", "01:cc", "52:54:00:00:00:cc"),
        ]
        assert store.save_leases(taken) == []
        assert store.leases() == taken

    def test_a_release_does_not_erase_another_clients_binding(self, store: Store) -> None:
        theirs = bound("10.77.0.100", "01:bb", "52:54:00:00:00:bb")
        store.save_leases([theirs])
        stale = Lease("10.77.0.100", "01:aa", "52:54:00:00:00:aa", "released", time.time())
        assert store.save_leases([stale]) == [LeaseConflict(stale, theirs)]
        assert store.leases() == [theirs]

    def test_delete_is_guarded_by_the_expiry_read(self, store: Store) -> None:
        store.save_leases([bound("10.77.0.100", "01:aa", "52:54:00:00:00:aa", 1000.0)])
        store.save_leases([bound("10.77.0.100", "01:aa", "52:54:00:00:00:aa", 2000.0)])
        assert not store.delete_lease("10.77.0.100", expires_at=1000.0), "renewed since"
        assert [le.expires_at for le in store.leases()] == [2000.0]
        assert store.delete_lease("10.77.0.100", expires_at=2000.0)
        assert store.leases() == [] and not store.delete_lease("10.77.0.100")

    def test_leases_at_reads_the_named_addresses(self, store: Store) -> None:
        rows = [bound(f"10.77.0.{100 + i}", f"01:{i:02x}", f"52:54:00:00:00:{i:02x}")
                for i in range(3)]  # fmt: skip
        store.save_leases(rows)
        assert store.leases_at(["10.77.0.102", "10.77.0.100", "10.77.0.200"]) == [rows[0], rows[2]]
        assert store.leases_at([]) == []

    # ---- secrets and tokens ------------------------------------------------------------

    def test_a_secret_is_made_once_and_every_connection_gets_it(
        self, store: Store, open_store: OpenStore
    ) -> None:
        assert store.secret("agent-token", b"a" * 32) == b"a" * 32
        other = open_store()
        try:
            assert other.secret("agent-token", b"b" * 32) == b"a" * 32, "the first one stays"
            assert store.secret("another", b"\x00\xff") == b"\x00\xff"  # any bytes
            for n in range(5):  # two servers starting together: one key for both
                got, errors = together(
                    partial(store.secret, f"race{n}", b"one"),
                    partial(other.secret, f"race{n}", b"two"),
                )
                assert errors == [] and len(got) == 2 and got[0] == got[1] in (b"one", b"two")
        finally:
            other.close()

    def test_a_boot_token_signed_through_one_connection_is_exchanged_through_another(
        self, store: Store, open_store: OpenStore, tmp_path: Path
    ) -> None:
        store.import_inventory(lab())
        store.transition("node01", Event.PXE_BOOT, "dhcp")
        other = open_store()
        try:
            issuer = AgentTokens(store, signing_key(store, tmp_path / "a"))
            checker = AgentTokens(other, signing_key(other, tmp_path / "b"))
            assert issuer.key == checker.key and len(issuer.key) == 32
            boot = issuer.issue_boot("node01")
            node = other.get_node("node01")
            assert node is not None
            session = checker.exchange(boot, node)
            assert issuer.verify_session(session).hostname == "node01"
        finally:
            other.close()

    # ---- tokens ------------------------------------------------------------------------

    def test_a_token_hash_can_be_claimed_once(self, store: Store) -> None:
        assert store.claim_token(Token("h1", "node01", "boot", 1.0, 100.0, 1.0))
        assert not store.claim_token(Token("h1", "node01", "boot", 2.0, 100.0, 2.0))
        token = store.get_token("h1")
        assert token is not None and token.used_at == 1.0
        assert token == Token("h1", "node01", "boot", 1.0, 100.0, 1.0)
        assert store.claim_token(Token("s1", "node01", "session", 1.0, 100.0, None))
        assert store.claim_token(Token("n1", "node01", "node", 1.0, 100.0, None))
        assert store.claim_token(Token("s2", "node02", "session", 1.0, 100.0, None))
        store.revoke_tokens("node01", "node")
        assert store.get_token("n1") is None and store.get_token("s1") is not None
        store.revoke_tokens("node01")
        assert store.get_token("s1") is None
        assert store.get_token("s2") is not None, "another node's tokens are not touched"
        # a spent boot token stays spent after a revocation: its replay is still refused
        assert not store.claim_token(Token("h1", "node01", "boot", 3.0, 100.0, 3.0))

    def test_tokens_are_listed_by_purpose_oldest_first(self, store: Store) -> None:
        store.claim_token(Token("w1", "admin:ci", "admin-write", 2.0, 100.0, None))
        store.claim_token(Token("r1", "admin:grafana", "admin-read", 1.0, 100.0, None))
        store.claim_token(Token("s1", "node01", "session", 0.5, 100.0, None))
        listed = store.list_tokens(["admin-read", "admin-write"])
        assert [t.token_hash for t in listed] == ["r1", "w1"]
        assert listed[0] == Token("r1", "admin:grafana", "admin-read", 1.0, 100.0, None)
        assert store.list_tokens([]) == [] and store.list_tokens(["nothing"]) == []
        store.revoke_tokens("admin:ci")
        assert [t.token_hash for t in store.list_tokens(["admin-write"])] == []

    # ---- provisioning servers ----------------------------------------------------------

    def test_a_servers_heartbeat_is_one_row_aged_by_the_store(
        self, store: Store, open_store: OpenStore
    ) -> None:
        one = heartbeat("a1", "pxe-b", services={"dhcp": "running", "tftp": "running"})
        two = heartbeat("b2", "pxe-a")
        assert store.servers() == []
        before = time.time()
        store.save_server(one)
        store.save_server(two)
        store.save_server(replace(one, services={"dhcp": "running", "tftp": "failed"}))
        rows = store.servers()
        assert [r.heartbeat.server_id for r in rows] == ["b2", "a1"], "by name, one row each"
        assert rows[1].heartbeat == replace(one, services={"dhcp": "running", "tftp": "failed"})
        assert all(before - 1 <= r.last_seen <= time.time() + 1 for r in rows)
        time.sleep(0.3)
        other = open_store()  # another server reading the shared registry
        try:
            aged = {r.heartbeat.server_id: r for r in other.servers()}
            assert aged["a1"].age_s >= 0.3 and aged["a1"].heartbeat == rows[1].heartbeat
            other.save_server(replace(two, stopped=True))
        finally:
            other.close()
        again = {r.heartbeat.server_id: r for r in store.servers()}
        assert again["b2"].heartbeat.stopped and again["b2"].age_s < 0.3
        assert not again["a1"].heartbeat.stopped


def heartbeat(server_id: str, name: str, services: dict[str, str] | None = None) -> ServerHeartbeat:
    return ServerHeartbeat(
        server_id, name, f"http://{name}:8080", f"https://{name}:8443", "0.1.0",
        1000.0, 5.0, services or {"http": "running"},
    )  # fmt: skip
