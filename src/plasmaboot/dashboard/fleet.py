"""The node table's rows, kept in memory and current by the store's events.

Reading every node from the store costs about 50 µs a node (its JSON spec is decoded), so
0.5 s at 10,000 nodes: too slow to do per page view. The index reads every node once,
then, before each page, reads the events stored since (one indexed query when nothing
happened) and re-reads only the nodes they name. Every change of a node record comes with
an event of that node (transitions, inventory updates, discoveries), so this loses
nothing, and it sees other servers' changes on a shared store too. A swapped inventory
(a reload) or a large burst of changes reads every node again. Filtering and paging are
then plain Python over light rows: a few milliseconds at 10,000 nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from plasmaboot.inventory import Inventory
from plasmaboot.lifecycle import FAILED_STATES, State
from plasmaboot.provision import Provisioner
from plasmaboot.store import NodeRecord
from plasmaboot.store.following import REREAD_ALL, changed_nodes

PAGE_SIZE = 100


@dataclass(frozen=True)
class Row:
    hostname: str
    state: State
    profile: str | None
    ip: str | None
    network: str | None  # the inventory network (rack) holding the provisioning address
    macs: tuple[str, ...]
    in_inventory: bool
    updated_at: float

    @property
    def failed(self) -> bool:
        return self.state in FAILED_STATES

    def matches(self, text: str) -> bool:
        return text in self.hostname or text in (self.ip or "") or any(text in m for m in self.macs)


@dataclass(frozen=True)
class Query:
    """The table's filters (each empty: any) and page, from the page's query string."""

    state: str = ""
    profile: str = ""
    network: str = ""
    text: str = ""
    page: int = 1

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> Query:
        try:
            page = max(1, int(args.get("page", "1")))
        except ValueError:
            page = 1
        state = args.get("state", "")
        return cls(
            state=state if state in {s.value for s in State} else "",
            profile=args.get("profile", "").strip(),
            network=args.get("network", "").strip(),
            text=args.get("q", "").strip().lower(),
            page=page,
        )

    def keeps(self, row: Row) -> bool:
        return (
            (not self.state or row.state.value == self.state)
            and (not self.profile or row.profile == self.profile)
            and (not self.network or row.network == self.network)
            and (not self.text or row.matches(self.text))
        )

    def args(self, **changes: object) -> dict[str, str]:
        """The query string of this query with `changes` (page links, state links)."""
        changed = replace(self, **changes)  # type: ignore[arg-type]
        pairs = {
            "state": changed.state,
            "profile": changed.profile,
            "network": changed.network,
            "q": changed.text,
            "page": str(changed.page) if changed.page > 1 else "",
        }
        return {k: v for k, v in pairs.items() if v}


@dataclass(frozen=True)
class Page:
    rows: list[Row]
    matched: int
    number: int
    pages: int

    @property
    def first(self) -> int:
        return (self.number - 1) * PAGE_SIZE + 1 if self.rows else 0


class FleetIndex:
    def __init__(self, provisioner: Provisioner) -> None:
        self.provisioner = provisioner
        self.rows: dict[str, Row] = {}
        self.cursor = 0  # the newest event id the rows reflect
        self._inventory: Inventory | None = None
        self._networks: dict[str, str | None] = {}
        self._ordered: list[Row] | None = None  # the rows by host name, until one changes

    def refresh(self) -> int:
        """Bring the rows up to the store's newest event; that event's id."""
        store = self.provisioner.store
        if self.provisioner.inventory is not self._inventory:
            self._read_all()
            return self.cursor
        changed, self.cursor = changed_nodes(store, self.cursor)
        if len(changed) > REREAD_ALL:
            self._read_all()
            return self.cursor
        if changed:
            self._ordered = None
        for hostname in changed:
            record = store.get_node(hostname)
            if record is None:
                self.rows.pop(hostname, None)
            else:
                self.rows[hostname] = self._row(record)
        return self.cursor

    def _read_all(self) -> None:
        store = self.provisioner.store
        newest = store.events(limit=1)  # first: what changes meanwhile is read again next time
        self._inventory = self.provisioner.inventory
        self._networks = {}
        self.rows = {record.hostname: self._row(record) for record in store.list_nodes()}
        self._ordered = None
        self.cursor = max(self.cursor, newest[-1].id if newest else 0)

    def _row(self, record: NodeRecord) -> Row:
        return Row(record.hostname, record.state, record.profile, record.provisioning_ip,
                   self._network(record.provisioning_ip), record.macs, record.in_inventory,
                   record.updated_at)  # fmt: skip

    def _network(self, ip: str | None) -> str | None:
        if ip is None or self._inventory is None:
            return None
        if ip not in self._networks:
            network = self._inventory.network_of(IPv4Address(ip))
            self._networks[ip] = network.name if network else None
        return self._networks[ip]

    def counts(self) -> Counter[State]:
        return Counter(row.state for row in self.rows.values())

    def failed(self) -> list[Row]:
        return sorted((r for r in self.rows.values() if r.failed), key=lambda r: r.hostname)

    def select(self, query: Query) -> Page:
        if self._ordered is None:
            self._ordered = sorted(self.rows.values(), key=lambda r: r.hostname)
        matched = [row for row in self._ordered if query.keeps(row)]
        pages = max(1, -(-len(matched) // PAGE_SIZE))
        number = min(query.page, pages)
        start = (number - 1) * PAGE_SIZE
        return Page(matched[start : start + PAGE_SIZE], len(matched), number, pages)

    def profiles(self) -> list[str]:
        return sorted(_present(r.profile for r in self.rows.values()))

    def networks(self) -> list[str]:
        return sorted(_present(r.network for r in self.rows.values()))


def _present(values: Iterable[str | None]) -> set[str]:
    return {v for v in values if v}
