"""Where a node's time went, from its own events: PXE, install, disk boot, join.

The stage boundaries are the reports that prove each step (docs/lifecycle.md): the
installer agent's `installer-booted`, the install driver's `installed`, the installed OS's
`first-boot` and `joined`. Only the latest provisioning cycle counts (a reprovision starts
a new one at its `pxe-boot`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from plasmaboot.store import EventRecord

STAGES = ("pxe", "install", "disk boot", "join")
# The event that ends each stage, in order; the first stage starts at power-on.
_ENDS = ("installer-booted", "installed", "first-boot", "joined")


@dataclass(frozen=True)
class StageTimes:
    node: str
    seconds: dict[str, float]  # stage -> duration; a stage not reached is absent

    @property
    def total(self) -> float | None:
        return sum(self.seconds.values()) if len(self.seconds) == len(STAGES) else None


def stage_times(node: str, events: Sequence[EventRecord], powered_on: float) -> StageTimes:
    """Durations of each stage of the node's latest cycle that started after `powered_on`."""
    cycle = [e for e in events if e.ts >= powered_on]
    starts = [i for i, e in enumerate(cycle) if e.event == "pxe-boot"]
    if starts:
        cycle = cycle[starts[-1] :]
    seconds: dict[str, float] = {}
    previous = powered_on
    for stage, end in zip(STAGES, _ENDS, strict=True):
        ts = next((e.ts for e in cycle if e.event == end), None)
        if ts is None:
            break
        seconds[stage] = ts - previous
        previous = ts
    return StageTimes(node, seconds)
