"""What each first-boot stage ended with: the agent produces these, the reporter sends them."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class StageStatus(enum.Enum):
    BOOTSTRAPPED = "bootstrapped"
    JOINED = "joined"
    ALREADY_MEMBER = "already-member"
    MARKER_PRESENT = "marker-present"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class StageResult:
    stage: str
    status: StageStatus
    message: str
    elapsed_s: float
