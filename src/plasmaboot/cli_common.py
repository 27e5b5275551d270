"""What every CLI command shares: the standard options (the store here, or a server's admin
API), consoles, and inventory loading."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from plasmaboot.inventory import Inventory, InventoryError, load_inventory
from plasmaboot.remote import (
    CA_ENV,
    DEFAULT_CA_FILE,
    DEFAULT_TOKEN_FILE,
    SERVER_ENV,
    TOKEN_ENV,
    RemoteError,
)

out = Console()
err = Console(stderr=True)

DEFAULT_STATE_DIR = Path(os.environ.get("PLASMABOOT_STATE_DIR", "/var/lib/plasmaboot"))

ConfigOption = Annotated[
    Path, typer.Option("-c", "--config", help="The inventory (cluster.yaml).", show_default=False)
]
StateDirOption = Annotated[
    Path,
    typer.Option("--state-dir", help="Where the store lives (env PLASMABOOT_STATE_DIR)."),
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="PLASMABOOT_STORE",
        show_default=False,
        help="The store: a postgresql://USER@HOST/DB URL shared by several servers (give "
        "the password by PGPASSWORD, ~/.pgpass or this env var, not the command line), or a "
        "state directory for SQLite. Default: the state directory.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def store_location(store: str | None, state_dir: Path) -> str | Path:
    """Where `open_store` looks: `--store` when given, else the state directory (SQLite)."""
    return store or state_dir


def load_or_exit(path: Path) -> Inventory:
    """Load the inventory, or print every problem in it and exit 1."""
    try:
        return load_inventory(path)
    except InventoryError as exc:
        err.print(f"[red]{path}: {len(exc.problems)} problem(s):[/red]")
        for problem in exc.problems:
            err.print(f"  - {problem.render(str(path))}", markup=False, highlight=False)
        raise typer.Exit(1) from None


ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar=SERVER_ENV,
        show_default=False,
        help="Act through this server's admin API (https://HOST:PORT of its admin "
        f"listener, server.admin) instead of the store here (env {SERVER_ENV}). The "
        f"admin token: --token-file, else ${TOKEN_ENV}, else {DEFAULT_TOKEN_FILE}.",
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        show_default=False,
        help="With --server: a file (mode 0600) holding the admin token (scope read to "
        "look, write to act).",
    ),
]
CaOption = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        envvar=CA_ENV,
        show_default=False,
        help="With --server: plasmaboot's CA certificate, to verify the server; default: "
        f"STATE_DIR/pki/ca.crt, else {DEFAULT_CA_FILE}, else the system's trust store.",
    ),
]


@contextmanager
def remote_errors() -> Iterator[None]:
    """A server that cannot be used (unreachable, a refused token...) is one clear line
    and exit 1, never a traceback."""
    try:
        yield
    except RemoteError as exc:
        err.print(f"[red]server:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
