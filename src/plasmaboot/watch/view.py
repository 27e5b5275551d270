"""How `plasmaboot watch` shows the fleet: a live rich view on a terminal, plain lines
(one per change) anywhere else, so a log or a pipe reads as a history."""

from __future__ import annotations

import json
import time
from datetime import datetime

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from plasmaboot.lifecycle import State
from plasmaboot.store import EventRecord
from plasmaboot.watch.fleet import Fleet, NodeRow

DETAIL_CHARS = 80


def duration(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def describe(event: EventRecord, *, node: bool = True) -> str:
    """An event in one line: time, node, move (or the state it was recorded in), who,
    detail."""
    if event.from_state != event.to_state:
        move = f"{event.from_state or '-'} -> {event.to_state}"
    else:
        move = event.to_state or "-"
    lines = event.detail.get("lines")  # install output comes in batches: the newest line
    newest = lines[-1] if isinstance(lines, list) and lines else None
    detail = event.detail.get("reason") or event.detail.get("line") or newest or ""
    if not detail and event.detail:
        detail = json.dumps(event.detail, sort_keys=True, default=str)
    detail = " ".join(str(detail).split())
    if len(detail) > DETAIL_CHARS:
        detail = detail[: DETAIL_CHARS - 3] + "..."
    where = f" {event.node}" if node else ""
    text = f"{clock(event.ts)}{where} {move} ({event.event} by {event.actor})"
    return f"{text}: {detail}" if detail else text


def counts_line(fleet: Fleet) -> str:
    counts = fleet.counts()
    parts = [f"{state.value} {counts[state]}" for state in State if counts[state]]
    return f"{len(fleet.rows)} nodes: {', '.join(parts) or 'none'}"


def _style(fleet: Fleet, row: NodeRow, now: float) -> str:
    if row.failed:
        return "red"
    if fleet.overdue_by(row, now) is not None:
        return "yellow"
    return "green" if row.state is State.ACTIVE else ""


def _note(fleet: Fleet, row: NodeRow, now: float) -> str:
    late = fleet.overdue_by(row, now)
    if late is not None:
        return f"overdue by {duration(late)}"
    return "failed" if row.failed else ""


def table(fleet: Fleet, now: float) -> Group:
    view = Table("node", "state", "stage", "in state", "note", "last event", expand=False)
    for row in fleet.ordered(now):
        last = describe(row.last, node=False) if row.last else ""
        view.add_row(
            row.hostname,
            Text(row.state.value, style=_style(fleet, row, now)),
            Text(row.stage),
            duration(now - row.entered_at),
            _note(fleet, row, now),
            Text(last, overflow="ellipsis", no_wrap=True),
        )
    footer = Text(f"last: {describe(fleet.last)}" if fleet.last else "waiting for events")
    return Group(Text(counts_line(fleet), style="bold"), view, footer)


class LiveView:
    """A terminal: the table, redrawn every tick."""

    def __init__(self, console: Console) -> None:
        self.live = Live(console=console, auto_refresh=False, transient=False)

    def start(self, fleet: Fleet) -> None:
        self.live.start()
        self.tick(fleet)

    def change(self, fleet: Fleet, row: NodeRow, event: EventRecord) -> None:
        pass  # shown at the next tick

    def tick(self, fleet: Fleet) -> None:
        self.live.update(table(fleet, time.time()), refresh=True)

    def stop(self, fleet: Fleet) -> None:
        self.tick(fleet)
        self.live.stop()


class PlainView:
    """Not a terminal: the rows once, then one line per change (events and overdue)."""

    def __init__(self) -> None:
        self._overdue: set[tuple[str, float]] = set()  # (node, entered its state at)

    def _print(self, line: str) -> None:
        print(line, flush=True)

    def start(self, fleet: Fleet) -> None:
        now = time.time()
        self._print(counts_line(fleet))
        for row in fleet.ordered(now):
            note = _note(fleet, row, now)
            self._print(
                f"{row.hostname} {row.state.value} (stage {row.stage or '-'}, "
                f"{duration(now - row.entered_at)} in state){' ' + note if note else ''}"
            )

    def change(self, fleet: Fleet, row: NodeRow, event: EventRecord) -> None:
        self._print(describe(event))

    def tick(self, fleet: Fleet) -> None:
        now = time.time()
        for row in fleet.rows.values():
            late = fleet.overdue_by(row, now)
            stay = (row.hostname, row.entered_at)
            if late is not None and stay not in self._overdue:
                self._overdue.add(stay)
                self._print(
                    f"{clock(now)} {row.hostname} overdue in {row.state.value} "
                    f"(stage {row.stage}, by {duration(late)})"
                )

    def stop(self, fleet: Fleet) -> None:
        self._print(counts_line(fleet))
