"""The embedded store: one SQLite file in WAL mode under the state directory.

WAL with synchronous=FULL: every commit fsyncs the WAL before it returns, so a committed
transaction survives a power cut or a kernel crash, not only a killed process. The DHCP
server sends an ACK only after its lease's commit returned, so no client holds an
address the store can forget. (NORMAL, used before, fsyncs only at checkpoints; its
rate is measured beside FULL's in docs/performance/dhcp.md.)
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from plasmaboot.inventory.models import Inventory, normalize_mac
from plasmaboot.lifecycle import TARGETS, Event, IllegalTransition, State, next_state
from plasmaboot.store.base import (
    EventRecord,
    ImportResult,
    Lease,
    LeaseConflict,
    NodeRecord,
    ServerHeartbeat,
    ServerRecord,
    Token,
    UnknownNode,
)
from plasmaboot.store.changes import ChangeWatch, Topic
from plasmaboot.store.migrations import migrate

DB_NAME = "plasmaboot.db"
SYNCHRONOUS = "FULL"  # see the module docstring; bench/dhcp sets NORMAL for its baseline


def _json(value: dict[str, Any] | None) -> str:
    return json.dumps(value or {}, sort_keys=True, separators=(",", ":"))


class SqliteStore:
    shared = False  # one server per state directory

    def __init__(self, path: Path, *, migrate_to: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(f"PRAGMA synchronous={SYNCHRONOUS}")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        if migrate_to is None:
            migrate(self._conn)
        else:
            migrate(self._conn, migrate_to)

    @classmethod
    def in_dir(cls, state_dir: Path) -> SqliteStore:
        return cls(state_dir / DB_NAME)

    def close(self) -> None:
        self._conn.close()

    def watch(self, topic: Topic, *, others_only: bool = False) -> ChangeWatch:
        """Never notified: one server per file, so its readers poll (store/changes.py)."""
        return ChangeWatch(topic)

    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # ---- nodes -----------------------------------------------------------------

    # One query per lookup: the node row with its MACs folded in (boot scripts look a node
    # up on every request).
    _NODE_SQL = (
        "SELECT n.*, (SELECT group_concat(mac, ' ') FROM node_macs m "
        "WHERE m.hostname = n.hostname) AS macs FROM nodes n"
    )

    @staticmethod
    def _record(row: sqlite3.Row) -> NodeRecord:
        return NodeRecord(
            hostname=row["hostname"],
            state=State(row["state"]),
            target=State(row["target"]) if row["target"] else None,
            profile=row["profile"],
            macs=tuple(sorted((row["macs"] or "").split())),
            provisioning_ip=row["provisioning_ip"],
            in_inventory=bool(row["in_inventory"]),
            spec=json.loads(row["spec"]),
            updated_at=row["updated_at"],
            **SqliteStore._hardware(row),
        )

    @staticmethod
    def _hardware(row: sqlite3.Row) -> dict[str, Any]:
        # `in row` would look at the values; schema < 3 has no column, NULL: not reported
        if "hardware" not in row.keys() or row["hardware"] is None:  # noqa: SIM118
            return {}
        return {"hardware": json.loads(row["hardware"]), "hardware_at": row["hardware_at"]}

    def _node(self, conn: sqlite3.Connection, hostname: str) -> NodeRecord | None:
        row = conn.execute(f"{self._NODE_SQL} WHERE n.hostname = ?", (hostname,)).fetchone()
        return None if row is None else self._record(row)

    def get_node(self, hostname: str) -> NodeRecord | None:
        return self._node(self._conn, hostname)

    def node_by_mac(self, mac: str) -> NodeRecord | None:
        row = self._conn.execute(
            f"{self._NODE_SQL} JOIN node_macs k ON k.hostname = n.hostname WHERE k.mac = ?",
            (normalize_mac(mac),),
        ).fetchone()
        return None if row is None else self._record(row)

    def list_nodes(self) -> list[NodeRecord]:
        rows = self._conn.execute(f"{self._NODE_SQL} ORDER BY n.hostname")
        return [self._record(row) for row in rows]

    def _insert_event(
        self,
        conn: sqlite3.Connection,
        node: str,
        from_state: str | None,
        to_state: str | None,
        event: str,
        actor: str,
        detail: dict[str, Any] | None,
    ) -> EventRecord:
        ts = time.time()
        cur = conn.execute(
            "INSERT INTO events (ts, node, from_state, to_state, event, actor, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ts, node, from_state, to_state, event, actor, _json(detail)),
        )
        assert cur.lastrowid is not None
        return EventRecord(
            cur.lastrowid, ts, node, from_state, to_state, event, actor, dict(detail or {})
        )

    def _set_macs(self, conn: sqlite3.Connection, hostname: str, macs: Iterable[str]) -> None:
        conn.execute("DELETE FROM node_macs WHERE hostname = ?", (hostname,))
        for mac in macs:
            # A MAC moved to this node (a replaced NIC, a retired node) follows the inventory.
            conn.execute(
                "INSERT INTO node_macs (mac, hostname) VALUES (?, ?) "
                "ON CONFLICT(mac) DO UPDATE SET hostname = excluded.hostname",
                (mac, hostname),
            )

    def import_inventory(self, inv: Inventory, actor: str = "inventory") -> ImportResult:
        """Make the store's nodes match the inventory without losing any history.

        New nodes are enrolled; a discovered machine whose MAC the inventory now names
        becomes that node (its events follow it; for a node known already, its record is
        folded in); nodes gone from the inventory are kept, marked as such. Re-importing
        the same inventory changes nothing.
        """
        result = ImportResult()
        now = time.time()
        with self._tx() as conn:
            wanted = {node.hostname for node in inv.nodes}
            for node in inv.nodes:
                spec = node.model_dump(mode="json")
                existing = self._node(conn, node.hostname)
                if existing is None:
                    self._adopt_or_enroll(conn, node.hostname, node.macs, actor, now)
                    existing = self._node(conn, node.hostname)
                    assert existing is not None
                    result.added.append(node.hostname)
                elif existing.spec == spec and existing.in_inventory:
                    result.unchanged.append(node.hostname)
                    continue
                else:
                    changed = sorted(
                        k
                        for k in spec.keys() | existing.spec.keys()
                        if spec.get(k) != existing.spec.get(k)
                    )
                    detail = {"fields": changed, "returned": not existing.in_inventory}
                    absorbed = self._absorb_discovered(conn, node.hostname, node.macs)
                    if absorbed:
                        detail["discovered_as"] = absorbed
                    self._insert_event(
                        conn,
                        node.hostname,
                        existing.state,
                        existing.state,
                        "inventory-updated",
                        actor,
                        detail,
                    )
                    result.updated.append(node.hostname)
                conn.execute(
                    "UPDATE nodes SET profile = ?, provisioning_ip = ?, spec = ?, "
                    "in_inventory = 1, updated_at = ? WHERE hostname = ?",
                    (node.profile, str(node.provisioning_ip), _json(spec), now, node.hostname),
                )
                self._set_macs(conn, node.hostname, node.macs)
            for row in conn.execute(
                "SELECT hostname, state FROM nodes WHERE in_inventory = 1 AND state != ?",
                (State.DISCOVERED.value,),
            ).fetchall():
                if row["hostname"] not in wanted:
                    conn.execute(
                        "UPDATE nodes SET in_inventory = 0, updated_at = ? WHERE hostname = ?",
                        (now, row["hostname"]),
                    )
                    self._insert_event(
                        conn,
                        row["hostname"],
                        row["state"],
                        row["state"],
                        "removed-from-inventory",
                        actor,
                        None,
                    )
                    result.retired.append(row["hostname"])
        return result

    def _absorb_discovered(
        self, conn: sqlite3.Connection, hostname: str, macs: tuple[str, ...]
    ) -> list[str]:
        """A known node given the MACs of a discovered machine (`node replace`: the new
        hardware netbooted first) takes that record's events; the record goes."""
        placeholders = ",".join("?" * len(macs))
        found = [row[0] for row in conn.execute(
            f"SELECT DISTINCT n.hostname FROM nodes n JOIN node_macs m ON m.hostname = "
            f"n.hostname WHERE n.state = ? AND n.hostname != ? AND m.mac IN ({placeholders}) "
            f"ORDER BY n.hostname",
            (State.DISCOVERED.value, hostname, *macs),
        ).fetchall()]  # fmt: skip
        for old in found:
            conn.execute("UPDATE events SET node = ? WHERE node = ?", (hostname, old))
            conn.execute("DELETE FROM node_macs WHERE hostname = ?", (old,))
            conn.execute("DELETE FROM tokens WHERE hostname = ?", (old,))
            conn.execute("DELETE FROM nodes WHERE hostname = ?", (old,))
        return found

    def _adopt_or_enroll(
        self,
        conn: sqlite3.Connection,
        hostname: str,
        macs: tuple[str, ...],
        actor: str,
        now: float,
    ) -> None:
        placeholders = ",".join("?" * len(macs))
        found = conn.execute(
            f"SELECT n.hostname FROM nodes n JOIN node_macs m ON m.hostname = n.hostname "
            f"WHERE n.state = ? AND m.mac IN ({placeholders})",
            (State.DISCOVERED.value, *macs),
        ).fetchone()
        if found is None:
            conn.execute(
                "INSERT INTO nodes (hostname, state, updated_at) VALUES (?, ?, ?)",
                (hostname, State.ENROLLED.value, now),
            )
            self._insert_event(conn, hostname, None, State.ENROLLED, Event.ENROLL, actor, None)
            return
        old = found[0]
        conn.execute(
            "UPDATE nodes SET hostname = ?, state = ?, target = NULL, updated_at = ? "
            "WHERE hostname = ?",
            (hostname, next_state(old, State.DISCOVERED, Event.ENROLL).value, now, old),
        )
        conn.execute("UPDATE events SET node = ? WHERE node = ?", (hostname, old))
        self._insert_event(
            conn,
            hostname,
            State.DISCOVERED,
            State.ENROLLED,
            Event.ENROLL,
            actor,
            {"discovered_as": old},
        )

    def discover(self, mac: str, actor: str, detail: dict[str, Any] | None = None) -> NodeRecord:
        """Record an unknown machine that asked to boot, so an operator can enrol it."""
        mac = normalize_mac(mac)
        hostname = "discovered-" + mac.replace(":", "")
        with self._tx() as conn:
            known = conn.execute("SELECT hostname FROM node_macs WHERE mac = ?", (mac,)).fetchone()
            if known is None:
                conn.execute(
                    "INSERT INTO nodes (hostname, state, in_inventory, updated_at) "
                    "VALUES (?, ?, 0, ?)",
                    (hostname, State.DISCOVERED.value, time.time()),
                )
                self._set_macs(conn, hostname, [mac])
                self._insert_event(
                    conn, hostname, None, State.DISCOVERED, "discovered", actor, detail
                )
            else:
                hostname = known[0]
            node = self._node(conn, hostname)
        assert node is not None
        return node

    def transition(
        self,
        hostname: str,
        event: Event,
        actor: str,
        detail: dict[str, Any] | None = None,
        *,
        expect: State | None = None,
    ) -> EventRecord:
        """Apply `event` through the lifecycle table and record it, atomically.

        `expect` guards against a race: when given and the node has moved on, the
        transition is refused as illegal from the state actually found.
        """
        with self._tx() as conn:
            node = self._node(conn, hostname)
            if node is None:
                raise UnknownNode(hostname)
            if expect is not None and node.state is not expect:
                raise IllegalTransition(hostname, node.state, event)
            to = next_state(hostname, node.state, event)
            target = TARGETS.get(to)
            conn.execute(
                "UPDATE nodes SET state = ?, target = ?, updated_at = ? WHERE hostname = ?",
                (to.value, target.value if target else None, time.time(), hostname),
            )
            return self._insert_event(conn, hostname, node.state, to, event, actor, detail)

    def record(
        self, hostname: str, event: str, actor: str, detail: dict[str, Any] | None = None
    ) -> EventRecord:
        """Log something that happened to a node without changing its state."""
        with self._tx() as conn:
            node = self._node(conn, hostname)
            if node is None:
                raise UnknownNode(hostname)
            return self._insert_event(conn, hostname, node.state, node.state, event, actor, detail)

    def events(
        self, hostname: str | None = None, limit: int | None = None, after: int = 0
    ) -> list[EventRecord]:
        """Events oldest first; with `limit`, the newest `limit` of those after `after`."""
        sql = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [after]
        if hostname is not None:
            sql += " AND node = ?"
            args.append(hostname)
        sql += " ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT ?) ORDER BY id"
            args.append(limit)
        return [self._event(r) for r in self._conn.execute(sql, args)]

    def events_page(
        self,
        after: int,
        limit: int,
        *,
        nodes: Collection[str] | None = None,
        states: Collection[str] | None = None,
    ) -> list[EventRecord]:
        """Oldest first, the first `limit` after `after` (base.py); one writer at a time
        commits ids in order, so paging by the last id never skips one."""
        sql = "SELECT * FROM events WHERE id > ?"
        args: list[Any] = [after]
        if nodes is not None:
            sql += f" AND node IN ({', '.join('?' * len(nodes))})"
            args.extend(nodes)
        if states is not None:
            marks = ", ".join("?" * len(states))
            sql += f" AND (from_state IN ({marks}) OR to_state IN ({marks}))"
            args.extend([*states, *states])
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [self._event(r) for r in self._conn.execute(sql, args)]

    @staticmethod
    def _event(r: sqlite3.Row) -> EventRecord:
        return EventRecord(
            r["id"],
            r["ts"],
            r["node"],
            r["from_state"],
            r["to_state"],
            r["event"],
            r["actor"],
            json.loads(r["detail"]),
        )

    def state_counts(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT state, COUNT(*) FROM nodes GROUP BY state")
        return {state: count for state, count in rows}

    def set_hardware(self, hostname: str, facts: dict[str, Any]) -> None:
        """Keep a node's hardware facts; `updated_at` is left alone (it times the state)."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE nodes SET hardware = ?, hardware_at = ? WHERE hostname = ?",
                (_json(facts), time.time(), hostname),
            )
            if cur.rowcount != 1:
                raise UnknownNode(hostname)

    # ---- leases ----------------------------------------------------------------

    # The lease guard of the Store protocol, in the upsert: the row is rewritten only when
    # it does not hold its address (released, expired) or holds it for the same client.
    _SAVE_LEASE_SQL = (
        "INSERT INTO leases (ip, client_key, mac, state, expires_at, hostname) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(ip) DO UPDATE SET "
        "client_key = excluded.client_key, mac = excluded.mac, state = excluded.state, "
        "expires_at = excluded.expires_at, hostname = excluded.hostname "
        "WHERE leases.state = 'released' OR leases.expires_at <= ? "
        "OR (leases.client_key = excluded.client_key AND leases.client_key != '') "
        "OR leases.mac = excluded.mac"
    )

    @staticmethod
    def _lease(r: sqlite3.Row) -> Lease:
        return Lease(r["ip"], r["client_key"], r["mac"], r["state"], r["expires_at"], r["hostname"])

    def leases(self) -> list[Lease]:
        return [self._lease(r) for r in self._conn.execute("SELECT * FROM leases ORDER BY ip")]

    def leases_at(self, ips: Collection[str]) -> list[Lease]:
        rows = self._conn.execute(
            "SELECT * FROM leases WHERE ip IN (SELECT value FROM json_each(?)) ORDER BY ip",
            (json.dumps(sorted(set(ips))),),
        )  # one parameter, however many addresses
        return [self._lease(r) for r in rows]

    def save_leases(self, leases: Iterable[Lease]) -> list[LeaseConflict]:
        """Write a batch of leases in one transaction (DHCP group-commits through this);
        the ones refused because another client holds the address come back."""
        conflicts: list[LeaseConflict] = []
        now = time.time()
        with self._tx() as conn:
            for le in leases:
                row = (le.ip, le.client_key, le.mac, le.state, le.expires_at, le.hostname, now)
                if conn.execute(self._SAVE_LEASE_SQL, row).rowcount == 0:
                    held = conn.execute("SELECT * FROM leases WHERE ip = ?", (le.ip,)).fetchone()
                    conflicts.append(LeaseConflict(le, self._lease(held)))
        return conflicts

    def delete_lease(self, ip: str, *, expires_at: float | None = None) -> bool:
        with self._tx() as conn:
            if expires_at is None:
                cur = conn.execute("DELETE FROM leases WHERE ip = ?", (ip,))
            else:
                cur = conn.execute(
                    "DELETE FROM leases WHERE ip = ? AND expires_at = ?", (ip, expires_at)
                )
            return cur.rowcount == 1

    # ---- secrets and tokens ----------------------------------------------------

    def secret(self, name: str, candidate: bytes) -> bytes:
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO secrets (name, value, created_at) VALUES (?, ?, ?)",
                (name, candidate, time.time()),
            )
            row = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
        return bytes(row["value"])

    def claim_token(self, token: Token) -> bool:
        """Insert a token record; False if its hash is already there (a replay)."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO tokens (token_hash, hostname, purpose, created_at, "
                "expires_at, used_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    token.token_hash,
                    token.hostname,
                    token.purpose,
                    token.created_at,
                    token.expires_at,
                    token.used_at,
                ),
            )
            return cur.rowcount == 1

    def get_token(self, token_hash: str) -> Token | None:
        r = self._conn.execute(
            "SELECT * FROM tokens WHERE token_hash = ?", (token_hash,)
        ).fetchone()
        if r is None:
            return None
        return Token.from_row(r)

    def revoke_tokens(self, hostname: str, purpose: str | None = None) -> None:
        with self._tx() as conn:
            if purpose is None:
                conn.execute(
                    "DELETE FROM tokens WHERE hostname = ? AND purpose != 'boot'", (hostname,)
                )
            else:
                conn.execute(
                    "DELETE FROM tokens WHERE hostname = ? AND purpose = ?", (hostname, purpose)
                )

    def list_tokens(self, purposes: Collection[str]) -> list[Token]:
        wanted = sorted(set(purposes))
        if not wanted:
            return []
        marks = ", ".join("?" * len(wanted))
        rows = self._conn.execute(
            f"SELECT * FROM tokens WHERE purpose IN ({marks}) "
            "ORDER BY created_at, hostname, token_hash",
            wanted,
        ).fetchall()
        return [Token.from_row(r) for r in rows]

    # ---- provisioning servers ----------------------------------------------------

    def save_server(self, heartbeat: ServerHeartbeat) -> None:
        hb = heartbeat
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO servers (server_id, name, boot_url, admin_url, version, "
                "started_at, period_s, services, stopped, last_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(server_id) DO UPDATE SET "
                "name = excluded.name, boot_url = excluded.boot_url, "
                "admin_url = excluded.admin_url, version = excluded.version, "
                "started_at = excluded.started_at, period_s = excluded.period_s, "
                "services = excluded.services, stopped = excluded.stopped, "
                "last_seen = excluded.last_seen",
                (hb.server_id, hb.name, hb.boot_url, hb.admin_url, hb.version, hb.started_at,
                 hb.period_s, _json(hb.services), int(hb.stopped), time.time()),
            )  # fmt: skip

    def servers(self) -> list[ServerRecord]:
        rows = self._conn.execute(
            "SELECT *, ? - last_seen AS age_s FROM servers ORDER BY name, server_id",
            (time.time(),),
        )
        return [ServerRecord.from_row(r) for r in rows]
