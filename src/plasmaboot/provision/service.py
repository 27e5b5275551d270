"""The provisioning service that `plasmaboot serve`'s DHCP, TFTP and HTTP sides share.

One object holds the current inventory (swapped whole on SIGHUP), the store, the
lifecycle service (the one write path for state), the agent tokens and each service's
health probe. The servers own sockets and codecs; what a packet or request *means* for a
node is decided in `boot/` and recorded here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plasmaboot.inventory import Inventory, Node
from plasmaboot.lifecycle import TRANSITIONS, Event
from plasmaboot.provision.lifecycle import LifecycleService, Listener
from plasmaboot.provision.tokens import AgentTokens, signing_key
from plasmaboot.store import EventRecord, NodeRecord, Store


@dataclass
class ProvisionerSettings:
    state_dir: Path
    assets_dir: Path
    tftp_root: Path
    http_base: str
    # The lab's busybox miniature has no real disk OS: "boot from disk" boots the lab
    # image again in first-boot mode.
    simulate_disk_boot: bool = False


@dataclass
class Provisioner:
    inventory: Inventory
    store: Store
    settings: ProvisionerSettings
    lifecycle: LifecycleService = field(init=False)
    tokens: AgentTokens = field(init=False)
    # service -> a probe answering "running", "disabled", "stopped" or "failed", asked live
    probes: dict[str, Callable[[], str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lifecycle = LifecycleService(self.store)
        self.tokens = AgentTokens(self.store, signing_key(self.settings.state_dir))

    @property
    def listeners(self) -> list[Listener]:
        return self.lifecycle.listeners

    def spec_of(self, record: NodeRecord) -> Node | None:
        return self.inventory.node(record.hostname) if record.in_inventory else None

    def can_fire(self, record: NodeRecord, event: Event) -> bool:
        return (event, record.state) in TRANSITIONS

    def fire(
        self, hostname: str, event: Event, actor: str, detail: dict[str, Any] | None = None
    ) -> EventRecord:
        return self.lifecycle.fire(hostname, event, actor, detail)

    def fire_if_allowed(
        self, record: NodeRecord, event: Event, actor: str, detail: dict[str, Any] | None = None
    ) -> bool:
        return self.lifecycle.fire_if_allowed(record, event, actor, detail)

    def discover(self, mac: str, actor: str, detail: dict[str, Any] | None = None) -> NodeRecord:
        return self.lifecycle.discover(mac, actor, detail)

    def service_status(self) -> dict[str, str]:
        return {name: probe() for name, probe in self.probes.items()}
