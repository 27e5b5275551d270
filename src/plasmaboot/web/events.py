"""`GET /api/v1/events/stream`: every stored event as server-sent events, resumable.

The store is the source of truth, not a process's memory: with several servers on one
PostgreSQL store, each server's stream must carry every server's events, and a client
that reconnects (to any server) must get exactly what it missed. So every event a client
receives was read from the store, and its SSE `id:` is the store's event id. Event ids
commit in id order (base.py, `events_page`), which makes "everything after id N" a
complete, duplicate-free answer whenever it is asked.

One `EventFeed` per server reads the store for every connected client (none connected:
no query at all): the events after the last id it read, each time its watch on the store
wakes it (store/changes.py). With PostgreSQL that is as soon as any server's, or the
CLI's, event commits (LISTEN/NOTIFY); with SQLite, or while PostgreSQL's listener is
reconnecting, every `POLL_S`. A transition this server's lifecycle service applies wakes
it at once with either store. The read path is the same whatever woke it, so a missed
wake-up delays an event by at most one poll, and never loses it.

The feed keeps the last events it read in a ring, shared by every client, each with its
SSE text rendered once (50 dashboards on a storm would otherwise serialise every event
50 times on the server's one loop). A client whose position is inside the ring reads
from it; one that is behind (a resume from an old id,
or a slow reader the ring has moved past) pages through the store until it catches up.
Either way a client holds at most one page, and a write the client does not take within
`WRITE_TIMEOUT_S` closes the connection (the client resumes with `Last-Event-ID`): what a
connection buffers is bounded, whatever the client does.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from aiohttp import web
from prometheus_client import Gauge

from plasmaboot.lifecycle import State
from plasmaboot.logs import get_logger
from plasmaboot.provision import Provisioner
from plasmaboot.store import EventRecord, Store
from plasmaboot.store.changes import ChangeWatch
from plasmaboot.web.api import error

log = get_logger("plasmaboot.http")

POLL_S = 0.5  # how stale another server's event may be without notifications (SQLite)
HEARTBEAT_S = 15.0  # a comment line, so proxies keep an idle stream open
PAGE = 500  # events per store read and per write to a client
RING = 4096  # events the feed keeps for clients that are nearly up to date
WRITE_TIMEOUT_S = 30.0
RETRY_MS = 2000  # the reconnection delay an EventSource is told to use
MAX_NODE_FILTERS = 1000

STREAM_CLIENTS = Gauge("plasmaboot_event_stream_clients", "Clients of /api/v1/events/stream")
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}


class EventFeed:
    """Reads new events from the store for every stream client of one server."""

    def __init__(
        self,
        store: Store,
        *,
        poll_s: float = POLL_S,
        heartbeat_s: float = HEARTBEAT_S,
        page: int = PAGE,
        ring: int = RING,
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.page = page
        self.ring_size = ring
        self.cursor = 0  # the last event id read from the store
        self.floor = 0  # every event with an id in (floor, cursor] is in the ring
        self.closed = False
        self._ring: list[EventRecord] = []
        self._texts: dict[int, str] = {}  # each ring event's SSE message, by id
        self._clients = 0
        self._task: asyncio.Task[None] | None = None
        self._watch: ChangeWatch | None = None  # while a client is connected
        self._news = asyncio.Event()

    @property
    def clients(self) -> int:
        return self._clients

    # ---- the lifecycle listener and the poller ------------------------------------------

    def wake(self, _event: EventRecord) -> None:
        """A lifecycle listener (any thread): this server applied a transition, read now."""
        if self._watch is not None:
            self._watch.notify()

    def join(self) -> None:
        """A client connected: start reading the store, from its newest event, if idle."""
        if self._task is None:
            newest = self.store.events(limit=1)  # a store error: refused, nothing counted
            self.cursor = self.floor = newest[-1].id if newest else 0
            self._ring = []
            self._texts = {}
            self._watch = self.store.watch("events")
            self._task = asyncio.get_running_loop().create_task(
                self._run(self._watch), name="event-feed"
            )
        self._clients += 1
        STREAM_CLIENTS.inc()

    def leave(self) -> None:
        self._clients -= 1
        STREAM_CLIENTS.dec()
        if self._clients == 0:
            self._stop_reading()

    def close(self) -> None:
        """The server is stopping: every stream ends (its clients resume elsewhere)."""
        self.closed = True
        self._announce()
        self._stop_reading()

    def _stop_reading(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    async def _run(self, watch: ChangeWatch) -> None:
        while True:
            await watch.wait_for_change(self.poll_s)
            try:
                self.poll()
            except Exception:  # a store hiccup: clients wait, the next poll tries again
                log.exception("event stream: reading new events failed; retrying")

    def poll(self) -> None:
        """Read every event after the cursor into the ring; tell the waiting clients."""
        read = False
        while True:
            page = self.store.events_page(self.cursor, self.page)
            if page:
                self._ring.extend(page)
                self._texts.update((e.id, sse_message(e)) for e in page)
                self.cursor = page[-1].id
                read = True
            if len(page) < self.page:
                break
        if len(self._ring) > 2 * self.ring_size:
            drop = len(self._ring) - self.ring_size
            self.floor = self._ring[drop - 1].id
            for event in self._ring[:drop]:
                del self._texts[event.id]
            del self._ring[:drop]
        if read:
            self._announce()

    def _announce(self) -> None:
        self._news.set()
        self._news = asyncio.Event()

    # ---- what a client reads -------------------------------------------------------------

    def message(self, event: EventRecord) -> str:
        """The event's SSE message: the ring's copy, else rendered now (a page from the
        store, for a client behind the ring)."""
        text = self._texts.get(event.id)
        return sse_message(event) if text is None else text

    async def wait(self, position: int, timeout: float) -> None:
        """Until there is something after `position`, the feed closes, or `timeout`."""
        if self.cursor > position or self.closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._news.wait(), timeout)

    def read(self, position: int, wanted: Filters) -> tuple[list[EventRecord], int]:
        """The next events after `position` that `wanted` keeps, and the new position
        (the last id looked at, kept or not): from the ring when it reaches back that
        far, else one page from the store."""
        if position >= self.cursor:
            return [], position
        if position >= self.floor:
            start = bisect.bisect_right(self._ring, position, key=lambda e: e.id)
            chunk = self._ring[start : start + self.page]
            moved_to = chunk[-1].id if chunk else self.cursor
            return [e for e in chunk if wanted.keeps(e)], moved_to
        known = self.cursor  # committed and visible: the feed has read up to it
        page = self.store.events_page(position, self.page, nodes=wanted.nodes, states=wanted.states)
        if len(page) == self.page:
            return page, page[-1].id
        return page, max(known, page[-1].id if page else position)


FEED = web.AppKey("event_feed", EventFeed)


@dataclass(frozen=True)
class Filters:
    nodes: frozenset[str] | None = None
    states: frozenset[str] | None = None

    def keeps(self, event: EventRecord) -> bool:
        if self.nodes is not None and event.node not in self.nodes:
            return False
        return self.states is None or bool({event.from_state, event.to_state} & self.states)


def _filters(request: web.Request) -> Filters:
    nodes = request.query.getall("node", [])
    states = request.query.getall("state", [])
    if len(nodes) > MAX_NODE_FILTERS:
        raise error(400, f"at most {MAX_NODE_FILTERS} node filters", field="node")
    if any(not name for name in nodes):
        raise error(400, "a node filter names no node", field="node")
    valid = {s.value for s in State}
    unknown = sorted(set(states) - valid)
    if unknown:
        raise error(
            400, f"unknown state(s): {', '.join(unknown)}", field="state", allowed=sorted(valid)
        )
    return Filters(frozenset(nodes) if nodes else None, frozenset(states) if states else None)


def _resume_after(request: web.Request) -> int | None:
    """The id to resume after: `Last-Event-ID` (an EventSource resends it when it
    reconnects), else `?after=`; None: only events from now on."""
    raw = request.headers.get("Last-Event-ID", "").strip() or request.query.get("after")
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise error(400, "Last-Event-ID and after must be event ids (integers >= 0)")
    return int(raw)


def sse_message(event: EventRecord) -> str:
    """One event as an SSE message: id, event (its kind), data (the record as JSON)."""
    data = json.dumps(asdict(event), default=str, separators=(",", ":"))  # no newline
    kind = "".join(event.event.split()) or "message"
    return f"id: {event.id}\nevent: {kind}\ndata: {data}\n\n"


async def _messages(
    request: web.Request, feed: EventFeed, position: int, wanted: Filters
) -> AsyncIterator[str]:
    """The stream's text, chunk by chunk: events, and a heartbeat when idle."""
    loop = asyncio.get_running_loop()
    yield f"retry: {RETRY_MS}\n: plasmaboot events after {position}\n\n"
    quiet_since = loop.time()
    while not feed.closed:
        events, position = feed.read(position, wanted)
        if events:
            yield "".join(feed.message(e) for e in events)
            quiet_since = loop.time()
        if position < feed.cursor:
            await asyncio.sleep(0)  # catching up: let the server breathe between pages
            continue
        await feed.wait(position, min(1.0, feed.heartbeat_s))
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        if loop.time() - quiet_since >= feed.heartbeat_s and feed.cursor <= position:
            yield ": heartbeat\n\n"
            quiet_since = loop.time()


async def event_stream(request: web.Request) -> web.StreamResponse:
    """Every stored event after `Last-Event-ID` (or `?after=`; neither: from now on), then
    each new one as it is stored; `?node=` (repeatable) and `?state=` (repeatable: the
    node was in that state before or after the event) filter."""
    wanted = _filters(request)
    after = _resume_after(request)
    if request.method == "HEAD":
        return web.Response(headers=SSE_HEADERS)
    feed = request.app[FEED]
    response = web.StreamResponse(headers=SSE_HEADERS)
    feed.join()
    try:
        position = feed.cursor if after is None else after
        await response.prepare(request)
        async for text in _messages(request, feed, position, wanted):
            await asyncio.wait_for(response.write(text.encode()), WRITE_TIMEOUT_S)
    except TimeoutError:
        log.info("event stream: client not reading; closed", remote=request.remote)
        if request.transport is not None:
            request.transport.abort()
    except ConnectionResetError:
        pass  # the client went away; it resumes with Last-Event-ID
    finally:
        feed.leave()
    return response


def install(app: web.Application, provisioner: Provisioner) -> None:
    """Give `app` its event feed, woken by the provisioner's lifecycle listeners."""
    feed = EventFeed(provisioner.store)
    app[FEED] = feed

    async def listen(_: web.Application) -> AsyncIterator[None]:
        provisioner.listeners.append(feed.wake)
        yield
        provisioner.listeners.remove(feed.wake)

    async def stop_streams(_: web.Application) -> None:
        feed.close()

    app.cleanup_ctx.append(listen)
    app.on_shutdown.append(stop_streams)
