"""SQLite schema, as an ordered list of migrations (PostgreSQL's: postgres_migrations.py).

The database records its version in `PRAGMA user_version`; opening a store applies every
migration above it, each in its own transaction, so a crash mid-upgrade leaves the last
complete version. Append new migrations; never edit a released one.
"""

from __future__ import annotations

import sqlite3

from plasmaboot.store.base import SchemaTooNew

MIGRATIONS: tuple[str, ...] = (
    # 1: nodes, their MACs, the lifecycle event log and agent tokens.
    """
    CREATE TABLE nodes (
        hostname TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        target TEXT,
        profile TEXT,
        provisioning_ip TEXT,
        in_inventory INTEGER NOT NULL DEFAULT 1,
        spec TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL
    );
    CREATE TABLE node_macs (
        mac TEXT PRIMARY KEY,
        hostname TEXT NOT NULL REFERENCES nodes(hostname) ON UPDATE CASCADE
    );
    CREATE INDEX node_macs_hostname ON node_macs(hostname);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        node TEXT NOT NULL,
        from_state TEXT,
        to_state TEXT,
        event TEXT NOT NULL,
        actor TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_node ON events(node, id);
    CREATE TABLE tokens (
        token_hash TEXT PRIMARY KEY,
        hostname TEXT NOT NULL,
        purpose TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    );
    CREATE INDEX tokens_hostname ON tokens(hostname);
    """,
    # 2: DHCP leases, added with the DHCP server.
    """
    CREATE TABLE leases (
        ip TEXT PRIMARY KEY,
        client_key TEXT NOT NULL,
        mac TEXT NOT NULL,
        state TEXT NOT NULL,
        expires_at REAL NOT NULL,
        hostname TEXT
    );
    CREATE INDEX leases_client ON leases(client_key);
    """,
    # 3: the hardware facts the installer agent reported (JSON; NULL until it reports).
    """
    ALTER TABLE nodes ADD COLUMN hardware TEXT;
    ALTER TABLE nodes ADD COLUMN hardware_at REAL;
    """,
    # 4: secrets every server of the store shares (the boot-token signing key).
    """
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 5: the provisioning servers' heartbeats (provision/servers.py).
    """
    CREATE TABLE servers (
        server_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        boot_url TEXT NOT NULL,
        admin_url TEXT NOT NULL,
        version TEXT NOT NULL,
        started_at REAL NOT NULL,
        period_s REAL NOT NULL,
        services TEXT NOT NULL DEFAULT '{}',
        stopped INTEGER NOT NULL DEFAULT 0,
        last_seen REAL NOT NULL
    );
    """,
)

LATEST = len(MIGRATIONS)


def current_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = LATEST) -> int:
    """Bring the schema up to `target`; refuse a database newer than this code."""
    version = current_version(conn)
    if version > LATEST:
        raise SchemaTooNew(version, LATEST, "the state database")
    for number in range(version + 1, target + 1):
        script = MIGRATIONS[number - 1]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, script.split(";")):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return current_version(conn)
