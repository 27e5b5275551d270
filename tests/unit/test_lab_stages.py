"""The lab's per-stage breakdown is read from the node's own events."""

from __future__ import annotations

from plasmaboot.lab.stages import STAGES, stage_times
from plasmaboot.store import EventRecord


def event(ts: float, name: str) -> EventRecord:
    return EventRecord(0, ts, "node04", None, None, name, "test", {})


def test_stages_of_the_latest_cycle() -> None:
    events = [event(t, name) for t, name in [
        (90.0, "pxe-boot"),  # before this power-on: ignored
        (101.0, "pxe-boot"), (110.0, "installer-booted"), (112.0, "install-started"),
        (150.0, "installed"), (180.0, "first-boot"), (181.0, "join-started"), (200.0, "joined"),
    ]]  # fmt: skip
    times = stage_times("node04", events, powered_on=100.0)
    assert times.seconds == {"pxe": 10.0, "install": 40.0, "disk boot": 30.0, "join": 20.0}
    assert times.total == 100.0


def test_an_unfinished_cycle_has_no_total() -> None:
    events = [event(101.0, "pxe-boot"), event(110.0, "installer-booted")]
    times = stage_times("node04", events, powered_on=100.0)
    assert list(times.seconds) == [STAGES[0]] and times.total is None


def test_a_reprovision_starts_a_new_cycle() -> None:
    events = [event(t, name) for t, name in [
        (101.0, "pxe-boot"), (110.0, "installer-booted"), (150.0, "installed"),
        (300.0, "pxe-boot"), (320.0, "installer-booted"),
    ]]  # fmt: skip
    times = stage_times("node04", events, powered_on=100.0)
    assert times.seconds == {"pxe": 220.0}
