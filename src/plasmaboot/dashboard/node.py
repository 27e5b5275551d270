"""What the node page shows, read from the store, the inventory and the BMC.

The timeline comes from `provision.timeline` (the spans `watch` and the lab figures use),
the install output from the `install-output` events the install driver records, and the
power state from the BMC itself, through the CLI's `node power status` path, bounded in
time so a silent BMC cannot hold the page.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from plasmaboot.dashboard.actions import ActionRunner
from plasmaboot.lifecycle import TRANSITIONS, Event
from plasmaboot.operations.nodes import OperationError
from plasmaboot.operations.power import PowerCommand, power_nodes
from plasmaboot.provision.timeline import Span, phase_seconds, spans
from plasmaboot.store import EventRecord, NodeRecord

HISTORY = 2000  # newest events read for the timeline and the output
SHOWN_EVENTS = 40
OUTPUT_LINES = 60
POWER_READ_S = 3.0
INSTALL_OUTPUT = "install-output"  # install/driver.py's event for the installer's lines


@dataclass(frozen=True)
class PowerView:
    state: str  # on | off | unknown
    note: str


@dataclass(frozen=True)
class NodeView:
    record: NodeRecord
    spans: list[Span]
    phases: dict[str, float]
    events: list[EventRecord]  # newest first
    output: list[str]
    power: PowerView
    allowed: list[str]  # the lifecycle events the node's state accepts now


def install_output(events: list[EventRecord]) -> list[str]:
    """The last lines the installer printed (oldest first), from its newest events."""
    lines: list[str] = []
    for event in reversed(events):
        if event.event != INSTALL_OUTPUT:
            continue
        batch = event.detail.get("lines") or [event.detail.get("line", "")]
        lines[:0] = [str(line) for line in batch]
        if len(lines) >= OUTPUT_LINES:
            break
    return lines[-OUTPUT_LINES:]


async def read_power(runner: ActionRunner, hostname: str) -> PowerView:
    """The BMC's answer to `node power status`, or why there is none."""
    ops = runner.operations(keep_member=True, force=False, lines=[])
    try:
        (result,) = await asyncio.wait_for(
            power_nodes(ops, PowerCommand.STATUS, [hostname]), POWER_READ_S
        )
    except TimeoutError:
        return PowerView("unknown", f"the BMC did not answer within {POWER_READ_S:g} s")
    except OperationError as exc:  # not in the inventory: nothing to ask
        return PowerView("unknown", str(exc))
    if not result.ok:
        return PowerView("unknown", result.error or "")
    where = f"{result.driver} {result.bmc}" if result.driver else ""
    return PowerView(result.state or "unknown", result.note or f"read from the BMC ({where})")


async def node_view(runner: ActionRunner, record: NodeRecord) -> NodeView:
    store = runner.provisioner.store
    events = store.events(record.hostname, limit=HISTORY)
    return NodeView(
        record=record,
        spans=spans(events, now=time.time()),
        phases=phase_seconds(events),
        events=events[::-1][:SHOWN_EVENTS],
        output=install_output(events),
        power=await read_power(runner, record.hostname),
        allowed=sorted(e.value for e in Event if (e, record.state) in TRANSITIONS),
    )


def spec_rows(record: NodeRecord) -> list[tuple[str, Any]]:
    """The inventory record as (field, value) rows; a BMC's credentials are references
    (an env var's or a file's name), so they may be shown."""
    rows: list[tuple[str, Any]] = []
    for key, value in record.spec.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", v) for k, v in value.items() if v not in (None, "", {})]
        elif value not in (None, "", [], {}):
            rows.append((key, ", ".join(map(str, value)) if isinstance(value, list) else value))
    return rows
