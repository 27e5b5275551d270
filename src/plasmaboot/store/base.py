"""What every store offers: the records and the interface DHCP, HTTP and the CLI use.

SQLite is the embedded default; a PostgreSQL store for several servers sharing the work
implements the same `Store` protocol. There is no method that sets a node's state: the
only way is `transition`, which consults the lifecycle table and records the event in the
same transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from plasmaboot.inventory.models import Inventory
from plasmaboot.lifecycle import Event, State

LeaseState = Literal["offered", "bound", "declined", "released"]


@dataclass(frozen=True)
class NodeRecord:
    hostname: str
    state: State
    target: State | None
    profile: str | None
    macs: tuple[str, ...]
    provisioning_ip: str | None
    in_inventory: bool
    spec: dict[str, Any]
    updated_at: float
    # What the installer agent reported (docs/agent.md), and when; None until it has.
    hardware: dict[str, Any] | None = None
    hardware_at: float | None = None

    def as_json(self) -> dict[str, Any]:
        """The record as the CLI's --json and the admin API show it."""
        data = asdict(self)
        data["state"] = self.state.value
        data["target"] = self.target.value if self.target else None
        return data


@dataclass(frozen=True)
class EventRecord:
    id: int
    ts: float
    node: str
    from_state: str | None
    to_state: str | None
    event: str
    actor: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class Lease:
    ip: str
    client_key: str  # option 61 client-id (hex) when the client sent one, else its MAC
    mac: str
    state: LeaseState
    expires_at: float
    hostname: str | None = None


@dataclass(frozen=True)
class Token:
    token_hash: str
    hostname: str
    purpose: str
    created_at: float
    expires_at: float
    used_at: float | None


@dataclass
class ImportResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.retired)


class UnknownNode(LookupError):
    def __init__(self, hostname: str) -> None:
        super().__init__(f"no node named {hostname!r}; `plasmaboot node list` shows them")
        self.hostname = hostname


class Store(Protocol):
    def close(self) -> None: ...
    def schema_version(self) -> int: ...

    # nodes and lifecycle
    def import_inventory(self, inv: Inventory, actor: str = "inventory") -> ImportResult: ...
    def get_node(self, hostname: str) -> NodeRecord | None: ...
    def node_by_mac(self, mac: str) -> NodeRecord | None: ...
    def list_nodes(self) -> list[NodeRecord]: ...
    def discover(
        self, mac: str, actor: str, detail: dict[str, Any] | None = None
    ) -> NodeRecord: ...
    def transition(
        self,
        hostname: str,
        event: Event,
        actor: str,
        detail: dict[str, Any] | None = None,
        *,
        expect: State | None = None,
    ) -> EventRecord: ...
    def record(
        self, hostname: str, event: str, actor: str, detail: dict[str, Any] | None = None
    ) -> EventRecord: ...
    def events(
        self, hostname: str | None = None, limit: int | None = None, after: int = 0
    ) -> list[EventRecord]: ...
    def state_counts(self) -> dict[str, int]: ...
    def set_hardware(self, hostname: str, facts: dict[str, Any]) -> None:
        """Keep the hardware facts the installer agent reported (replacing older ones);
        UnknownNode when there is no such node. The node's state is not touched."""
        ...

    # leases
    def leases(self) -> list[Lease]: ...
    def save_leases(self, leases: Iterable[Lease]) -> None: ...
    def delete_lease(self, ip: str) -> None: ...

    # agent tokens (stored hashed; claim_token refuses a hash already present)
    def claim_token(self, token: Token) -> bool: ...
    def get_token(self, token_hash: str) -> Token | None: ...
    def revoke_tokens(self, hostname: str, purpose: str | None = None) -> None:
        """Revoke the node's session tokens and credentials (or those of one purpose).
        Spent boot-token hashes stay until they expire, so a replay stays refused."""
        ...
