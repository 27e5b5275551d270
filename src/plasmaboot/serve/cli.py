"""`plasmaboot admin token create|list|revoke`: the admin API's scoped tokens.

They live in the store (hashed), so a running `serve` accepts or refuses them at once,
and every server sharing a PostgreSQL store does alike.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from plasmaboot.cli_common import (
    DEFAULT_STATE_DIR,
    JsonOption,
    StateDirOption,
    StoreOption,
    err,
    out,
    store_location,
)
from plasmaboot.provision.admin_tokens import AdminTokenError, AdminTokens, Scope
from plasmaboot.provision.nodefiles import pki_dir
from plasmaboot.store import Store, StoreError, open_store

app = typer.Typer(no_args_is_help=True, help="The admin API: its scoped tokens.")
token_app = typer.Typer(
    no_args_is_help=True,
    help="Admin API tokens: read (node views, events, stream) or write (also actions).",
)
app.add_typer(token_app, name="token")

NameOption = Annotated[
    str, typer.Option("--name", help="What the token is for, e.g. grafana or ci.")
]


def _store(state_dir: Path, store: str | None) -> Store:
    try:
        return open_store(store_location(store, state_dir))
    except StoreError as exc:
        err.print(f"[red]store:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M") if ts else "never"


@token_app.command("create")
def create(
    name: NameOption,
    scope: Annotated[
        Scope,
        typer.Option(
            "--scope", help="read: GET node views, events, the stream; write: also actions."
        ),
    ],
    days: Annotated[
        int | None, typer.Option("--days", min=1, help="Expire after N days (default: never).")
    ] = None,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
) -> None:
    """Make a token; it is printed once, on stdout alone (the store keeps its hash)."""
    store = _store(state_dir, store_at)
    try:
        token = AdminTokens(store).create(name, scope, days * 86400 if days else None)
    except AdminTokenError as exc:
        err.print(f"[red]admin token:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        store.close()
    print(token)
    err.print(
        f"token {name!r} (scope {scope.value}) created; it is shown only now. Clients send it "
        "as 'Authorization: Bearer TOKEN' to the admin listener (https, server.admin) and "
        f"trust the CA {pki_dir(state_dir) / 'ca.crt'}.",
        highlight=False,
        soft_wrap=True,
    )


@token_app.command("list")
def list_tokens(
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every admin token: name, scope, created, expires (never the token)."""
    store = _store(state_dir, store_at)
    try:
        tokens = AdminTokens(store).list()
    finally:
        store.close()
    if as_json:
        rows = [
            {"name": t.name, "scope": t.scope.value, "created_at": t.created_at,
             "expires_at": t.expires_at}
            for t in tokens
        ]  # fmt: skip
        print(json.dumps(rows, indent=2))
        return
    table = Table("name", "scope", "created (UTC)", "expires (UTC)")
    for t in tokens:
        table.add_row(t.name, t.scope.value, _when(t.created_at), _when(t.expires_at))
    out.print(table)


@token_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
) -> None:
    """Revoke a token by name: refused (401) from the next request on."""
    store = _store(state_dir, store_at)
    try:
        gone = AdminTokens(store).revoke(name)
    except AdminTokenError as exc:
        err.print(f"[red]admin token:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        store.close()
    out.print(f"revoked {gone.name!r} (scope {gone.scope.value})", highlight=False)
