"""Deadlines for the lifecycle states that wait for the machine, and the reaper enforcing them.

Every unstable state (`lifecycle.STABLE_STATES`' complement) waits for something the
machine does: call in from the installer, report the install, boot the installed OS, join.
A machine that dies meanwhile never reports again, so without a deadline its node waits in
that state forever. `DeadlineReaper` (started by `plasmaboot serve`) checks every few
seconds and fires the state's failure event through the provisioning service (the one
write path): `boot-timeout` for pxe-booting, `fail` for the others, with
`{"reason": "deadline", "state", "stopped_at", "deadline_s", "overdue_s"}`. `draining` has
no failed state (the cluster side of a drain is the operator's), so an overdue drain stays
where it is: it is recorded once as a `deadline-overdue` event and counted in /metrics.

The time in a state is measured from the event that entered it, not from the node's
`updated_at` (an inventory reload touches that), and is cached per (state, updated_at).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge

from plasmaboot.inventory.deadlines import deadlines_for
from plasmaboot.lifecycle import STABLE_STATES, TRANSITIONS, Event, IllegalTransition, State
from plasmaboot.logs import get_logger
from plasmaboot.provision.service import Provisioner
from plasmaboot.store import NodeRecord, UnknownNode

log = get_logger("plasmaboot.deadlines")

ACTOR = "deadline"
OVERDUE_EVENT = "deadline-overdue"
# How often serve's reaper looks (at most): a deadline is enforced within this of passing.
REAP_INTERVAL_S = 5.0
DEADLINE_FAILURES = Counter(
    "plasmaboot_lifecycle_deadline_failures_total",
    "Nodes moved to their failed state because an unstable state outlived its deadline",
    ["state"],
)
OVERDUE_NODES = Gauge(
    "plasmaboot_lifecycle_overdue_nodes",
    "Nodes past their state's deadline at the reaper's last pass (draining stays overdue)",
    ["state"],
)


def failure_event(state: State) -> Event | None:
    """The event that fails a node stuck in `state`; None for draining (no failed state)."""
    for event in (Event.BOOT_TIMEOUT, Event.FAIL):
        if (event, state) in TRANSITIONS:
            return event
    return None


@dataclass(frozen=True)
class Overdue:
    hostname: str
    state: State
    entered_at: float
    deadline_s: float
    overdue_s: float
    stopped_at: str  # the last event the node recorded: the stage it stopped at


@dataclass
class _Entry:
    key: tuple[State, float]  # (state, updated_at) it was computed for
    entered_at: float
    stopped_at: str
    reported: bool  # a deadline-overdue event exists for this stay (draining)


class DeadlineReaper:
    """Fails nodes whose unstable state outlived its deadline; `check` is one pass."""

    def __init__(
        self,
        provisioner: Provisioner,
        *,
        interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.provisioner = provisioner
        self.interval_s = interval_s
        self.clock = clock
        self._entries: dict[str, _Entry] = {}
        self.overdue: list[Overdue] = []  # the last pass's (the dashboard pins them)
        self._task: asyncio.Task[None] | None = None

    # ---- one pass ---------------------------------------------------------------------

    def check(self) -> list[Overdue]:
        """Look at every node once; fail the overdue ones. Returns what was overdue."""
        deadlines = deadlines_for(self.provisioner.inventory)
        store = self.provisioner.store
        now = self.clock()
        overdue: list[Overdue] = []
        waiting = [n for n in store.list_nodes() if n.state in deadlines]
        for gone in self._entries.keys() - {n.hostname for n in waiting}:
            del self._entries[gone]
        for node in waiting:
            entry = self._entry(node)
            age = now - entry.entered_at
            deadline = deadlines[node.state]
            if age <= deadline:
                continue
            late = Overdue(
                node.hostname,
                node.state,
                entry.entered_at,
                deadline,
                round(age - deadline, 3),
                entry.stopped_at,
            )
            overdue.append(late)
            self._enforce(late, entry)
        counts = {state: 0 for state in State if state not in STABLE_STATES}
        for late in overdue:
            counts[late.state] += 1
        for state, count in counts.items():
            OVERDUE_NODES.labels(state.value).set(count)
        self.overdue = overdue
        return overdue

    def _enforce(self, late: Overdue, entry: _Entry) -> None:
        detail = {
            "reason": "deadline",
            "state": late.state.value,
            "stopped_at": late.stopped_at,
            "deadline_s": late.deadline_s,
            "overdue_s": late.overdue_s,
        }
        event = failure_event(late.state)
        if event is None:  # draining: no failed state; say so once per stay
            if not entry.reported:
                with contextlib.suppress(UnknownNode):
                    self.provisioner.store.record(late.hostname, OVERDUE_EVENT, ACTOR, detail)
                entry.reported = True
                log.warning(
                    f"{late.hostname} is past its deadline; it stays there (no failed "
                    "state): look at the drain",
                    node=late.hostname,
                    state=late.state.value,
                    for_s=round(late.overdue_s + late.deadline_s),
                    deadline_s=late.deadline_s,
                )
            return
        # Re-read just before firing: a report may have moved the node since the list.
        current = self.provisioner.store.get_node(late.hostname)
        if current is None or current.state is not late.state:
            return
        try:
            self.provisioner.fire(late.hostname, event, ACTOR, detail)
        except IllegalTransition as exc:  # another server moved it first: normal
            log.debug("deadline not enforced", node=late.hostname, reason=str(exc))
            return
        except UnknownNode:
            return
        DEADLINE_FAILURES.labels(late.state.value).inc()
        log.warning(
            f"{late.hostname} failed by its deadline",
            node=late.hostname,
            state=late.state.value,
            deadline_s=late.deadline_s,
            stopped_at=late.stopped_at,
        )

    def _entry(self, node: NodeRecord) -> _Entry:
        key = (node.state, node.updated_at)
        cached = self._entries.get(node.hostname)
        if cached is not None and cached.key == key:
            return cached
        entry = self._entry_from_events(node, key, limit=100)
        if entry is None:
            entry = self._entry_from_events(node, key, limit=None)
        if entry is None:  # no event entered it (should not happen): its last update
            entry = _Entry(key, node.updated_at, node.state.value, False)
        self._entries[node.hostname] = entry
        return entry

    def _entry_from_events(
        self, node: NodeRecord, key: tuple[State, float], limit: int | None
    ) -> _Entry | None:
        events = self.provisioner.store.events(node.hostname, limit=limit)
        if not events:
            return None
        stopped_at = events[-1].event
        reported = False
        for record in reversed(events):
            if record.event == OVERDUE_EVENT:
                reported = True
            if record.to_state == node.state.value and record.from_state != record.to_state:
                return _Entry(key, record.ts, stopped_at, reported)
        return None

    # ---- the task serve runs ------------------------------------------------------------

    def period(self) -> float:
        """The pass interval: REAP_INTERVAL_S, shorter when a deadline is shorter than it."""
        if self.interval_s is not None:
            return self.interval_s
        shortest = min(deadlines_for(self.provisioner.inventory).values())
        return min(REAP_INTERVAL_S, max(0.2, shortest / 4))

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="deadlines")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period())
            try:
                self.check()
            except Exception:  # a store hiccup must not end deadline enforcement
                log.exception("deadline pass failed; trying again next period")
