"""The SQLite store: the shared store contract (tests/store_contract.py), plus what is
SQLite's own: the state directory, PRAGMA user_version migrations."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from plasmaboot.lifecycle import Event, State
from plasmaboot.store import (
    Lease,
    SchemaTooNew,
    SqliteStore,
    Store,
    StoreUnavailable,
    open_store,
)
from plasmaboot.store.location import hide_password, is_database_url, redact_url
from plasmaboot.store.migrations import LATEST
from store_contract import HARDWARE, StoreContract, heartbeat, lab


class TestSqliteStore(StoreContract):
    @pytest.fixture
    def open_store(self, tmp_path: Path) -> Iterator[Callable[[], Store]]:
        yield lambda: SqliteStore(tmp_path / "db")


def test_open_store_takes_a_state_directory(tmp_path: Path) -> None:
    for location in (tmp_path / "state", str(tmp_path / "state")):
        store = open_store(location)
        assert isinstance(store, SqliteStore) and store.path == tmp_path / "state/plasmaboot.db"
        store.close()


def test_a_state_directory_that_cannot_hold_a_store_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable) as caught:
        open_store(blocker)
    assert str(blocker) in str(caught.value)


def test_migration_from_version_1_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "db"
    old = SqliteStore(path, migrate_to=1)
    old.import_inventory(lab())
    old.transition("node01", Event.PXE_BOOT, "dhcp")
    assert old.schema_version() == 1
    old.close()
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "leases" not in tables

    store = SqliteStore(path)
    assert store.schema_version() == LATEST
    node = store.get_node("node01")
    assert node is not None and node.state is State.PXE_BOOTING
    store.save_leases([Lease("10.77.0.100", "aa", "52:54:00:00:00:01", "bound", 1e10)])
    assert [le.ip for le in store.leases()] == ["10.77.0.100"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST + 5}")
    try:
        SqliteStore(path)
    except RuntimeError as exc:
        assert "newer" in str(exc)
        assert isinstance(exc, SchemaTooNew) and (exc.found, exc.supported) == (LATEST + 5, LATEST)
        assert f"version {LATEST + 5}" in str(exc) and f"({LATEST})" in str(exc)
    else:
        raise AssertionError("a newer schema must be refused")


def test_migration_from_version_2_keeps_nodes_and_adds_hardware(tmp_path: Path) -> None:
    path = tmp_path / "db"
    old = SqliteStore(path, migrate_to=2)
    old.import_inventory(lab())
    old.transition("node01", Event.PXE_BOOT, "dhcp")
    old.save_leases([Lease("10.77.0.100", "aa", "52:54:00:00:00:01", "bound", 1e10)])
    before = old.get_node("node01")
    assert before is not None and before.hardware is None  # read without the column
    events = old.events()
    old.close()
    with sqlite3.connect(path) as conn:
        columns = {r[1] for r in conn.execute("PRAGMA table_info(nodes)")}
    assert "hardware" not in columns

    store = SqliteStore(path)
    assert store.schema_version() == LATEST >= 3
    assert [n.hostname for n in store.list_nodes()] == ["node01", "node02", "node03", "node04"]
    assert store.get_node("node01") == before
    assert store.events() == events and [le.ip for le in store.leases()] == ["10.77.0.100"]

    store.set_hardware("node01", HARDWARE)
    store.close()
    node = SqliteStore(path).get_node("node01")
    assert node is not None and node.hardware == HARDWARE and node.hardware_at is not None
    assert node.state is State.PXE_BOOTING and node.updated_at == before.updated_at
    assert node.as_json()["hardware"] == HARDWARE


def test_migration_from_version_4_keeps_everything_and_adds_the_server_registry(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db"
    old = SqliteStore(path, migrate_to=4)
    old.import_inventory(lab())
    key = old.secret("agent-token", b"k" * 32)
    nodes, events = old.list_nodes(), old.events()
    old.close()
    store = SqliteStore(path)
    assert store.schema_version() == LATEST >= 5
    assert store.list_nodes() == nodes and store.events() == events
    assert store.secret("agent-token", b"other") == key and store.servers() == []
    store.save_server(heartbeat("s1", "pxe1"))
    assert [r.heartbeat.name for r in store.servers()] == ["pxe1"]
    store.close()


@pytest.mark.parametrize(
    ("url", "password", "shown"),
    [
        ("postgresql://pb:s3cret-pw@db1:5432/pb", "s3cret-pw", "postgresql://pb:***@db1:5432/pb"),
        ("postgres://pb:a:b%40c@db1/pb?sslmode=x", "a:b%40c", "postgres://pb:***@db1/pb?sslmode=x"),
        ("postgresql://db1/pb?password=s3cret-pw&ssl=x", "s3cret-pw", "postgresql://db1/pb?password=***&ssl=x"),
        ("postgresql://pb:s3cret-pw@[db1/pb", "s3cret-pw", "postgresql://*** (not a valid URL)"),
        ("postgresql://pb@db1/pb", None, "postgresql://pb@db1/pb"),
    ],
)  # fmt: skip
def test_a_store_url_is_shown_without_its_password(
    url: str, password: str | None, shown: str
) -> None:
    assert redact_url(url) == shown
    assert is_database_url(url) and not is_database_url(Path(url))
    if password is not None:
        # a driver error that quotes the URL, or just the password, gives neither away
        hidden = hide_password(f'bad URI "{url}"; password {password} refused', url)
        assert password not in hidden and hidden.count("***") == 2


def test_a_postgresql_url_that_does_not_parse_is_a_clear_error() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        open_store("postgresql://pb:s3cret-pw@127.0.0.1:notaport/pb")
    message = str(caught.value)
    assert "postgresql://pb:***@127.0.0.1:notaport/pb" in message and "port" in message
    assert "s3cret-pw" not in message


LEASE_WRITER = """
import os, sys
from plasmaboot.store import Lease, SqliteStore
store = SqliteStore(__import__("pathlib").Path(sys.argv[1]))
os.getppid()  # marker: what follows is the lease commits alone
for i in range(20):
    store.save_leases([Lease(f"10.77.1.{i}", f"k{i}", f"52:54:00:00:01:{i:02x}", "bound", 1e10)])
os.getppid()
"""


def test_every_lease_commit_is_fsynced_before_it_returns(tmp_path: Path) -> None:
    """A lease the DHCP server ACKs must survive a power cut, not only a killed process:
    each commit fsyncs the WAL (synchronous=FULL), seen in the process's system calls."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (Debian package strace)")
    trace = tmp_path / "trace"
    subprocess.run(
        ["strace", "-f", "-y", "-e", "trace=fsync,fdatasync,getppid", "-o", str(trace),
         sys.executable, "-c", LEASE_WRITER, str(tmp_path / "db")],
        check=True, timeout=60,
    )  # fmt: skip
    lines = trace.read_text().splitlines()
    marks = [i for i, line in enumerate(lines) if "getppid(" in line]
    assert len(marks) == 2, lines
    synced = [line for line in lines[marks[0] : marks[1]] if "sync(" in line and "-wal>" in line]
    assert len(synced) >= 20, lines[marks[0] : marks[1]]


async def test_an_sqlite_watch_polls_and_wakes_at_once_for_its_own_process(
    tmp_path: Path,
) -> None:
    """One server per SQLite file: nothing notifies, the reader polls (store/changes.py);
    a change its own process names (the event feed's local transitions) wakes it at once."""
    store = SqliteStore(tmp_path / "db")
    watch = store.watch("leases")
    try:
        assert not watch.live
        started = time.monotonic()
        assert await watch.wait_for_change(0.2) is None, "a poll: read everything"
        assert 0.15 < time.monotonic() - started < 2
        watch.notify(["10.77.0.100"])
        watch.notify(["10.77.0.101"])  # names add up until the reader waits
        started = time.monotonic()
        assert await watch.wait_for_change(30.0) == {"10.77.0.100", "10.77.0.101"}
        watch.notify(None)
        assert await watch.wait_for_change(30.0) is None, "unnamed: read everything"
        assert time.monotonic() - started < 2
    finally:
        watch.close()
        store.close()
