"""The one write path for lifecycle state: fire an event, count it, tell the listeners.

DHCP, HTTP, the agent and admin APIs and the CLI's node operations all change a node's
state through `LifecycleService.fire`; nothing else calls `store.transition`. So every
transition, whoever caused it, is counted in /metrics, timed per state and heard by every
listener (the installer driver starts installs from them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from plasmaboot.lifecycle import TRANSITIONS, Event, IllegalTransition
from plasmaboot.logs import get_logger
from plasmaboot.store import EventRecord, NodeRecord, Store

log = get_logger("plasmaboot.lifecycle")

TRANSITIONS_TOTAL = Counter(
    "plasmaboot_lifecycle_transitions_total", "Lifecycle transitions applied", ["event", "to"]
)
TRANSITION_SECONDS = Histogram(
    "plasmaboot_lifecycle_state_seconds",
    "Time a node spent in a state before leaving it",
    ["state"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
)
REFUSED_TOTAL = Counter(
    "plasmaboot_lifecycle_refused_total", "Events refused by the lifecycle table", ["event"]
)
DISCOVERED_TOTAL = Counter(
    "plasmaboot_nodes_discovered_total", "Unknown machines recorded as discovered", ["actor"]
)

Listener = Callable[[EventRecord], None]

# Events after which no credential issued for the node's previous install may be used.
REVOKES_CREDENTIALS = frozenset({Event.REPROVISION, Event.DECOMMISSION})


@dataclass
class LifecycleService:
    store: Store
    # Called with every applied transition; a listener must not block (long work goes
    # into a task) and a failing one never undoes the recorded transition.
    listeners: list[Listener] = field(default_factory=list)

    def fire(
        self, hostname: str, event: Event, actor: str, detail: dict[str, Any] | None = None
    ) -> EventRecord:
        """Apply a lifecycle event (IllegalTransition propagates) and count it."""
        before = self.store.get_node(hostname)
        try:
            record = self.store.transition(hostname, event, actor, detail)
        except IllegalTransition:
            REFUSED_TOTAL.labels(event.value).inc()
            raise
        if event in REVOKES_CREDENTIALS:
            self.store.revoke_tokens(hostname)
        TRANSITIONS_TOTAL.labels(event.value, record.to_state or "").inc()
        if before is not None:
            TRANSITION_SECONDS.labels(before.state.value).observe(
                max(0.0, record.ts - before.updated_at)
            )
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                log.exception("lifecycle listener failed", node=hostname)
        log.info(
            f"lifecycle {hostname}: {record.from_state} -> {record.to_state}",
            node=hostname,
            trigger=event.value,
            actor=actor,
        )
        return record

    def fire_if_allowed(
        self, record: NodeRecord, event: Event, actor: str, detail: dict[str, Any] | None = None
    ) -> bool:
        """Fire `event` when the node's state accepts it; traffic-driven events use this."""
        if (event, record.state) not in TRANSITIONS:
            return False
        try:
            self.fire(record.hostname, event, actor, detail)
        except IllegalTransition:  # another server (or request) moved it first
            return False
        return True

    def discover(self, mac: str, actor: str, detail: dict[str, Any] | None = None) -> NodeRecord:
        """Record an unknown machine that asked to boot (idempotent per MAC)."""
        known = self.store.node_by_mac(mac)
        if known is not None:
            return known
        record = self.store.discover(mac, actor, detail)
        DISCOVERED_TOTAL.labels(actor).inc()
        log.info("unknown machine discovered", node=record.hostname, mac=mac, actor=actor)
        return record
