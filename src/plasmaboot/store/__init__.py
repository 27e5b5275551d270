"""Persistence: nodes, lifecycle events, leases and agent tokens."""

from pathlib import Path

from plasmaboot.store.base import (
    EventRecord,
    ImportResult,
    Lease,
    NodeRecord,
    Store,
    Token,
    UnknownNode,
)
from plasmaboot.store.sqlite import SqliteStore


def open_store(state_dir: Path) -> Store:
    """The store for a state directory (SQLite; PostgreSQL plugs in here by URL later)."""
    return SqliteStore.in_dir(state_dir)


__all__ = [
    "EventRecord",
    "ImportResult",
    "Lease",
    "NodeRecord",
    "SqliteStore",
    "Store",
    "Token",
    "UnknownNode",
    "open_store",
]
