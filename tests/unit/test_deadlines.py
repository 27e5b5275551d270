"""Deadlines of the states that wait for the machine: the reaper fails a node stuck past its
state's deadline (through the provisioning service, with the reason in the event), leaves
one that moves on in time alone, and the inventory overrides and validates them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from plasmaboot.inventory import InventoryError, parse_inventory
from plasmaboot.inventory.deadlines import DEFAULT_DEADLINES_S, INSTALL_MARGIN_S, deadlines_for
from plasmaboot.lifecycle import STABLE_STATES, Event, State
from plasmaboot.provision import DeadlineReaper, Provisioner, ProvisionerSettings
from plasmaboot.store import EventRecord, SqliteStore

ROOT = Path(__file__).resolve().parents[2]
# Every state that waits for the machine at the smallest deadline the inventory takes.
ALL_ONE = {s.value: 1 for s in State if s not in STABLE_STATES}


def lab_doc(**deadlines: int) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples/lab/miniature.yaml").read_text())
    if deadlines:
        doc["server"]["deadlines"] = deadlines
    return doc


def provisioner_for(tmp_path: Path, doc: dict[str, Any]) -> Provisioner:
    inv = parse_inventory(doc, "cluster.yaml")
    store = SqliteStore(tmp_path / "db.sqlite")
    store.import_inventory(inv)
    settings = ProvisionerSettings(tmp_path, tmp_path, tmp_path, "http://10.77.0.1:8080")
    return Provisioner(inv, store, settings)


def move(provisioner: Provisioner, hostname: str, *events: Event) -> None:
    for event in events:
        provisioner.fire(hostname, event, "test")


def failures(state: State) -> float:
    value = REGISTRY.get_sample_value(
        "plasmaboot_lifecycle_deadline_failures_total", {"state": state.value}
    )
    return value or 0.0


def overdue_gauge(state: State) -> float | None:
    return REGISTRY.get_sample_value("plasmaboot_lifecycle_overdue_nodes", {"state": state.value})


TO_INSTALLING = (Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALL_STARTED)


def test_an_installing_node_past_its_deadline_becomes_install_failed(tmp_path: Path) -> None:
    provisioner = provisioner_for(tmp_path, lab_doc(installing=1))
    heard: list[EventRecord] = []
    provisioner.listeners.append(heard.append)
    move(provisioner, "node01", *TO_INSTALLING)
    provisioner.store.record("node01", "install-output", "installer", {"lines": ["copying"]})
    before = failures(State.INSTALLING)
    reaper = DeadlineReaper(provisioner)

    assert reaper.check() == []  # inside its deadline: nothing happens
    time.sleep(1.2)
    overdue = reaper.check()

    assert [(o.hostname, o.state) for o in overdue] == [("node01", State.INSTALLING)]
    node = provisioner.store.get_node("node01")
    assert node is not None and node.state is State.INSTALL_FAILED
    last = provisioner.store.events("node01")[-1]
    assert (last.event, last.actor, last.from_state) == ("fail", "deadline", "installing")
    assert last.detail["reason"] == "deadline"
    assert last.detail["state"] == "installing"
    assert last.detail["stopped_at"] == "install-output"  # the last thing it reported
    assert last.detail["deadline_s"] == 1
    assert 0 < last.detail["overdue_s"] < 5
    assert heard and heard[-1].event == "fail"  # fired through the provisioning service
    assert failures(State.INSTALLING) == before + 1
    assert overdue_gauge(State.INSTALLING) == 1


def test_pxe_booting_times_out_with_boot_timeout(tmp_path: Path) -> None:
    provisioner = provisioner_for(tmp_path, lab_doc(**ALL_ONE))
    move(provisioner, "node02", Event.PXE_BOOT)
    reaper = DeadlineReaper(provisioner)
    time.sleep(1.1)
    reaper.check()
    last = provisioner.store.events("node02")[-1]
    assert (last.event, last.to_state) == ("boot-timeout", "boot-failed")
    assert last.detail["stopped_at"] == "pxe-boot"


def test_a_node_that_moves_on_in_time_is_left_alone(tmp_path: Path) -> None:
    provisioner = provisioner_for(tmp_path, lab_doc(**{"pxe-booting": 1, "installer-booted": 1}))
    reaper = DeadlineReaper(provisioner)
    move(provisioner, "node01", Event.PXE_BOOT)
    time.sleep(0.7)
    assert reaper.check() == []
    move(provisioner, "node01", Event.INSTALLER_BOOTED)  # a fresh state, a fresh deadline
    time.sleep(0.7)
    assert reaper.check() == []
    move(provisioner, "node01", Event.INSTALLED)  # installed: 30 minutes by default
    time.sleep(0.5)
    assert reaper.check() == []
    node = provisioner.store.get_node("node01")
    assert node is not None and node.state is State.INSTALLED
    assert [e.actor for e in provisioner.store.events("node01")].count("deadline") == 0


def test_an_inventory_reload_does_not_restart_the_clock(tmp_path: Path) -> None:
    doc = lab_doc(**{"pxe-booting": 1})
    provisioner = provisioner_for(tmp_path, doc)
    reaper = DeadlineReaper(provisioner)
    move(provisioner, "node01", Event.PXE_BOOT)
    time.sleep(0.8)
    assert reaper.check() == []
    doc["nodes"][0]["disk"] = "/dev/vdb"  # touches the node's updated_at, not its state
    provisioner.store.import_inventory(parse_inventory(doc, "cluster.yaml"), actor="reload")
    time.sleep(0.4)
    assert [o.hostname for o in reaper.check()] == ["node01"]


def test_stable_states_have_no_deadline(tmp_path: Path) -> None:
    provisioner = provisioner_for(tmp_path, lab_doc(**ALL_ONE))
    move(provisioner, "node03", Event.PXE_BOOT, Event.FAIL)  # boot-failed: rests
    reaper = DeadlineReaper(provisioner)
    time.sleep(1.1)
    assert reaper.check() == []
    assert {n.state for n in provisioner.store.list_nodes()} == {
        State.ENROLLED,
        State.BOOT_FAILED,
    }


def test_an_overdue_drain_stays_draining_and_is_reported_once(tmp_path: Path) -> None:
    provisioner = provisioner_for(tmp_path, lab_doc(draining=1))
    move(provisioner, "node01", Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALLED)
    move(provisioner, "node01", Event.FIRST_BOOT, Event.JOINED, Event.DRAIN)
    reaper = DeadlineReaper(provisioner)
    time.sleep(1.1)
    assert [o.state for o in reaper.check()] == [State.DRAINING]
    assert [o.state for o in DeadlineReaper(provisioner).check()] == [State.DRAINING]
    node = provisioner.store.get_node("node01")
    assert node is not None and node.state is State.DRAINING
    reports = [e for e in provisioner.store.events("node01") if e.event == "deadline-overdue"]
    assert len(reports) == 1  # a second reaper (a restart) reads it and does not repeat it
    assert reports[0].detail["state"] == "draining" and reports[0].detail["deadline_s"] == 1
    assert overdue_gauge(State.DRAINING) == 1


def test_a_node_another_server_moved_first_is_left_to_it(tmp_path: Path) -> None:
    provisioner = provisioner_for(tmp_path, lab_doc(**{"pxe-booting": 1}))
    other = SqliteStore(tmp_path / "db.sqlite")  # a second server on the same store
    move(provisioner, "node01", Event.PXE_BOOT)
    reaper = DeadlineReaper(provisioner)
    time.sleep(1.1)
    other.transition("node01", Event.BOOT_TIMEOUT, "other-server")
    assert [o.hostname for o in reaper.check()] == []  # boot-failed now: not waiting
    assert [e.actor for e in provisioner.store.events("node01")].count("deadline") == 0


async def test_the_reaper_task_enforces_deadlines_on_its_own(tmp_path: Path) -> None:
    provisioner = provisioner_for(tmp_path, lab_doc(**{"pxe-booting": 1}))
    move(provisioner, "node04", Event.PXE_BOOT)
    reaper = DeadlineReaper(provisioner)
    assert reaper.period() == pytest.approx(0.25)  # a short deadline is checked often
    reaper.start()
    try:
        for _ in range(60):
            node = provisioner.store.get_node("node04")
            if node is not None and node.state is State.BOOT_FAILED:
                break
            await asyncio.sleep(0.05)
    finally:
        await reaper.stop()
    node = provisioner.store.get_node("node04")
    assert node is not None and node.state is State.BOOT_FAILED


def test_defaults_cover_every_unstable_state_and_follow_the_installer() -> None:
    unstable = {s for s in State if s not in STABLE_STATES}
    doc = lab_doc()
    lab = deadlines_for(parse_inventory(doc, "cluster.yaml"))
    assert set(lab) == unstable
    assert lab[State.PXE_BOOTING] == DEFAULT_DEADLINES_S[State.PXE_BOOTING] == 900
    # The lab's installer image installs itself from installer-booted: the install's time.
    assert lab[State.INSTALLING] == lab[State.INSTALLER_BOOTED] == 3600 + INSTALL_MARGIN_S
    reference = parse_inventory(
        yaml.safe_load((ROOT / "examples/plasmacloud/cluster.yaml").read_text()), "c.yaml"
    )
    ref = deadlines_for(reference)
    # serve installs 6 nodes 4 at a time: a queued node waits in installing for 2 rounds.
    assert ref[State.INSTALLING] == 2 * 3600 + INSTALL_MARGIN_S
    assert ref[State.INSTALLER_BOOTED] == DEFAULT_DEADLINES_S[State.INSTALLER_BOOTED]


def test_inventory_overrides_replace_only_the_named_states() -> None:
    inv = parse_inventory(lab_doc(installing=5400, **{"pxe-booting": 120}), "cluster.yaml")
    deadlines = deadlines_for(inv)
    assert deadlines[State.INSTALLING] == 5400
    assert deadlines[State.PXE_BOOTING] == 120
    assert deadlines[State.JOINING] == DEFAULT_DEADLINES_S[State.JOINING]


@pytest.mark.parametrize(
    ("deadlines", "path", "words"),
    [
        ({"active": 60}, "server.deadlines.active", "stable state"),
        ({"boot-failed": 60}, "server.deadlines.boot-failed", "stable state"),
        ({"instaling": 60}, "server.deadlines.instaling", "not a lifecycle state"),
        ({"installing": 0}, "server.deadlines.installing", "positive number of seconds"),
        ({"joining": -5}, "server.deadlines.joining", "positive number of seconds"),
        ({"joining": "soon"}, "server.deadlines.joining", "valid integer"),
        ({"joining": True}, "server.deadlines.joining", "valid integer"),
    ],
)
def test_invalid_deadlines_are_refused_naming_the_field(
    deadlines: dict[str, object], path: str, words: str
) -> None:
    doc = lab_doc()
    doc["server"]["deadlines"] = deadlines
    with pytest.raises(InventoryError) as caught:
        parse_inventory(doc, "cluster.yaml")
    assert [p.path for p in caught.value.problems] == [path]
    assert words in str(caught.value)
    if "state" in words:
        assert "pxe-booting" in str(caught.value)  # the fix lists the states allowed
