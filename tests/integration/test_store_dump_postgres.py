"""The PostgreSQL half of `cluster backup` / `cluster restore`'s server state, against a real
PostgreSQL (the session's server from test_store_postgres): pg_dump while a second process
keeps writing, as serve would, then pg_restore into an empty database that a plasmaboot
store opens with every node and event of the copy; a restore never lands on a database that
already holds a store, and no message shows the password."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from test_store_postgres import Server as PgServer
from test_store_postgres import pg_server  # noqa: F401  (fixture)

from plasmaboot.inventory import load_inventory
from plasmaboot.store.dump import DumpError, dump_store, load_store
from plasmaboot.store.postgres import PostgresStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WRITER = """
import sys
from plasmaboot.store.postgres import PostgresStore
store = PostgresStore(sys.argv[1], pool_size=1)
for i in range(100000):
    store.record("node01", "writer-tick", "test", {"i": i})
    if i == 20:
        print("writing", flush=True)
"""


def ticks(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM events WHERE event = 'writer-tick'").fetchone()
    assert row is not None
    return int(row[0])


def test_pg_dump_while_writing_then_pg_restore_into_an_empty_database(
    pg_server: PgServer,  # noqa: F811  (the imported fixture)
    tmp_path: Path,
) -> None:
    with pg_server.database() as url, pg_server.database() as empty:
        store = PostgresStore(url)
        store.import_inventory(load_inventory(ROOT / "examples/lab/cluster.yaml"))
        nodes = sorted(n.hostname for n in store.list_nodes())
        store.close()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, url], stdout=subprocess.PIPE,
                                  text=True)  # fmt: skip
        try:
            assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
            dump = dump_store(url, tmp_path)
            assert writer.poll() is None, "the writer stopped before the dump ended"
        finally:
            writer.kill()
            writer.wait()
        assert (dump.kind, dump.file) == ("postgresql", "store.pgdump")
        assert (tmp_path / dump.file).stat().st_mode & 0o777 == 0o600
        written = ticks(url)

        where = load_store(dump, tmp_path / dump.file, empty)
        assert pg_server.role_password not in where and "***" in where
        restored = PostgresStore(empty)
        try:
            assert restored.schema_version() == dump.schema_version
            assert sorted(n.hostname for n in restored.list_nodes()) == nodes
        finally:
            restored.close()
        copied = ticks(empty)
        assert 20 < copied <= written, (copied, written)  # one consistent moment mid-write

        with pytest.raises(DumpError) as refused:  # the target holds a store already
            load_store(dump, tmp_path / dump.file, url)
        assert "pg_restore exit" in str(refused.value)
        assert pg_server.role_password not in str(refused.value)
        with pytest.raises(DumpError, match="pass --store with the URL of an empty database"):
            load_store(dump, tmp_path / dump.file, tmp_path / "state")
