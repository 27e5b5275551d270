"""Waiting on a server that answers first and writes down later; no tests in here."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], bool], timeout: float = 15, every: float = 0.05) -> bool:
    """Poll `condition` until it holds (True) or `timeout` passes (False).

    For what a server records after it has answered (log lines, a reload after a signal):
    reading it once, right after the client is done, races the server.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True
