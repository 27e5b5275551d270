"""Persistence: nodes, lifecycle events, leases, agent tokens and the provisioning servers."""

import sqlite3
from pathlib import Path

from plasmaboot.store.base import (
    EventRecord,
    ImportResult,
    Lease,
    LeaseConflict,
    NodeRecord,
    SchemaTooNew,
    ServerHeartbeat,
    ServerRecord,
    Store,
    StoreError,
    StoreUnavailable,
    Token,
    UnknownNode,
)
from plasmaboot.store.location import is_database_url, redact_url
from plasmaboot.store.sqlite import SqliteStore


def open_store(location: str | Path) -> Store:
    """The store at `location`: a `postgresql://` (or `postgres://`) URL opens the shared
    PostgreSQL store, anything else is a state directory holding the SQLite one.

    StoreUnavailable (the URL shown without its password) when it cannot be opened,
    SchemaTooNew when a newer plasmaboot has migrated it.
    """
    if is_database_url(location):
        from plasmaboot.store.postgres import PostgresStore  # the driver only when used

        return PostgresStore(str(location))
    state_dir = Path(location)
    try:
        return SqliteStore.in_dir(state_dir)
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailable(f"cannot open the store in {state_dir}: {exc}") from None


__all__ = [
    "EventRecord",
    "ImportResult",
    "Lease",
    "LeaseConflict",
    "NodeRecord",
    "SchemaTooNew",
    "ServerHeartbeat",
    "ServerRecord",
    "SqliteStore",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Token",
    "UnknownNode",
    "open_store",
    "redact_url",
]
