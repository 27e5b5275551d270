"""What the DHCP, TFTP and HTTP sides of `plasmaboot serve` share.

One object holds the current inventory (swapped whole on SIGHUP), the store, the agent
tokens and each service's health, and is the one place the servers fire lifecycle
events through, so every transition is counted and timed the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram

from plasmaboot.inventory import Inventory, Node
from plasmaboot.lifecycle import TRANSITIONS, Event, IllegalTransition
from plasmaboot.store import EventRecord, NodeRecord, Store
from plasmaboot.web.tokens import AgentTokens, signing_key

log = logging.getLogger("plasmaboot.serve")

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


@dataclass
class ServeSettings:
    state_dir: Path
    assets_dir: Path
    tftp_root: Path
    http_base: str
    # The lab has no real disk OS: "boot from disk" boots the lab image in first-boot mode.
    simulate_disk_boot: bool = False


@dataclass
class Provisioner:
    inventory: Inventory
    store: Store
    settings: ServeSettings
    tokens: AgentTokens = field(init=False)
    # service -> a probe answering "running", "disabled", "stopped" or "failed", asked live
    probes: dict[str, Callable[[], str]] = field(default_factory=dict)
    # Called with every applied transition (the installer driver starts installs from them);
    # a listener must not block: long work goes into a task.
    listeners: list[Callable[[EventRecord], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokens = AgentTokens(self.store, signing_key(self.settings.state_dir))

    def spec_of(self, record: NodeRecord) -> Node | None:
        return self.inventory.node(record.hostname) if record.in_inventory else None

    def can_fire(self, record: NodeRecord, event: Event) -> bool:
        return (event, record.state) in TRANSITIONS

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
        TRANSITIONS_TOTAL.labels(event.value, record.to_state or "").inc()
        if before is not None:
            TRANSITION_SECONDS.labels(before.state.value).observe(
                max(0.0, record.ts - before.updated_at)
            )
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:  # a broken listener must not undo a recorded transition
                log.exception("lifecycle listener failed for %s", hostname)
        log.info(
            "lifecycle %s: %s -> %s (%s by %s)",
            hostname,
            record.from_state,
            record.to_state,
            event.value,
            actor,
        )
        return record

    def fire_if_allowed(
        self, record: NodeRecord, event: Event, actor: str, detail: dict[str, Any] | None = None
    ) -> bool:
        """Fire `event` when the node's state accepts it; traffic-driven events use this."""
        if not self.can_fire(record, event):
            return False
        try:
            self.fire(record.hostname, event, actor, detail)
        except IllegalTransition:  # another server moved it first
            return False
        return True

    def service_status(self) -> dict[str, str]:
        return {name: probe() for name, probe in self.probes.items()}
