"""PostgreSQL schema, as an ordered list of migrations recorded in `schema_version`.

Several servers may start together on one database: each takes a transaction-scoped
advisory lock before it reads the version, so exactly one applies a migration and the
others find it done. All pending migrations run in that one transaction (PostgreSQL DDL
is transactional): a crash mid-upgrade leaves the previous version whole. A database
migrated by a newer plasmaboot is refused with both version numbers. Append new
migrations; never edit a released one.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from plasmaboot.store.base import SchemaTooNew

# pg_advisory_xact_lock keys (bigint, per database): b"plasmaboot migrations"/"events".
MIGRATION_LOCK = 0x70626D6967726174
EVENT_LOCK = 0x70626576656E7473

MIGRATIONS: tuple[str, ...] = (
    # 1: SQLite's versions 1-3 at once: nodes, MACs, events, tokens, leases, hardware.
    # Keys that SQLite orders byte-wise are COLLATE "C" here, so both list alike. JSON
    # (not JSONB) where machines report free text: it keeps any escaped character.
    """
    CREATE TABLE nodes (
        hostname TEXT COLLATE "C" PRIMARY KEY,
        state TEXT NOT NULL,
        target TEXT,
        profile TEXT,
        provisioning_ip TEXT,
        in_inventory BOOLEAN NOT NULL DEFAULT TRUE,
        spec JSONB NOT NULL DEFAULT '{}',
        updated_at DOUBLE PRECISION NOT NULL,
        hardware JSON,
        hardware_at DOUBLE PRECISION
    );
    CREATE TABLE node_macs (
        mac TEXT COLLATE "C" PRIMARY KEY,
        hostname TEXT COLLATE "C" NOT NULL REFERENCES nodes(hostname) ON UPDATE CASCADE
    );
    CREATE INDEX node_macs_hostname ON node_macs(hostname);
    CREATE TABLE events (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        node TEXT COLLATE "C" NOT NULL,
        from_state TEXT,
        to_state TEXT,
        event TEXT NOT NULL,
        actor TEXT NOT NULL,
        detail JSON NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_node ON events(node, id);
    CREATE TABLE tokens (
        token_hash TEXT PRIMARY KEY,
        hostname TEXT NOT NULL,
        purpose TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        used_at DOUBLE PRECISION
    );
    CREATE INDEX tokens_hostname ON tokens(hostname);
    CREATE TABLE leases (
        ip TEXT COLLATE "C" PRIMARY KEY,
        client_key TEXT NOT NULL,
        mac TEXT NOT NULL,
        state TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        hostname TEXT
    );
    CREATE INDEX leases_client ON leases(client_key);
    """,
    # 2: secrets every server shares (the boot-token signing key), made once.
    """
    CREATE TABLE secrets (
        name TEXT COLLATE "C" PRIMARY KEY,
        value BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    """,
    # 3: the provisioning servers' heartbeats (provision/servers.py); `last_seen` is the
    # database's clock, so servers on hosts whose clocks differ are judged alike.
    """
    CREATE TABLE servers (
        server_id TEXT COLLATE "C" PRIMARY KEY,
        name TEXT COLLATE "C" NOT NULL,
        boot_url TEXT NOT NULL,
        admin_url TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        period_s DOUBLE PRECISION NOT NULL,
        services JSONB NOT NULL DEFAULT '{}',
        stopped BOOLEAN NOT NULL DEFAULT FALSE,
        last_seen DOUBLE PRECISION NOT NULL
    );
    """,
)

LATEST = len(MIGRATIONS)

_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER PRIMARY KEY,
        applied_at DOUBLE PRECISION NOT NULL
    )
"""


def current_version(conn: psycopg.Connection[Any]) -> int:
    """The applied version; 0 for an empty database (no `schema_version` yet)."""
    cur = conn.cursor(row_factory=tuple_row)
    row = cur.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    row = cur.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection[Any], target: int = LATEST, where: str = "") -> int:
    """Bring the schema up to `target` under the migration lock; refuse a newer one.

    `conn` must be in autocommit mode (the transaction is taken here).
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(_VERSION_TABLE)
        version = current_version(conn)
        if version > LATEST:
            raise SchemaTooNew(version, LATEST, where or "the database")
        for number in range(version + 1, target + 1):
            conn.execute(MIGRATIONS[number - 1])
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                (number, time.time()),
            )
    return current_version(conn)
