"""The shared store: PostgreSQL, for several servers on one fleet (docs/store.md).

The same `Store` protocol as SQLite, in plain SQL through psycopg 3 and a connection
pool (no ORM: the packet path asks for one row or writes one batch). What one server's
memory could not guarantee, the database does:

- a lifecycle transition locks the node row (`SELECT ... FOR UPDATE`) inside the
  transaction that records its event, so of two servers firing from one state the second
  sees the first's result;
- every transaction that writes events first takes one advisory lock, so event ids
  commit in id order and a reader paging by `after` never skips one committed late;
- a lease is an upsert guarded by the holder's client and expiry (base.py's contract):
  the address is the primary key, and of two servers racing for it exactly one writes;
- tokens live in the database, so a token one server issued is accepted (once) by all,
  and so does the key boot tokens are signed with (`secret`, inserted once).
- every transaction that writes events or leases also notifies (pg_notify, sent only
  on commit), so every server's event stream and lease view hear of it at once
  (postgres_listener.py; SQLite's readers poll instead).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Json, Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

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
    StoreUnavailable,
    Token,
    UnknownNode,
)
from plasmaboot.store.changes import ChangeWatch, Topic
from plasmaboot.store.location import hide_password, redact_url
from plasmaboot.store.postgres_listener import ChangeListener, new_origin, notify
from plasmaboot.store.postgres_migrations import EVENT_LOCK, LATEST, current_version, migrate

Conn = psycopg.Connection[DictRow]

CONNECT_TIMEOUT_S = 5  # libpq connect_timeout unless the URL sets its own
POOL_SIZE = 5  # per server: the main loop, the TFTP thread, a few API calls at once


def _reason(exc: BaseException, url: str) -> str:
    """A driver error in one line, without the password."""
    return hide_password(" ".join(str(exc).split()) or type(exc).__name__, url)


class PostgresStore:
    shared = True  # any number of servers on one database

    def __init__(
        self,
        url: str,
        *,
        migrate_to: int | None = None,
        pool_size: int = POOL_SIZE,
    ) -> None:
        self.url = redact_url(url)  # the only form of the URL kept for messages
        try:
            options: dict[str, Any] = {"autocommit": True}
            if "connect_timeout" not in conninfo_to_dict(url):
                options["connect_timeout"] = CONNECT_TIMEOUT_S
            # One connection of our own first: its error says why (refused, password,
            # no such database), where a pool would only time out.
            with psycopg.connect(url, **options) as conn:
                migrate(conn, LATEST if migrate_to is None else migrate_to, f"the store {self.url}")
            self._pool: ConnectionPool[Conn] = ConnectionPool(
                url,
                connection_class=Conn,
                kwargs={**options, "row_factory": dict_row},
                min_size=1,
                max_size=pool_size,
                check=ConnectionPool.check_connection,
                name="plasmaboot-store",
                open=False,
            )
            self._pool.open(wait=True, timeout=2 * CONNECT_TIMEOUT_S)
        except (psycopg.Error, PoolTimeout) as exc:
            raise StoreUnavailable(
                f"cannot use the store {self.url}: {_reason(exc, url)}"
            ) from None
        # Live updates (LISTEN/NOTIFY, postgres_listener.py): listening starts at the
        # first `watch`; writes name this store object as their origin.
        self._origin = new_origin()
        self._listener = ChangeListener(
            url, options, shown=self.url, origin=self._origin, reason=lambda e: _reason(e, url)
        )

    def __repr__(self) -> str:
        return f"PostgresStore({self.url})"

    def close(self) -> None:
        self._listener.close()
        self._pool.close()

    def watch(self, topic: Topic, *, others_only: bool = False) -> ChangeWatch:
        """Woken when a transaction of any server (`others_only`: of any other store
        object) that wrote to `topic` commits; see store/changes.py."""
        return self._listener.watch(topic, others_only=others_only)

    def schema_version(self) -> int:
        with self._pool.connection() as conn:
            return current_version(conn)

    @contextmanager
    def _tx(self, *, events: bool = False) -> Iterator[Conn]:
        """One transaction; `events=True` first takes the event lock (see the docstring)."""
        with self._pool.connection() as conn, conn.transaction():
            if events:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENT_LOCK,))
                notify(conn, "events", self._origin, ())  # readers page from their cursor
            yield conn

    # ---- nodes -----------------------------------------------------------------

    _NODE_SQL = (
        "SELECT n.*, ARRAY(SELECT mac FROM node_macs m WHERE m.hostname = n.hostname "
        "ORDER BY mac) AS macs FROM nodes n"
    )

    @staticmethod
    def _record(row: DictRow) -> NodeRecord:
        return NodeRecord(
            hostname=row["hostname"],
            state=State(row["state"]),
            target=State(row["target"]) if row["target"] else None,
            profile=row["profile"],
            macs=tuple(row["macs"]),
            provisioning_ip=row["provisioning_ip"],
            in_inventory=bool(row["in_inventory"]),
            spec=row["spec"],
            updated_at=row["updated_at"],
            hardware=row["hardware"],
            hardware_at=row["hardware_at"],
        )

    def _node(self, conn: Conn, hostname: str, *, lock: bool = False) -> NodeRecord | None:
        sql = f"{self._NODE_SQL} WHERE n.hostname = %s" + (" FOR UPDATE OF n" if lock else "")
        row = conn.execute(sql, (hostname,)).fetchone()
        return None if row is None else self._record(row)

    def get_node(self, hostname: str) -> NodeRecord | None:
        with self._pool.connection() as conn:
            return self._node(conn, hostname)

    def node_by_mac(self, mac: str) -> NodeRecord | None:
        with self._pool.connection() as conn:
            row = conn.execute(
                f"{self._NODE_SQL} JOIN node_macs k ON k.hostname = n.hostname WHERE k.mac = %s",
                (normalize_mac(mac),),
            ).fetchone()
        return None if row is None else self._record(row)

    def list_nodes(self) -> list[NodeRecord]:
        with self._pool.connection() as conn:
            rows = conn.execute(f"{self._NODE_SQL} ORDER BY n.hostname").fetchall()
        return [self._record(row) for row in rows]

    @staticmethod
    def _insert_event(
        conn: Conn,
        node: str,
        from_state: str | None,
        to_state: str | None,
        event: str,
        actor: str,
        detail: dict[str, Any] | None,
    ) -> EventRecord:
        ts = time.time()
        row = conn.execute(
            "INSERT INTO events (ts, node, from_state, to_state, event, actor, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (ts, node, from_state, to_state, event, actor, Json(detail or {})),
        ).fetchone()
        assert row is not None
        return EventRecord(
            row["id"], ts, node, from_state, to_state, event, actor, dict(detail or {})
        )

    @staticmethod
    def _set_macs(conn: Conn, hostname: str, macs: Iterable[str]) -> None:
        conn.execute("DELETE FROM node_macs WHERE hostname = %s", (hostname,))
        for mac in macs:
            # A MAC moved to this node (a replaced NIC, a retired node) follows the inventory.
            conn.execute(
                "INSERT INTO node_macs (mac, hostname) VALUES (%s, %s) "
                "ON CONFLICT (mac) DO UPDATE SET hostname = excluded.hostname",
                (mac, hostname),
            )

    def import_inventory(self, inv: Inventory, actor: str = "inventory") -> ImportResult:
        """Make the store's nodes match the inventory without losing any history (as
        SqliteStore.import_inventory); several servers importing at once take turns."""
        result = ImportResult()
        now = time.time()
        with self._tx(events=True) as conn:
            wanted = {node.hostname for node in inv.nodes}
            for node in inv.nodes:
                spec = node.model_dump(mode="json")
                existing = self._node(conn, node.hostname)
                if existing is None:
                    self._adopt_or_enroll(conn, node.hostname, node.macs, actor, now)
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
                    "UPDATE nodes SET profile = %s, provisioning_ip = %s, spec = %s, "
                    "in_inventory = TRUE, updated_at = %s WHERE hostname = %s",
                    (node.profile, str(node.provisioning_ip), Jsonb(spec), now, node.hostname),
                )
                self._set_macs(conn, node.hostname, node.macs)
            rows = conn.execute(
                "SELECT hostname, state FROM nodes WHERE in_inventory AND state <> %s "
                "ORDER BY hostname",
                (State.DISCOVERED.value,),
            ).fetchall()
            for row in rows:
                if row["hostname"] not in wanted:
                    conn.execute(
                        "UPDATE nodes SET in_inventory = FALSE, updated_at = %s "
                        "WHERE hostname = %s",
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

    @staticmethod
    def _absorb_discovered(conn: Conn, hostname: str, macs: tuple[str, ...]) -> list[str]:
        """As SqliteStore._absorb_discovered: a known node given a discovered machine's
        MACs takes that record's events; the record goes."""
        found = [row["hostname"] for row in conn.execute(
            "SELECT DISTINCT n.hostname FROM nodes n JOIN node_macs m ON m.hostname = "
            "n.hostname WHERE n.state = %s AND n.hostname <> %s AND m.mac = ANY(%s) "
            "ORDER BY n.hostname",
            (State.DISCOVERED.value, hostname, list(macs)),
        ).fetchall()]  # fmt: skip
        for old in found:
            conn.execute("UPDATE events SET node = %s WHERE node = %s", (hostname, old))
            conn.execute("DELETE FROM node_macs WHERE hostname = %s", (old,))
            conn.execute("DELETE FROM tokens WHERE hostname = %s", (old,))
            conn.execute("DELETE FROM nodes WHERE hostname = %s", (old,))
        return found

    def _adopt_or_enroll(
        self, conn: Conn, hostname: str, macs: tuple[str, ...], actor: str, now: float
    ) -> None:
        found = conn.execute(
            "SELECT n.hostname FROM nodes n JOIN node_macs m ON m.hostname = n.hostname "
            "WHERE n.state = %s AND m.mac = ANY(%s) ORDER BY m.mac LIMIT 1",
            (State.DISCOVERED.value, list(macs)),
        ).fetchone()
        if found is None:
            conn.execute(
                "INSERT INTO nodes (hostname, state, updated_at) VALUES (%s, %s, %s)",
                (hostname, State.ENROLLED.value, now),
            )
            self._insert_event(conn, hostname, None, State.ENROLLED, Event.ENROLL, actor, None)
            return
        old = found["hostname"]
        conn.execute(
            "UPDATE nodes SET hostname = %s, state = %s, target = NULL, updated_at = %s "
            "WHERE hostname = %s",
            (hostname, next_state(old, State.DISCOVERED, Event.ENROLL).value, now, old),
        )
        conn.execute("UPDATE events SET node = %s WHERE node = %s", (hostname, old))
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
        with self._tx(events=True) as conn:
            known = conn.execute("SELECT hostname FROM node_macs WHERE mac = %s", (mac,)).fetchone()
            if known is None:
                conn.execute(
                    "INSERT INTO nodes (hostname, state, in_inventory, updated_at) "
                    "VALUES (%s, %s, FALSE, %s)",
                    (hostname, State.DISCOVERED.value, time.time()),
                )
                self._set_macs(conn, hostname, [mac])
                self._insert_event(
                    conn, hostname, None, State.DISCOVERED, "discovered", actor, detail
                )
            else:
                hostname = known["hostname"]
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
        """Apply `event` through the lifecycle table and record it, atomically; the node
        row is locked first, so a concurrent transition waits and then sees this one."""
        with self._tx(events=True) as conn:
            node = self._node(conn, hostname, lock=True)
            if node is None:
                raise UnknownNode(hostname)
            if expect is not None and node.state is not expect:
                raise IllegalTransition(hostname, node.state, event)
            to = next_state(hostname, node.state, event)
            target = TARGETS.get(to)
            conn.execute(
                "UPDATE nodes SET state = %s, target = %s, updated_at = %s WHERE hostname = %s",
                (to.value, target.value if target else None, time.time(), hostname),
            )
            return self._insert_event(conn, hostname, node.state, to, event, actor, detail)

    def record(
        self, hostname: str, event: str, actor: str, detail: dict[str, Any] | None = None
    ) -> EventRecord:
        """Log something that happened to a node without changing its state."""
        with self._tx(events=True) as conn:
            node = self._node(conn, hostname, lock=True)
            if node is None:
                raise UnknownNode(hostname)
            return self._insert_event(conn, hostname, node.state, node.state, event, actor, detail)

    def events(
        self, hostname: str | None = None, limit: int | None = None, after: int = 0
    ) -> list[EventRecord]:
        """Events oldest first; with `limit`, the newest `limit` of those after `after`."""
        sql = "SELECT * FROM events WHERE id > %s"
        args: list[Any] = [after]
        if hostname is not None:
            sql += " AND node = %s"
            args.append(hostname)
        sql += " ORDER BY id"
        if limit is not None:
            sql = f"SELECT * FROM ({sql} DESC LIMIT %s) newest ORDER BY id"
            args.append(limit)
        with self._pool.connection() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [self._event(r) for r in rows]

    def events_page(
        self,
        after: int,
        limit: int,
        *,
        nodes: Collection[str] | None = None,
        states: Collection[str] | None = None,
    ) -> list[EventRecord]:
        """Oldest first, the first `limit` after `after` (base.py); the event lock makes
        ids commit in order, so paging by the last id never skips one committed late."""
        sql = "SELECT * FROM events WHERE id > %s"
        args: list[Any] = [after]
        if nodes is not None:
            sql += " AND node = ANY(%s)"
            args.append(list(nodes))
        if states is not None:
            sql += " AND (from_state = ANY(%s) OR to_state = ANY(%s))"
            args.extend([list(states), list(states)])
        sql += " ORDER BY id LIMIT %s"
        args.append(limit)
        with self._pool.connection() as conn:
            rows = conn.execute(sql, args).fetchall()
        return [self._event(r) for r in rows]

    @staticmethod
    def _event(r: DictRow) -> EventRecord:
        return EventRecord(
            r["id"],
            r["ts"],
            r["node"],
            r["from_state"],
            r["to_state"],
            r["event"],
            r["actor"],
            r["detail"],
        )

    def state_counts(self) -> dict[str, int]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT state, COUNT(*) AS n FROM nodes GROUP BY state")
            return {row["state"]: int(row["n"]) for row in rows}

    def set_hardware(self, hostname: str, facts: dict[str, Any]) -> None:
        """Keep a node's hardware facts; `updated_at` is left alone (it times the state)."""
        with self._tx() as conn:
            cur = conn.execute(
                "UPDATE nodes SET hardware = %s, hardware_at = %s WHERE hostname = %s",
                (Json(facts), time.time(), hostname),
            )
            if cur.rowcount != 1:
                raise UnknownNode(hostname)

    # ---- leases ----------------------------------------------------------------

    # The lease guard of the Store protocol, in the upsert: the row is rewritten only when
    # it does not hold its address (released, expired) or holds it for the same client.
    # A racing insert of the same address waits for the first one's commit, then meets
    # the guard (ON CONFLICT locks the row even when the guard says no).
    _SAVE_LEASE_SQL = (
        "INSERT INTO leases (ip, client_key, mac, state, expires_at, hostname) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (ip) DO UPDATE SET "
        "client_key = excluded.client_key, mac = excluded.mac, state = excluded.state, "
        "expires_at = excluded.expires_at, hostname = excluded.hostname "
        "WHERE leases.state = 'released' OR leases.expires_at <= %s "
        "OR (leases.client_key = excluded.client_key AND leases.client_key <> '') "
        "OR leases.mac = excluded.mac RETURNING ip"
    )

    @staticmethod
    def _lease(r: DictRow) -> Lease:
        return Lease(r["ip"], r["client_key"], r["mac"], r["state"], r["expires_at"], r["hostname"])

    def leases(self) -> list[Lease]:
        with self._pool.connection() as conn:
            rows = conn.execute("SELECT * FROM leases ORDER BY ip").fetchall()
        return [self._lease(r) for r in rows]

    def leases_at(self, ips: Collection[str]) -> list[Lease]:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT * FROM leases WHERE ip = ANY(%s) ORDER BY ip", (list(ips),)
            ).fetchall()
        return [self._lease(r) for r in rows]

    def save_leases(self, leases: Iterable[Lease]) -> list[LeaseConflict]:
        """Write a batch of leases in one transaction (one round trip: pipelined); the
        ones refused because another client holds the address come back."""
        batch = list(leases)
        if not batch:
            return []
        now = time.time()
        refused: list[Lease] = []
        with self._tx() as conn:
            cur = conn.cursor()
            with conn.pipeline():  # the notification (sent on commit) in the same round trip
                notify(conn, "leases", self._origin, sorted({le.ip for le in batch}))
                cur.executemany(
                    self._SAVE_LEASE_SQL,
                    [(le.ip, le.client_key, le.mac, le.state, le.expires_at, le.hostname, now)
                     for le in batch],
                    returning=True,
                )  # fmt: skip
            for le in batch:
                if cur.fetchone() is None:
                    refused.append(le)
                cur.nextset()
            if not refused:
                return []
            rows = conn.execute(
                "SELECT * FROM leases WHERE ip = ANY(%s)", ([le.ip for le in refused],)
            ).fetchall()
        held = {r["ip"]: self._lease(r) for r in rows}
        return [LeaseConflict(le, held[le.ip]) for le in refused]

    def delete_lease(self, ip: str, *, expires_at: float | None = None) -> bool:
        with self._tx() as conn:
            if expires_at is None:
                cur = conn.execute("DELETE FROM leases WHERE ip = %s", (ip,))
            else:
                cur = conn.execute(
                    "DELETE FROM leases WHERE ip = %s AND expires_at = %s", (ip, expires_at)
                )
            if cur.rowcount == 1:
                notify(conn, "leases", self._origin, [ip])
            return cur.rowcount == 1

    # ---- secrets and tokens ----------------------------------------------------

    def secret(self, name: str, candidate: bytes) -> bytes:
        """Insert-if-absent, then read: a racing insert waits for the first one's commit
        and does nothing, and the read (a new snapshot) sees the first one's value."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO secrets (name, value, created_at) VALUES (%s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name, candidate, time.time()),
            )
            row = conn.execute("SELECT value FROM secrets WHERE name = %s", (name,)).fetchone()
        assert row is not None
        return bytes(row["value"])

    def claim_token(self, token: Token) -> bool:
        """Insert a token record; False if its hash is already there (a replay), whichever
        server saw it first."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO tokens (token_hash, hostname, purpose, created_at, expires_at, "
                "used_at) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (token_hash) DO NOTHING",
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
        with self._pool.connection() as conn:
            r = conn.execute("SELECT * FROM tokens WHERE token_hash = %s", (token_hash,)).fetchone()
        if r is None:
            return None
        return Token.from_row(r)

    def revoke_tokens(self, hostname: str, purpose: str | None = None) -> None:
        with self._tx() as conn:
            if purpose is None:
                conn.execute(
                    "DELETE FROM tokens WHERE hostname = %s AND purpose <> 'boot'", (hostname,)
                )
            else:
                conn.execute(
                    "DELETE FROM tokens WHERE hostname = %s AND purpose = %s", (hostname, purpose)
                )

    def list_tokens(self, purposes: Collection[str]) -> list[Token]:
        wanted = sorted(set(purposes))
        if not wanted:
            return []
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT * FROM tokens WHERE purpose = ANY(%s) "
                "ORDER BY created_at, hostname, token_hash",
                (wanted,),
            ).fetchall()
        return [Token.from_row(r) for r in rows]

    # ---- provisioning servers ----------------------------------------------------

    # The database's clock stamps and ages every heartbeat: one clock for every server.
    _NOW = "extract(epoch FROM clock_timestamp())::double precision"

    def save_server(self, heartbeat: ServerHeartbeat) -> None:
        hb = heartbeat
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO servers (server_id, name, boot_url, admin_url, version, "
                "started_at, period_s, services, stopped, last_seen) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, {self._NOW}) "
                "ON CONFLICT (server_id) DO UPDATE SET "
                "name = excluded.name, boot_url = excluded.boot_url, "
                "admin_url = excluded.admin_url, version = excluded.version, "
                "started_at = excluded.started_at, period_s = excluded.period_s, "
                "services = excluded.services, stopped = excluded.stopped, "
                "last_seen = excluded.last_seen",
                (hb.server_id, hb.name, hb.boot_url, hb.admin_url, hb.version, hb.started_at,
                 hb.period_s, Jsonb(hb.services), hb.stopped),
            )  # fmt: skip

    def servers(self) -> list[ServerRecord]:
        with self._pool.connection() as conn:
            age = f"{self._NOW} - last_seen AS age_s"
            rows = conn.execute(f"SELECT *, {age} FROM servers ORDER BY name, server_id").fetchall()
        return [ServerRecord.from_row(r) for r in rows]
