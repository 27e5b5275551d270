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
from plasmaboot.lifecycle import TRANSITIONS, Event, State
from plasmaboot.provision.discovery import DiscoveryLimiter
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
    # The inventory file `serve` loaded: `node adopt` and `node replace` through the admin
    # API edit it (then reload it). None: no file to edit (the tests' in-process apps).
    inventory_file: Path | None = None


@dataclass
class Provisioner:
    inventory: Inventory
    store: Store
    settings: ProvisionerSettings
    lifecycle: LifecycleService = field(init=False)
    tokens: AgentTokens = field(init=False)
    # service -> a probe answering "running", "disabled", "stopped" or "failed", asked live
    probes: dict[str, Callable[[], str]] = field(default_factory=dict)
    # MAC -> the address plasmaboot's DHCP leased to it now (None: no live lease). Set by
    # serve when its DHCP server leases addresses (full or reservation mode): a boot
    # token then goes only to a request from that address. None (proxy, --no-dhcp, the
    # tests' in-process apps): whoever asks gets it (docs/api.md, "Tokens").
    lease_address: Callable[[str], str | None] | None = None
    discovery: DiscoveryLimiter = field(default_factory=DiscoveryLimiter)
    # This server's id in the store's server registry (provision/servers.py); set by
    # serve, None where no heartbeat is written (the tests' in-process apps).
    server_id: str | None = None

    def __post_init__(self) -> None:
        self.lifecycle = LifecycleService(self.store)
        self.tokens = AgentTokens(self.store, signing_key(self.store, self.settings.state_dir))

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

    def discover_from(self, mac: str, remote: str | None) -> NodeRecord:
        """Record an unknown MAC an unauthenticated request named, within the inventory's
        `server.discovery` limits (DiscoveryRefused, counted, when over them)."""
        known = self.store.node_by_mac(mac)
        if known is not None:
            return known
        waiting = self.store.state_counts().get(State.DISCOVERED.value, 0)
        self.discovery.admit(remote, self.inventory.server.discovery, waiting)
        return self.discover(mac, "http", {"remote": remote})

    def leased_to(self, record: NodeRecord, remote: str | None) -> bool | None:
        """Whether `remote` is an address plasmaboot's DHCP leased to one of the node's
        MACs; None when plasmaboot does not lease addresses (no check is possible)."""
        if self.lease_address is None:
            return None
        return remote is not None and any(self.lease_address(mac) == remote for mac in record.macs)

    def service_status(self) -> dict[str, str]:
        return {name: probe() for name, probe in self.probes.items()}
