"""Online copies of plasmaboot's own store (for `cluster backup`), and putting one back.

A copy is taken while serve keeps writing, never by copying files:
- SQLite: the backup API copies a consistent image in one read transaction (WAL readers
  never block the writer, so serve goes on), and the copy must pass `PRAGMA integrity_check`.
- PostgreSQL: `pg_dump --format=custom` reads one REPEATABLE READ snapshot while every
  server keeps writing; `pg_restore` loads it into an empty database in one transaction
  (a failure leaves the database as it was).

The password of a PostgreSQL URL goes to the tools by PGPASSWORD, never on a command line
(where `ps` shows it), and never into a message.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.store.location import hide_password, is_database_url, redact_url
from plasmaboot.store.sqlite import DB_NAME

SQLITE_FILE = "store.sqlite"
POSTGRES_FILE = "store.pgdump"
TOOL_TIMEOUT_S = 1800.0


class DumpError(Exception):
    """The store could not be copied or put back; the message names the store and the fix."""


@dataclass(frozen=True)
class StoreDump:
    kind: str  # "sqlite" | "postgresql"
    file: str  # the name of the copy in the dump directory
    schema_version: int


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """The URL as a conninfo without its password, and the environment that carries it."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(url)
    except Exception as exc:  # psycopg's ProgrammingError: the URL does not parse
        raise DumpError(f"{redact_url(url)}: not a PostgreSQL URL ({type(exc).__name__})") from None
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


def _tool(argv: list[str], env: dict[str, str], url: str, what: str) -> None:
    if shutil.which(argv[0]) is None:
        raise DumpError(f"{argv[0]} is not installed (Debian package postgresql-client)")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DumpError(
            f"{what} {redact_url(url)}: {argv[0]} took over {TOOL_TIMEOUT_S:.0f} s"
        ) from None
    if done.returncode != 0:
        why = hide_password(" | ".join(done.stderr.strip().splitlines()[-3:]), url)
        raise DumpError(f"{what} {redact_url(url)}: {argv[0]} exit {done.returncode}: {why}")


def dump_store(location: str | Path, directory: Path) -> StoreDump:
    """Copy the store at `location` (a state directory or a PostgreSQL URL) into `directory`."""
    if is_database_url(location):
        url = str(location)
        conninfo, env = _libpq(url)
        target = directory / POSTGRES_FILE
        argv = ["pg_dump", "--format=custom", "--no-owner", f"--file={target}", conninfo]
        _tool(argv, env, url, "dump")
        os.chmod(target, 0o600)
        from plasmaboot.store.postgres import PostgresStore

        store = PostgresStore(url, pool_size=1)
        try:
            version = store.schema_version()
        finally:
            store.close()
        return StoreDump("postgresql", target.name, version)
    source = Path(location) / DB_NAME
    if not source.is_file():
        raise DumpError(
            f"no plasmaboot store at {source}; pass the server's --state-dir, or --store "
            "with its PostgreSQL URL"
        )
    target = directory / SQLITE_FILE
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        with (
            closing(sqlite3.connect(source.as_uri() + "?mode=ro", uri=True)) as live,
            closing(sqlite3.connect(target)) as copy,
        ):
            live.execute("PRAGMA busy_timeout=5000")
            # One step, one read transaction: a copy in several steps starts over whenever
            # serve writes in between, and serve always writes; WAL lets it go on meanwhile.
            live.backup(copy, pages=-1)
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal
            check = copy.execute("PRAGMA integrity_check").fetchone()[0]
            version = int(copy.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise DumpError(f"copy of {source}: {exc}") from None
    if check != "ok":
        raise DumpError(f"copy of {source} fails its integrity check: {check}")
    return StoreDump("sqlite", target.name, version)


def load_store(dump: StoreDump, source: Path, location: str | Path) -> str:
    """Put a copy back: into a state directory that holds no store yet, or into an empty
    PostgreSQL database. Returns where it went (the URL without its password)."""
    if dump.kind == "postgresql":
        if not is_database_url(location):
            raise DumpError(
                "the backup holds a PostgreSQL store: pass --store with the URL of an empty "
                "database to restore it into"
            )
        url = str(location)
        conninfo, env = _libpq(url)
        argv = ["pg_restore", "--no-owner", "--exit-on-error", "--single-transaction",
                f"--dbname={conninfo}", str(source)]  # fmt: skip
        _tool(argv, env, url, "restore into")
        return redact_url(url)
    if is_database_url(location):
        raise DumpError(
            "the backup holds a SQLite store: restore it into a state directory "
            "(--server-state DIR without --store)"
        )
    target = Path(location) / DB_NAME
    if target.exists():
        raise DumpError(
            f"{target} exists: a restore never overwrites a store; choose an empty state "
            "directory, or move the old one aside first"
        )
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as copy, source.open("rb") as kept:
            shutil.copyfileobj(kept, copy, 1 << 20)
            copy.flush()
            os.fsync(copy.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return str(target)
