"""Every legal transition moves and is recorded; every illegal one is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from plasmaboot.inventory import load_inventory
from plasmaboot.lifecycle import (
    BOOTS_FROM_DISK,
    FAILED_STATES,
    FIRED_BY,
    STABLE_STATES,
    TARGETS,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
    allowed_events,
    next_state,
)
from plasmaboot.store import SqliteStore, UnknownNode

ROOT = Path(__file__).resolve().parents[2]
ALL_PAIRS = [(e, s) for e in Event for s in State]
LEGAL = sorted(TRANSITIONS, key=lambda k: (k[0].value, k[1].value))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]


def store_with_node_in(tmp_path: Path, state: State) -> SqliteStore:
    """A store whose node01 is in `state`, reached through real transitions only."""
    store = SqliteStore(tmp_path / "db.sqlite")
    store.import_inventory(load_inventory(ROOT / "examples/lab/miniature.yaml"))
    path = _path_to(state)
    for event in path:
        store.transition("node01", event, "test")
    node = store.get_node("node01")
    assert node is not None and node.state is state
    return store


def _path_to(goal: State) -> list[Event]:
    """Shortest event sequence from `enrolled` to `goal` through the table (BFS)."""
    frontier: list[tuple[State, list[Event]]] = [(State.ENROLLED, [])]
    seen = {State.ENROLLED}
    while frontier:
        state, path = frontier.pop(0)
        if state is goal:
            return path
        for (event, src), dst in TRANSITIONS.items():
            if src is state and dst not in seen:
                seen.add(dst)
                frontier.append((dst, [*path, event]))
    raise AssertionError(f"{goal} is unreachable from enrolled")


@pytest.mark.parametrize(("event", "src"), LEGAL, ids=lambda v: str(v))
def test_legal_transition_moves_and_is_recorded(tmp_path: Path, event: Event, src: State) -> None:
    if src is State.DISCOVERED:
        pytest.skip("discovered nodes are created by discovery, see test_store")
    store = store_with_node_in(tmp_path, src)
    before = len(store.events("node01"))
    record = store.transition("node01", event, "operator", {"why": "test"})
    node = store.get_node("node01")
    assert node is not None
    assert node.state is TRANSITIONS[(event, src)]
    assert node.target is TARGETS.get(node.state)
    assert (record.from_state, record.to_state, record.event) == (src, node.state, event)
    assert record.actor == "operator" and record.detail == {"why": "test"}
    assert len(store.events("node01")) == before + 1


@pytest.mark.parametrize(("event", "src"), ILLEGAL, ids=lambda v: str(v))
def test_illegal_transition_names_state_and_allowed_events(event: Event, src: State) -> None:
    with pytest.raises(IllegalTransition) as info:
        next_state("node01", src, event)
    message = str(info.value)
    assert src.value in message and event.value in message
    for allowed in allowed_events(src):
        assert allowed.value in message


def test_illegal_transition_through_the_store_changes_nothing(tmp_path: Path) -> None:
    store = store_with_node_in(tmp_path, State.ENROLLED)
    before = store.events("node01")
    with pytest.raises(IllegalTransition, match="enrolled"):
        store.transition("node01", Event.JOINED, "agent")
    node = store.get_node("node01")
    assert node is not None and node.state is State.ENROLLED
    assert store.events("node01") == before


def test_expect_guards_against_a_race(tmp_path: Path) -> None:
    store = store_with_node_in(tmp_path, State.PXE_BOOTING)
    with pytest.raises(IllegalTransition):
        store.transition("node01", Event.FAIL, "dhcp", expect=State.INSTALLING)


def test_unknown_node(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    with pytest.raises(UnknownNode, match="node list"):
        store.transition("ghost", Event.PXE_BOOT, "dhcp")


def test_every_state_is_reachable_and_can_leave() -> None:
    for state in State:
        if state is not State.DISCOVERED:
            _path_to(state)
        assert allowed_events(state), f"{state} is a dead end"


def test_every_failed_state_has_a_way_back() -> None:
    for failed in FAILED_STATES:
        assert {TRANSITIONS[(e, failed)] for e in allowed_events(failed)} - FAILED_STATES


def test_every_unstable_state_has_a_failure_exit() -> None:
    for unstable in TARGETS:
        if unstable is State.DRAINING:
            continue  # draining is left by activate or decommission, not by failing
        assert TRANSITIONS.get((Event.FAIL, unstable)) in FAILED_STATES


def test_installed_os_states_boot_from_disk() -> None:
    assert State.ACTIVE in BOOTS_FROM_DISK and State.FIRST_BOOT in BOOTS_FROM_DISK
    assert State.ENROLLED not in BOOTS_FROM_DISK and State.INSTALLED not in BOOTS_FROM_DISK


def test_the_happy_path_matches_the_provisioning_flow() -> None:
    path = _path_to(State.ACTIVE)
    assert path == [
        Event.PXE_BOOT,
        Event.INSTALLER_BOOTED,
        Event.INSTALLED,
        Event.FIRST_BOOT,
        Event.JOINED,
    ]


def test_every_unstable_state_targets_a_stable_state() -> None:
    unstable = set(State) - STABLE_STATES
    assert set(TARGETS) == unstable
    assert set(TARGETS.values()) <= STABLE_STATES


def test_every_event_says_who_fires_it() -> None:
    assert {event for event, _ in TRANSITIONS} == set(FIRED_BY)
