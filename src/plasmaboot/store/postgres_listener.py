"""PostgreSQL's LISTEN/NOTIFY for the shared store: every server hears every commit.

The write side: a transaction that writes events or leases also runs `pg_notify` on the
topic's channel (`notify`), so the notification is sent when, and only if, it commits.
Its payload is the writing process's origin, then what changed (the nodes of the events,
the leases' addresses); one too long for NOTIFY's 8000 bytes names nothing, which
readers take as "anything may have changed".

The read side: one `ChangeListener` per store (so per `serve` process), started by the
first `watch`. It holds a connection of its own, not one of the pool's (a listening
connection must stay open and idle), in a thread of its own: the store is synchronous
psycopg, and the thread only blocks on that socket and hands each notification to the
waiting readers' loops. When the connection is lost it logs why, reconnects with a
backoff and meanwhile reports `live = False`, so readers poll; on every (re)connect it
wakes every reader with "anything may have changed", so each reads from its cursor and
what committed while nobody listened is read then.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Collection
from typing import Any

import psycopg

from plasmaboot.logs import get_logger
from plasmaboot.store.changes import TOPICS, ChangeWatch, Topic

log = get_logger("plasmaboot.store")

CHANNELS: dict[Topic, str] = {topic: f"plasmaboot_{topic}" for topic in TOPICS}
APPLICATION_NAME = "plasmaboot-listener"  # how pg_stat_activity shows the connection
NOTIFY_MAX = 7900  # bytes of payload; PostgreSQL refuses more than 8000
BACKOFF_S = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # waits between reconnection attempts
STOP_CHECK_S = 0.5  # how often the thread looks up from the socket to see if it must stop


def new_origin() -> str:
    """A name for one store object, so its own notifications can be told from others'."""
    return secrets.token_hex(6)


def notify(
    conn: psycopg.Connection[Any], topic: Topic, origin: str, names: Collection[str]
) -> None:
    """Queue the topic's notification in `conn`'s transaction (sent on commit only)."""
    payload = " ".join((origin, *names))
    if len(payload.encode()) > NOTIFY_MAX:
        payload = origin  # names nothing: the readers read everything
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNELS[topic], payload))


def parse(payload: str) -> tuple[str, list[str] | None]:
    """(origin, names) from a payload; names None when it names nothing."""
    origin, _, rest = payload.partition(" ")
    return origin, rest.split() if rest else None


class ChangeListener:
    """One LISTEN connection for a store's readers; see the module docstring."""

    def __init__(
        self,
        url: str,
        options: dict[str, Any],
        *,
        shown: str,
        origin: str,
        reason: Callable[[BaseException], str],
    ) -> None:
        self._url = url  # with its password: never logged (`shown` is the redacted form)
        self._options = {**options, "application_name": APPLICATION_NAME}
        self._shown = shown
        self._origin = origin
        self._reason = reason  # a driver error in one line, without the password
        self._watches: dict[ChangeWatch, bool] = {}  # watch -> skip this origin's changes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0  # connection attempts failed since the last one that worked
        self.live = False

    def __repr__(self) -> str:
        return f"ChangeListener({self._shown}, live={self.live})"

    def watch(self, topic: Topic, *, others_only: bool = False) -> ChangeWatch:
        """A watch woken by this topic's commits (`others_only`: not by this store's own,
        for a reader that already holds what it wrote)."""
        watch = ChangeWatch(topic, live=lambda: self.live, on_close=self._forget)
        with self._lock:
            self._watches[watch] = others_only
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="store-listener", daemon=True
                )
                self._thread.start()
        return watch

    def _forget(self, watch: ChangeWatch) -> None:
        with self._lock:
            self._watches.pop(watch, None)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * STOP_CHECK_S + 5)

    def _wake_all(self) -> None:
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch.notify(None)

    def _deliver(self, channel: str, payload: str) -> None:
        origin, names = parse(payload)
        with self._lock:
            watches = [
                w for w, others_only in self._watches.items()
                if CHANNELS[w.topic] == channel and not (others_only and origin == self._origin)
            ]  # fmt: skip
        for watch in watches:
            watch.notify(names)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as exc:  # the connection, or anything else: retry, never die
                if self._failures == 0:  # one line per outage, not one per attempt
                    log.warning(
                        "store: change listener disconnected; readers poll until it reconnects",
                        store=self._shown,
                        error=self._reason(exc),
                    )
                self._failures += 1
            if self.live:
                self.live = False
                self._wake_all()  # a reader waiting LIVE_POLL_S goes back to polling now
            if self._failures:
                self._stop.wait(BACKOFF_S[min(self._failures, len(BACKOFF_S)) - 1])

    def _listen(self) -> None:
        """Listen until stopped (returns) or the connection fails (raises)."""
        with psycopg.connect(self._url, **self._options) as conn:
            for channel in CHANNELS.values():
                conn.execute(f"LISTEN {channel}")
            self.live = True
            log.info("store: change listener connected; notifications live", store=self._shown)
            self._wake_all()  # read what committed while nobody listened
            self._failures = 0
            while not self._stop.is_set():
                for note in conn.notifies(timeout=STOP_CHECK_S):
                    self._deliver(note.channel, note.payload)
