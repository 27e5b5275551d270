"""The PostgreSQL store against a real PostgreSQL: the shared store contract, then what
only several servers on one database can get wrong (races, migrations, bad URLs).

The server is Debian's postgresql (initdb + pg_ctl), in a temporary directory owned by
the unprivileged `postgres` user when the tests run as root, listening on 127.0.0.1 on a
free port; one per session, a fresh database per test, owned by a plain login role (what
docs/store.md asks of an operator: a database and a role, no superuser).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from plasmaboot.cli import app
from plasmaboot.lifecycle import Event, IllegalTransition, State
from plasmaboot.store import (
    LeaseConflict,
    SchemaTooNew,
    Store,
    StoreUnavailable,
    open_store,
)
from plasmaboot.store.postgres import PostgresStore
from plasmaboot.store.postgres_migrations import EVENT_LOCK, LATEST, MIGRATION_LOCK
from store_contract import StoreContract, bound, heartbeat, lab

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROLE = "plasmaboot"


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    port: int
    admin_password: str
    role_password: str
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def admin(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="pbadmin",
            password=self.admin_password,
            dbname=dbname,
            autocommit=True,
        )

    def url(self, dbname: str, password: str | None = None) -> str:
        secret = self.role_password if password is None else password
        return f"postgresql://{ROLE}:{secret}@127.0.0.1:{self.port}/{dbname}"

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A fresh database owned by the plain role; its URL; dropped afterwards."""
        name = f"store_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(ROLE)
                )
            )
        try:
            yield self.url(name)
        finally:
            with self.admin() as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_server(durable: bool = False) -> Iterator[Server]:
    """The session's server; fsync off (tests want speed). `durable`: fsync and full page
    writes on, as a published figure needs (benches call `pg_server.__wrapped__`)."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server not installed (Debian package postgresql)")
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # the server refuses to run as root
        owner = pwd.getpwnam("postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="plasmaboot-pg-"))
    server = Server(_free_port(), secrets.token_urlsafe(18), secrets.token_urlsafe(18))
    pwfile, data = base / "pwfile", base / "data"
    pwfile.write_text(server.admin_password + "\n")
    if owner is not None:
        for path in (base, pwfile):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def run(*args: str | Path) -> None:
        subprocess.run([*as_user, *map(str, args)], check=True, capture_output=True, timeout=120)

    started = False
    try:
        # The password goes by file, never on a command line.
        run(bindir / "initdb", "-D", data, "-U", "pbadmin", f"--pwfile={pwfile}",
            "-A", "scram-sha-256", "-E", "UTF8", "--locale=C")  # fmt: skip
        pwfile.unlink()
        fast = "" if durable else "-c fsync=off -c full_page_writes=off "
        settings = f"-c listen_addresses=127.0.0.1 -p {server.port} -k {base} {fast}"
        settings += "-c max_connections=200"
        run(bindir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-t", "60",
            "-o", settings, "start")  # fmt: skip
        started = True
        with server.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(server.role_password)
                )
            )
        yield server
    finally:
        if started:
            run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def db_url(pg_server: Server) -> Iterator[str]:
    with pg_server.database() as url:
        yield url


class TestPostgresStore(StoreContract):
    @pytest.fixture
    def open_store(self, db_url: str) -> Iterator[Callable[[], Store]]:
        opened: list[Store] = []

        def make() -> Store:
            opened.append(PostgresStore(db_url))
            return opened[-1]

        yield make
        for store in opened:
            store.close()  # a second close is harmless


# ---- opening: the URL, migrations --------------------------------------------------------


def test_open_store_takes_a_postgresql_url(pg_server: Server, db_url: str) -> None:
    for url in (db_url, db_url.replace("postgresql://", "postgres://", 1)):
        store = open_store(url)
        assert isinstance(store, PostgresStore) and store.schema_version() == LATEST
        assert pg_server.role_password not in repr(store)
        assert "***" in repr(store)
        store.close()


def test_migrations_run_once_when_servers_start_together(pg_server: Server, db_url: str) -> None:
    dbname = db_url.rsplit("/", 1)[1]
    opened: list[PostgresStore] = []
    failed: list[BaseException] = []

    def start() -> None:
        try:
            opened.append(PostgresStore(db_url))
        except BaseException as exc:
            failed.append(exc)

    with pg_server.admin(dbname) as holder, holder.transaction():
        # A server mid-migration: the others must wait for it, not race it.
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        threads = [threading.Thread(target=start) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        assert opened == [] and failed == [], "a store opened while migrations were locked"
    for thread in threads:
        thread.join(timeout=30)
    assert failed == [] and len(opened) == 3
    assert [store.schema_version() for store in opened] == [LATEST] * 3
    with pg_server.admin(dbname) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, LATEST + 1)), "each migration applied once"
    for store in opened:
        store.close()


def test_a_newer_schema_is_refused_with_both_versions(pg_server: Server, db_url: str) -> None:
    PostgresStore(db_url).close()
    with pg_server.admin(db_url.rsplit("/", 1)[1]) as conn:
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (%s, 0)", (LATEST + 5,)
        )
    with pytest.raises(SchemaTooNew) as caught:
        PostgresStore(db_url)
    assert (caught.value.found, caught.value.supported) == (LATEST + 5, LATEST)
    message = str(caught.value)
    assert f"version {LATEST + 5}" in message and f"({LATEST})" in message
    assert "***" in message and "newer" in message


def test_migration_from_version_2_keeps_everything_and_adds_the_server_registry(
    db_url: str,
) -> None:
    old = PostgresStore(db_url, migrate_to=2)
    old.import_inventory(lab())
    key = old.secret("agent-token", b"k" * 32)
    nodes, events = old.list_nodes(), old.events()
    old.close()
    store = PostgresStore(db_url)
    assert store.schema_version() == LATEST >= 3
    assert store.list_nodes() == nodes and store.events() == events
    assert store.secret("agent-token", b"other") == key and store.servers() == []
    store.save_server(heartbeat("s1", "pxe1"))
    assert [r.heartbeat.name for r in store.servers()] == ["pxe1"]
    store.close()


def _refused(url: str, password: str) -> tuple[str, float]:
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        open_store(url)
    message = str(caught.value)
    assert password not in message and "***" in message
    assert "Traceback" not in message and "\n" not in message
    return message, time.monotonic() - start


def test_a_wrong_port_is_a_clear_error_without_the_password(pg_server: Server) -> None:
    secret = "s3cret-never-shown"
    url = f"postgresql://{ROLE}:{secret}@127.0.0.1:{_free_port()}/postgres"
    message, took = _refused(url, secret)
    assert f"postgresql://{ROLE}:***@127.0.0.1:" in message
    assert "refused" in message.lower() and took < 5


def test_a_wrong_password_is_a_clear_error_without_the_password(
    pg_server: Server, db_url: str
) -> None:
    secret = "wrong-password-never-shown"
    message, took = _refused(pg_server.url(db_url.rsplit("/", 1)[1], secret), secret)
    assert "password authentication failed" in message and took < 5


def test_a_missing_database_is_a_clear_error(pg_server: Server) -> None:
    message, _ = _refused(pg_server.url("no_such_db"), pg_server.role_password)
    assert "no_such_db" in message and "does not exist" in message


def test_a_server_that_never_answers_times_out_quickly() -> None:
    """Bounded by the default connect timeout (5 s), not by the kernel's minutes."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the handshake completes; nothing ever answers the startup packet
        port = silent.getsockname()[1]
        secret = "silent-password"
        message, took = _refused(f"postgresql://{ROLE}:{secret}@127.0.0.1:{port}/x", secret)
    assert "timeout" in message.lower() and 4 < took < 12


# ---- several servers on one database ------------------------------------------------------


def _concurrently(*calls: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(call: Callable[[], Any]) -> None:
        try:
            results.append(call())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results, errors


def test_two_servers_firing_one_transition_exactly_one_wins(pg_server: Server, db_url: str) -> None:
    one, two = PostgresStore(db_url), PostgresStore(db_url)
    one.import_inventory(lab())
    dbname = db_url.rsplit("/", 1)[1]
    # Deterministic: a third party holds node01's row, both servers queue behind it, read
    # the state only once it is theirs; the second finds pxe-booting and is refused.
    with pg_server.admin(dbname) as holder:
        with holder.transaction():
            holder.execute("SELECT 1 FROM nodes WHERE hostname = 'node01' FOR UPDATE")
            results: list[Any] = []
            errors: list[BaseException] = []
            racing = threading.Thread(
                target=lambda: _collect(results, errors, one, two, "node01"), daemon=True
            )
            racing.start()
            time.sleep(0.5)
        racing.join(timeout=30)
    assert len(results) == 1 and len(errors) == 1, (results, errors)
    assert isinstance(errors[0], IllegalTransition)
    assert results[0].from_state == "enrolled"
    # Free races too: both servers at once on each remaining node.
    for name in ("node02", "node03", "node04"):
        results, errors = _concurrently(
            partial(one.transition, name, Event.PXE_BOOT, "dhcp-a"),
            partial(two.transition, name, Event.PXE_BOOT, "dhcp-b"),
        )
        assert len(results) == 1 and [type(e) for e in errors] == [IllegalTransition]
    for name in ("node01", "node02", "node03", "node04"):
        assert [e.event for e in one.events(name)] == ["enroll", "pxe-boot"]
        node = two.get_node(name)
        assert node is not None and node.state is State.PXE_BOOTING
    one.close()
    two.close()


def _collect(
    results: list[Any], errors: list[BaseException], one: Store, two: Store, name: str
) -> None:
    found, failed = _concurrently(
        lambda: one.transition(name, Event.PXE_BOOT, "dhcp-a"),
        lambda: two.transition(name, Event.PXE_BOOT, "dhcp-b"),
    )
    results.extend(found)
    errors.extend(failed)


def test_two_servers_binding_one_address_one_conflict(pg_server: Server, db_url: str) -> None:
    one, two = PostgresStore(db_url), PostgresStore(db_url)
    first = bound("10.77.0.150", "01:aa", "52:54:00:00:00:aa")
    second = bound("10.77.0.150", "01:bb", "52:54:00:00:00:bb")
    dbname = db_url.rsplit("/", 1)[1]
    # Deterministic: an uncommitted insert of the address holds both servers' inserts
    # until it rolls back; then both try for real, and only one may win.
    with pg_server.admin(dbname) as holder:
        with holder.transaction():
            holder.execute(
                "INSERT INTO leases VALUES ('10.77.0.150', 'x', 'x', 'bound', 1e10, NULL)"
            )
            outcome: list[Any] = []
            racing = threading.Thread(
                target=lambda: outcome.extend(
                    _concurrently(
                        partial(one.save_leases, [first]), partial(two.save_leases, [second])
                    )
                ),
                daemon=True,
            )
            racing.start()
            time.sleep(0.5)
            raise psycopg.Rollback()  # the third party gives up: the address is free
        racing.join(timeout=30)
    results, errors = outcome
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 1], results
    (conflict,) = next(r for r in results if r)
    assert isinstance(conflict, LeaseConflict)
    winner = conflict.held
    assert winner in (first, second) and conflict.wanted in (first, second)
    assert conflict.wanted != winner
    assert one.leases() == two.leases() == [winner]
    one.close()
    two.close()


def test_event_ids_commit_in_order_across_servers(pg_server: Server, db_url: str) -> None:
    """A reader paging by `after` never skips an event committed late."""
    one, two = PostgresStore(db_url), PostgresStore(db_url)
    one.import_inventory(lab())
    seen = one.events()[-1].id
    with pg_server.admin(db_url.rsplit("/", 1)[1]) as writer:
        with writer.transaction():  # another server, mid-way through writing an event
            writer.execute("SELECT pg_advisory_xact_lock(%s)", (EVENT_LOCK,))
            writer.execute(
                "INSERT INTO events (ts, node, event, actor) VALUES (0, 'node02', 'slow', 'x')"
            )
            racing = threading.Thread(
                target=lambda: two.transition("node01", Event.PXE_BOOT, "dhcp"), daemon=True
            )
            racing.start()
            time.sleep(0.5)
            assert one.events(after=seen) == [], "a later event committed before an earlier one"
        racing.join(timeout=30)
    assert [e.event for e in one.events(after=seen)] == ["slow", "pxe-boot"]
    one.close()
    two.close()


def test_a_token_issued_by_one_server_is_accepted_once_by_another(db_url: str) -> None:
    from plasmaboot.store import Token

    one, two = PostgresStore(db_url), PostgresStore(db_url)
    assert one.claim_token(Token("h1", "node01", "session", 1.0, 1e10, None))
    assert two.get_token("h1") == one.get_token("h1") is not None
    assert not two.claim_token(Token("h1", "node01", "session", 2.0, 1e10, None))
    two.revoke_tokens("node01")
    assert one.get_token("h1") is None
    one.close()
    two.close()


# ---- the command line ---------------------------------------------------------------------


def test_cli_reads_and_writes_the_shared_store(pg_server: Server, db_url: str) -> None:
    runner = CliRunner()
    config = str(ROOT / "examples/lab/miniature.yaml")
    imported = runner.invoke(app, ["inventory", "import", "-c", config, "--store", db_url])
    assert imported.exit_code == 0, imported.output
    assert "added: node01, node02, node03, node04" in imported.output
    listed = runner.invoke(app, ["node", "list", "--json"], env={"PLASMABOOT_STORE": db_url})
    assert listed.exit_code == 0, listed.output
    assert '"hostname": "node04"' in listed.output

    secret = "cli-wrong-password"
    wrong = pg_server.url(db_url.rsplit("/", 1)[1], secret)
    refused = runner.invoke(app, ["node", "list"], env={"PLASMABOOT_STORE": wrong})
    assert refused.exit_code == 1
    assert "password authentication failed" in refused.output
    assert secret not in refused.output and f"{ROLE}:***@" in refused.output
    assert "Traceback" not in refused.output


def test_serve_refuses_a_wrong_store_url_before_serving(tmp_path: Path) -> None:
    secret = "serve-password-never-shown"
    url = f"postgresql://{ROLE}:{secret}@127.0.0.1:{_free_port()}/plasmaboot"
    config = str(ROOT / "examples/lab/miniature.yaml")
    args = ["serve", "-c", config, "--state-dir", str(tmp_path), "--no-dhcp", "--store", url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "cannot serve:" in result.output and f"{ROLE}:***@127.0.0.1" in result.output
    assert secret not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "plasmaboot.db").exists(), "no SQLite store made instead"


def test_a_restarted_database_costs_no_failed_request(pg_server: Server, db_url: str) -> None:
    store = PostgresStore(db_url)
    store.import_inventory(lab())
    with pg_server.admin() as admin:  # what a database restart does to pooled connections
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (db_url.rsplit("/", 1)[1],),
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    for _ in range(3):
        assert len(store.list_nodes()) == 4
    store.close()
