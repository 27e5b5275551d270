"""How long a node spent in each lifecycle state, read from its events.

The store keeps every transition with its time; this turns a node's events into spans
(state, entered, seconds), so the lab, `watch` and the dashboard can all say where the
time of a provisioning went without keeping clocks of their own. `PHASES` groups the
states into what an operator asks about: how long the network boot, the install, the
first boot from disk and the join each took.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from plasmaboot.lifecycle import State
from plasmaboot.store import EventRecord

# phase -> the states whose time it is, in the order a provisioning passes them
PHASES: dict[str, tuple[State, ...]] = {
    "netboot": (State.PXE_BOOTING,),
    "install": (State.INSTALLER_BOOTED, State.INSTALLING),
    "disk boot": (State.INSTALLED,),
    "join": (State.FIRST_BOOT, State.JOINING),
}


@dataclass(frozen=True)
class Span:
    state: State
    entered: float
    seconds: float | None  # None: still in it


def spans(events: Iterable[EventRecord], now: float | None = None) -> list[Span]:
    """One span per stay in a state, from the transitions among `events` (oldest first).
    The last stay is open (`seconds` None) unless `now` is given."""
    changes = [e for e in events if e.to_state is not None and e.to_state != e.from_state]
    out: list[Span] = []
    for this, following in zip(changes, [*changes[1:], None], strict=True):
        assert this.to_state is not None
        end = following.ts if following is not None else now
        out.append(Span(State(this.to_state), this.ts, None if end is None else end - this.ts))
    return out


def phase_seconds(events: Iterable[EventRecord]) -> dict[str, float]:
    """Seconds per phase of the latest provisioning, for phases the node has finished.
    A phase counts from its first state's latest entry, so a retried boot counts once."""
    timeline = spans(events)
    out: dict[str, float] = {}
    for phase, states in PHASES.items():
        entries = [i for i, span in enumerate(timeline) if span.state is states[0]]
        if not entries:
            continue
        total = 0.0
        for span in timeline[entries[-1] :]:
            if span.state not in states:
                break
            if span.seconds is None:
                total = -1.0  # still running: not finished
                break
            total += span.seconds
        if total >= 0:
            out[phase] = total
    return out
