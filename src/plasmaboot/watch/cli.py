"""`plasmaboot watch [NODE...]`: the watched nodes live, until they all rest.

It ends by itself when every watched node is in a stable state (lifecycle
`STABLE_STATES`; an enrolled node whose last event is a provision request is not resting:
its machine is being power-cycled into the installer). Exit 0 only if all are `active`;
1 otherwise (failed, in maintenance, not started...), when `--timeout` passes, or when
the store or server cannot be read, always with the reason on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Protocol

import typer
from rich.markup import escape

from plasmaboot.cli_common import (
    DEFAULT_STATE_DIR,
    CaOption,
    ServerOption,
    StateDirOption,
    StoreOption,
    TokenFileOption,
    err,
    load_or_exit,
    out,
    store_location,
)
from plasmaboot.inventory.deadlines import deadlines_for
from plasmaboot.lifecycle import State
from plasmaboot.remote import RemoteError, admin_token, ca_file
from plasmaboot.store import EventRecord, Store, StoreError, open_store
from plasmaboot.watch.fleet import Fleet, NodeRow, default_deadlines
from plasmaboot.watch.sources import (
    LocalSource,
    RemoteSource,
    Source,
    WatchError,
)
from plasmaboot.watch.view import LiveView, PlainView, duration

TICK_S = 0.5
QUEUE = 10_000  # events read ahead of the view; the reader waits when it is full


class View(Protocol):
    def start(self, fleet: Fleet) -> None: ...
    def change(self, fleet: Fleet, row: NodeRow, event: EventRecord) -> None: ...
    def tick(self, fleet: Fleet) -> None: ...
    def stop(self, fleet: Fleet) -> None: ...


async def follow(
    source: Source,
    names: list[str],
    deadlines: Mapping[State, float],
    timeout_s: float,
    view: View,
) -> tuple[Fleet, bool]:
    """Show the fleet until every watched node rests; (the fleet, whether it timed out)."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + timeout_s
    snapshot = await source.snapshot(names)
    fleet = Fleet(snapshot.rows, deadlines, seen=snapshot.cursor, adopt_new=not names)
    queue: asyncio.Queue[EventRecord] = asyncio.Queue(maxsize=QUEUE)

    async def pump() -> None:
        async for event in source.events(snapshot.cursor, names):
            await queue.put(event)

    reader = loop.create_task(pump(), name="watch-events")
    view.start(fleet)
    timed_out = False
    try:
        while not fleet.settled:
            remaining = ends - loop.time()
            if remaining <= 0:
                timed_out = True
                break
            try:
                event: EventRecord | None = await asyncio.wait_for(
                    queue.get(), min(TICK_S, remaining)
                )
            except TimeoutError:
                event = None
            while event is not None:
                row = fleet.apply(event)
                if row is not None:
                    view.change(fleet, row, event)
                event = None if queue.empty() else queue.get_nowait()
            if reader.done():
                reader.result()  # the reason it stopped (a refused token...)
                raise WatchError("the event reader stopped")
            view.tick(fleet)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        view.stop(fleet)
    return fleet, timed_out


def _where(row: NodeRow, now: float) -> str:
    return f"{row.hostname} {row.state.value} (stage {row.stage or '-'}, " + (
        f"{duration(now - row.entered_at)} in state)"
    )


def report(fleet: Fleet, timed_out: bool, timeout_s: float) -> int:
    """Say how it ended; the exit code (0: every watched node is active)."""
    now = time.time()
    if not fleet.rows:
        err.print("[red]watch:[/red] no nodes to watch", highlight=False)
        return 1
    if timed_out:
        moving = [_where(r, now) for r in fleet.ordered(now) if not r.resting]
        err.print(
            f"[red]timed out[/red] after {timeout_s:g} s, still moving: "
            f"{escape('; '.join(moving))}",
            highlight=False,
            soft_wrap=True,
        )
        return 1
    if fleet.all_active:
        out.print(f"all {len(fleet.rows)} watched nodes are active", highlight=False)
        return 0
    others = [_where(r, now) for r in fleet.ordered(now) if r.state is not State.ACTIVE]
    err.print(
        f"[red]not active:[/red] {escape('; '.join(others))}; see `plasmaboot node events NODE`",
        highlight=False,
        soft_wrap=True,
    )
    return 1


NodesArgument = Annotated[
    list[str] | None,
    typer.Argument(
        help="Node host names (default: every node not decommissioned).", show_default=False
    ),
]
DeadlinesConfig = Annotated[
    Path | None,
    typer.Option(
        "-c",
        "--config",
        help="The inventory, for its deadlines (overdue nodes); default: the built-in ones.",
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0, help="Give up (exit 1) after this many seconds.")
]


def watch_command(
    nodes: NodesArgument = None,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
    config: DeadlinesConfig = None,
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    ca: CaOption = None,
    timeout: TimeoutOption = 3600,
) -> None:
    """Watch nodes live until they all rest: exit 0 if every one is active, else 1.

    With --server, through that server's admin API and event stream (a read token)."""
    names = list(nodes or [])
    deadlines = deadlines_for(load_or_exit(config)) if config else default_deadlines()
    store: Store | None = None
    try:
        if server:
            source: Source = RemoteSource(server, admin_token(token_file), ca_file(ca, state_dir))
        else:
            store = open_store(store_location(store_at, state_dir))
            source = LocalSource(store)
        view: View = LiveView(out) if out.is_terminal else PlainView()
        fleet, timed_out = asyncio.run(follow(source, names, deadlines, timeout, view))
    except (WatchError, StoreError, RemoteError) as exc:
        err.print(f"[red]watch:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    finally:
        if store is not None:
            store.close()
    raise typer.Exit(report(fleet, timed_out, timeout))
