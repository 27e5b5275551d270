"""What every store offers: the records and the interface DHCP, HTTP and the CLI use.

SQLite is the embedded default; a PostgreSQL store for several servers sharing the work
implements the same `Store` protocol (docs/store.md), and both pass one test suite
(tests/store_contract.py). There is no method that sets a node's state: the only way is
`transition`, which consults the lifecycle table and records the event in the same
transaction, serialised by the database (never by a process's memory).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from plasmaboot.inventory.models import Inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.store.changes import ChangeWatch, Topic

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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeRecord:
        """The record back from `as_json` (what the CLI reads from a server's admin API)."""
        target = data.get("target")
        return cls(**{**data, "state": State(data["state"]),
                      "target": State(target) if target else None,
                      "macs": tuple(data["macs"])})  # fmt: skip


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
class LeaseConflict:
    """A lease `save_leases` did not write: its address is held by another client."""

    wanted: Lease  # what the caller asked to write (unchanged in the store)
    held: Lease  # the row that holds the address, as the store has it

    def __str__(self) -> str:
        return (
            f"{self.wanted.ip} is held by client {self.held.client_key or '-'} "
            f"({self.held.mac}, {self.held.state}) until {self.held.expires_at:.0f}; "
            f"not given to {self.wanted.client_key or '-'} ({self.wanted.mac})"
        )


@dataclass(frozen=True)
class Token:
    token_hash: str
    hostname: str
    purpose: str
    created_at: float
    expires_at: float
    used_at: float | None

    @classmethod
    def from_row(cls, row: Any) -> Token:
        """From a `tokens` row of either store (both read rows by column name)."""
        return cls(row["token_hash"], row["hostname"], row["purpose"], row["created_at"],
                   row["expires_at"], row["used_at"])  # fmt: skip


@dataclass(frozen=True)
class ServerHeartbeat:
    """What a running `serve` writes about itself every period (provision/servers.py)."""

    server_id: str  # kept in its state directory: the same across restarts
    name: str  # the host's name
    boot_url: str  # where its nodes boot from (server.provisioning_ip, http port)
    admin_url: str  # its admin listener (dashboard, admin API)
    version: str
    started_at: float
    period_s: float  # how often it writes: a reader judges staleness by it
    services: dict[str, str]  # service -> running | disabled | failed, as its /health says
    stopped: bool = False  # its last row, written by a clean stop


@dataclass(frozen=True)
class ServerRecord:
    """A server's last heartbeat as the store holds it, timed by the store's own clock
    (the database's with PostgreSQL), so hosts whose clocks differ never disagree on it."""

    heartbeat: ServerHeartbeat
    last_seen: float  # when the store wrote it
    age_s: float  # seconds since then, at the read

    @classmethod
    def from_row(cls, row: Any) -> ServerRecord:
        """From a `servers` row of either store, read with an `age_s` column."""
        services = row["services"]  # SQLite: JSON text; PostgreSQL: decoded JSONB
        heartbeat = ServerHeartbeat(
            row["server_id"], row["name"], row["boot_url"], row["admin_url"], row["version"],
            row["started_at"], row["period_s"],
            json.loads(services) if isinstance(services, str) else services,
            bool(row["stopped"]),
        )  # fmt: skip
        return cls(heartbeat, row["last_seen"], row["age_s"])


@dataclass
class ImportResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.retired)


class StoreError(RuntimeError):
    """The store cannot be used; the message says which store and why, for the operator."""


class StoreUnavailable(StoreError):
    """The store cannot be opened: unreachable, refused, or not a store (password hidden)."""


class SchemaTooNew(StoreError):
    """The database was migrated by a newer plasmaboot; this code will not write to it."""

    def __init__(self, found: int, supported: int, where: str) -> None:
        super().__init__(
            f"{where} is schema version {found}, newer than this plasmaboot understands "
            f"({supported}); upgrade plasmaboot, or point it at a store of its own"
        )
        self.found = found
        self.supported = supported


class UnknownNode(LookupError):
    def __init__(self, hostname: str) -> None:
        super().__init__(f"no node named {hostname!r}; `plasmaboot node list` shows them")
        self.hostname = hostname


class Store(Protocol):
    @property
    def shared(self) -> bool:
        """True when several servers may use this store at once (PostgreSQL): each then
        reads back what the others wrote (DHCP leases) instead of trusting its memory."""
        ...

    def close(self) -> None: ...
    def schema_version(self) -> int: ...

    # following the store (store/changes.py)
    def watch(self, topic: Topic, *, others_only: bool = False) -> ChangeWatch:
        """A wake-up for a reader that follows `topic` (call it on the loop that waits):
        PostgreSQL wakes it when any server's write commits (`others_only`: not this
        store object's own, for a reader that holds what it wrote), SQLite every poll."""
        ...

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
    ) -> EventRecord:
        """Apply `event` through the lifecycle table and record it in one transaction.

        Serialised by the database: of two callers (two servers) firing from the same
        state, the second sees the first's result, and is refused (IllegalTransition) if
        the event is not legal from there. `expect` refuses it if the node has moved on.
        """
        ...

    def record(
        self, hostname: str, event: str, actor: str, detail: dict[str, Any] | None = None
    ) -> EventRecord: ...
    def events(
        self, hostname: str | None = None, limit: int | None = None, after: int = 0
    ) -> list[EventRecord]: ...
    def events_page(
        self,
        after: int,
        limit: int,
        *,
        nodes: Collection[str] | None = None,
        states: Collection[str] | None = None,
    ) -> list[EventRecord]:
        """The first `limit` events after id `after`, oldest first: a reader pages forward
        with the last id it got. `nodes` keeps the events of those nodes; `states` those
        whose node was in one of them before or after the event. Event ids commit in id
        order (one writer at a time in SQLite, the event lock in PostgreSQL), so a reader
        paging this way never skips an event that commits later."""
        ...

    def state_counts(self) -> dict[str, int]: ...
    def set_hardware(self, hostname: str, facts: dict[str, Any]) -> None:
        """Keep the hardware facts the installer agent reported (replacing older ones);
        UnknownNode when there is no such node. The node's state is not touched."""
        ...

    # leases: the address is the primary key; the database refuses double binding
    def leases(self) -> list[Lease]: ...
    def leases_at(self, ips: Collection[str]) -> list[Lease]:
        """The rows of these addresses (those a notification named); absent: none."""
        ...

    def save_leases(self, leases: Iterable[Lease]) -> list[LeaseConflict]:
        """Write a batch of leases in one transaction; return the ones refused, in order.

        The contract (Kea's shared lease database): the stored row for an address *holds*
        it while its state is not `released` and it has not expired (`expires_at` > now).
        A lease is written over a row that holds its address only by the same client:
        the same non-empty `client_key`, or the same MAC (a machine's firmware, iPXE and
        OS send different client ids; its reserved address is its MAC's; a decline's
        quarantine row keeps the MAC). Any other lease for a held address is refused:
        nothing of it is written and a `LeaseConflict(wanted, held)` comes back; the rest
        of the batch is written. The database decides (the guard is in the upsert), so of
        two servers racing for one address exactly one writes. The caller must then treat
        a refused lease as not bound: NAK or un-bind it, learn `held`, and try the next
        candidate. Offers are not written.
        """
        ...

    def delete_lease(self, ip: str, *, expires_at: float | None = None) -> bool:
        """Delete the lease row of `ip`; with `expires_at`, only if the row still has the
        expiry the caller read (another server may have renewed it since). True if deleted."""
        ...

    # provisioning servers: each running `serve`'s heartbeat (provision/servers.py)
    def save_server(self, heartbeat: ServerHeartbeat) -> None:
        """Insert or replace the row of `heartbeat.server_id`, stamping `last_seen` with
        the store's clock."""
        ...

    def servers(self) -> list[ServerRecord]:
        """Every server that has written a heartbeat, by name then id, each with its age
        measured by the clock that stamped it."""
        ...

    def secret(self, name: str, candidate: bytes) -> bytes:
        """The secret stored under `name` (the boot-token signing key): `candidate` is
        stored if there is none yet, and whatever is stored is returned. Insert-if-absent
        in one statement, so of several servers starting together on one database the
        first writer's candidate is the one every server gets."""
        ...

    # agent tokens (stored hashed; claim_token refuses a hash already present)
    def claim_token(self, token: Token) -> bool: ...
    def get_token(self, token_hash: str) -> Token | None: ...
    def revoke_tokens(self, hostname: str, purpose: str | None = None) -> None:
        """Revoke the node's session tokens and credentials (or those of one purpose).
        Spent boot-token hashes stay until they expire, so a replay stays refused."""
        ...

    def list_tokens(self, purposes: Collection[str]) -> list[Token]:
        """The tokens of those purposes (hashes and metadata), oldest first."""
        ...
