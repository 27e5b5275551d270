"""What every CLI command shares: the standard options, consoles, and inventory loading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from plasmaboot.inventory import Inventory, InventoryError, load_inventory

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
