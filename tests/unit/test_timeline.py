"""Where a provisioning's time went, computed from the node's events alone."""

from __future__ import annotations

from plasmaboot.lifecycle import State
from plasmaboot.provision.timeline import phase_seconds, spans
from plasmaboot.store import EventRecord


def _events(*steps: tuple[float, str | None, str]) -> list[EventRecord]:
    out, previous = [], None
    for number, (ts, event_to, event) in enumerate(steps, 1):
        out.append(EventRecord(number, ts, "node01", previous, event_to, event, "test", {}))
        previous = event_to if event_to is not None else previous
    return out


CHAIN = _events(
    (100.0, "enrolled", "enroll"),
    (110.0, "pxe-booting", "pxe-boot"),
    (130.0, "installer-booted", "installer-booted"),
    (131.0, "installing", "install-started"),
    (131.5, None, "install-output"),  # an event that is no transition
    (170.0, "installed", "installed"),
    (200.0, "first-boot", "first-boot"),
    (201.0, "joining", "join-started"),
    (215.0, "active", "joined"),
)


def test_spans_follow_the_transitions_and_the_last_stays_open() -> None:
    timeline = spans(CHAIN)
    assert [(s.state, s.seconds) for s in timeline[:3]] == [
        (State.ENROLLED, 10.0), (State.PXE_BOOTING, 20.0), (State.INSTALLER_BOOTED, 1.0),
    ]  # fmt: skip
    assert timeline[-1].state is State.ACTIVE and timeline[-1].seconds is None
    assert spans(CHAIN, now=220.0)[-1].seconds == 5.0


def test_phases_add_up_their_states() -> None:
    assert phase_seconds(CHAIN) == {
        "netboot": 20.0, "install": 40.0, "disk boot": 30.0, "join": 15.0,
    }  # fmt: skip


def test_an_unfinished_phase_is_left_out_and_a_retry_counts_from_its_latest_start() -> None:
    retried = _events(
        (0.0, "pxe-booting", "pxe-boot"),
        (50.0, "boot-failed", "boot-timeout"),
        (60.0, "pxe-booting", "pxe-boot"),
        (65.0, "installer-booted", "installer-booted"),
        (66.0, "installing", "install-started"),
    )
    assert phase_seconds(retried) == {"netboot": 5.0}
