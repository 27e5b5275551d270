"""Exponential backoff with full jitter, replacing the seeds' fixed ``sleep 5``/``sleep 10``.

Full jitter (delay uniform in [0, min(cap, base * 2**attempt)]) spreads nodes that boot at
the same moment so they do not hammer the leader in lock-step. Hand-written because it is
twenty lines; a retry library (tenacity, backoff) would be a new dependency on every node
for less control over what each attempt logs.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base_s: float = 1.0
    cap_s: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number ``attempt`` (0-based)."""
        ceiling = min(self.cap_s, self.base_s * (2**attempt))
        return (rng or random).uniform(0, ceiling)

    def until(self, timeout_s: float) -> Iterator[int]:
        """Yield attempt numbers, sleeping between them, until ``timeout_s`` has elapsed."""
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            yield attempt
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(self.delay(attempt), remaining))
            attempt += 1
