"""Waking a reader when the store changes: PostgreSQL notifies, SQLite is polled.

A reader that follows the store (the event stream's feed, the DHCP server's lease view,
its node view) asks `store.watch(topic)` for a `ChangeWatch` and loops on
`wait_for_change(poll_s)`. With PostgreSQL the store's listener (postgres_listener.py)
wakes it as soon as another transaction that wrote to the topic commits, naming what
changed (the leases' addresses, the events' nodes); with SQLite (one server), or while
PostgreSQL's listener is reconnecting, it wakes every `poll_s`. Either way the reader
then reads the store from its own cursor (or re-reads what was named), never from the
notification itself: a wake too many costs one query, and none can lose a change. Readers
that keep node records re-read the nodes the new events name (`following.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import Literal

Topic = Literal["events", "leases"]
TOPICS: tuple[Topic, ...] = ("events", "leases")

# With notifications live a reader still reads every LIVE_POLL_S: a listener cut off
# without noticing (a half-open TCP connection) delays a change by at most that.
LIVE_POLL_S = 5.0


class ChangeWatch:
    """One reader's wake-up for one topic; made (by `Store.watch`) on the loop that waits.

    `notify` may be called from any thread (the listener's); `wait_for_change` only on
    the loop it was made on. Changes named between two waits add up, so a burst of
    commits makes one read.
    """

    def __init__(
        self,
        topic: Topic,
        *,
        live: Callable[[], bool] = lambda: False,
        on_close: Callable[[ChangeWatch], None] | None = None,
    ) -> None:
        self.topic = topic
        self._live = live
        self._on_close = on_close
        self._loop = asyncio.get_running_loop()
        self._woken = asyncio.Event()
        self._lock = threading.Lock()
        self._named: set[str] | None = set()  # None: something changed, not named

    @property
    def live(self) -> bool:
        """True while changes arrive as notifications (else the reader polls)."""
        return self._live()

    def notify(self, names: Iterable[str] | None = None) -> None:
        """Something of the topic changed: `names` says what (None: unknown). Any thread."""
        with self._lock:
            if names is None or self._named is None:
                self._named = None
            else:
                self._named.update(names)
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            here = False
        if here:
            self._woken.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                self._loop.call_soon_threadsafe(self._woken.set)

    async def wait_for_change(self, poll_s: float) -> frozenset[str] | None:
        """Until a notification, or `poll_s` (LIVE_POLL_S while notifications are live).

        What the notifications since the last wait named; None when anything may have
        changed (the poll ran out, the listener reconnected, a change was not named):
        the reader then reads everything after its cursor, or everything.
        """
        timeout = max(poll_s, LIVE_POLL_S) if self.live else poll_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout)
        notified = self._woken.is_set()
        self._woken.clear()
        with self._lock:
            named, self._named = self._named, set()
        if not notified or named is None:
            return None
        return frozenset(named)

    def close(self) -> None:
        """The reader stops: the listener forgets it."""
        if self._on_close is not None:
            self._on_close(self)
