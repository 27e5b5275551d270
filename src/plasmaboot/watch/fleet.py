"""What `plasmaboot watch` knows of the watched nodes, kept current by stored events.

A row per node: its state, the stage it is at (the last event it recorded, as the
deadline reaper names it) and when it entered its state (the event that moved it there,
not `updated_at`, which an inventory reload touches). Events are applied in id order,
each once; applying one the snapshot already reflects changes nothing that matters, so
a snapshot taken after the cursor was read loses nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from plasmaboot.inventory.deadlines import DEFAULT_DEADLINES_S, INSTALL_MARGIN_S
from plasmaboot.inventory.models import Installer
from plasmaboot.lifecycle import FAILED_STATES, STABLE_STATES, State
from plasmaboot.provision.deadlines import OVERDUE_EVENT
from plasmaboot.store import EventRecord

# `node provision` records this and power-cycles the machine: an enrolled node with it as
# its last event is on its way to pxe-booting, not resting.
PROVISION_REQUESTED = "provision-requested"
# How many of a node's newest events are read to find when it entered its state.
HISTORY = 100


def default_deadlines() -> dict[State, float]:
    """The reaper's deadlines when no inventory is given (its installer defaults)."""
    install = Installer().timeout_s + INSTALL_MARGIN_S
    return {**DEFAULT_DEADLINES_S, State.INSTALLING: install}


@dataclass
class NodeRow:
    hostname: str
    state: State
    entered_at: float  # when the node entered `state`
    stage: str  # the last event the node recorded
    last: EventRecord | None = None

    @classmethod
    def from_history(
        cls, hostname: str, state: State, updated_at: float, events: Iterable[EventRecord]
    ) -> NodeRow:
        """The row from the node's newest events (oldest first)."""
        history = list(events)
        entered_at = updated_at
        for event in reversed(history):
            if event.to_state == state.value and event.from_state != event.to_state:
                entered_at = event.ts
                break
        last = history[-1] if history else None
        return cls(hostname, state, entered_at, last.event if last else "", last)

    @property
    def failed(self) -> bool:
        return self.state in FAILED_STATES

    @property
    def resting(self) -> bool:
        """In a stable state and not about to leave it by itself."""
        if self.state is State.ENROLLED and self.stage == PROVISION_REQUESTED:
            return False
        return self.state in STABLE_STATES


def _id(event: EventRecord) -> int:
    return event.id


class Fleet:
    def __init__(
        self,
        rows: Iterable[NodeRow],
        deadlines: Mapping[State, float],
        *,
        seen: int,
        adopt_new: bool,
    ) -> None:
        self.rows = {row.hostname: row for row in rows}
        self.deadlines = dict(deadlines)
        self.seen = seen  # the newest event id applied (or in the snapshot)
        self.adopt_new = adopt_new  # watching every node: one that appears joins the view
        # the newest event of a watched node
        self.last = max((r.last for r in self.rows.values() if r.last), key=_id, default=None)

    def apply(self, event: EventRecord) -> NodeRow | None:
        """Apply one event; the row it changed, or None (another node's, or seen)."""
        if event.id <= self.seen:
            return None
        self.seen = event.id
        try:
            state = State(event.to_state) if event.to_state else None
        except ValueError:
            state = None
        row = self.rows.get(event.node)
        if row is None:
            if not self.adopt_new or state is None:
                return None
            row = self.rows[event.node] = NodeRow(event.node, state, event.ts, event.event)
        if state is not None and state is not row.state:
            row.state, row.entered_at = state, event.ts
        row.stage, row.last = event.event, event
        self.last = event
        return row

    def overdue_by(self, row: NodeRow, now: float) -> float | None:
        """Seconds past the deadline of the row's state; None when not overdue."""
        if row.stage == OVERDUE_EVENT:
            return max(0.0, now - row.entered_at - self.deadlines.get(row.state, 0.0))
        deadline = self.deadlines.get(row.state)
        if deadline is None or row.state in STABLE_STATES:
            return None
        late = now - row.entered_at - deadline
        return late if late > 0 else None

    def ordered(self, now: float) -> list[NodeRow]:
        """Failed nodes first, then overdue ones, then those moving, then the resting."""

        def rank(row: NodeRow) -> tuple[int, str]:
            if row.failed:
                return 0, row.hostname
            if self.overdue_by(row, now) is not None:
                return 1, row.hostname
            return (3 if row.resting else 2), row.hostname

        return sorted(self.rows.values(), key=rank)

    def counts(self) -> Counter[State]:
        return Counter(row.state for row in self.rows.values())

    @property
    def settled(self) -> bool:
        return all(row.resting for row in self.rows.values())

    @property
    def all_active(self) -> bool:
        return bool(self.rows) and all(r.state is State.ACTIVE for r in self.rows.values())
