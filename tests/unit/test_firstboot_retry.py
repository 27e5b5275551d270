"""Backoff: exponential ceiling, full jitter, cap, and a wall-clock bound."""

from __future__ import annotations

import random
import time

from plasmaboot.firstboot.retry import Backoff


def test_delay_ceiling_doubles_then_caps() -> None:
    backoff = Backoff(base_s=1.0, cap_s=8.0)
    rng = random.Random(7)
    for attempt, ceiling in enumerate([1, 2, 4, 8, 8, 8]):
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8, "jitter should span the whole window"


def test_jitter_spreads_simultaneous_nodes() -> None:
    backoff = Backoff(base_s=1.0, cap_s=30.0)
    delays = {round(backoff.delay(4, random.Random(seed)), 3) for seed in range(10)}
    assert len(delays) == 10


def test_until_stops_at_the_timeout() -> None:
    start = time.monotonic()
    attempts = list(Backoff(base_s=0.01, cap_s=0.02).until(0.2))
    elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 1.5  # the bound is on the schedule, not on a busy machine
    assert attempts[0] == 0 and len(attempts) > 5
