"""Where `plasmaboot watch` reads the fleet: the local store, or a server's admin API.

Both give the same two things: a snapshot (rows, and the newest event id read *before*
the nodes were, so nothing between the two is lost) and the events after an id, in id
order. The local store is paged every `POLL_S`; a server is followed through its event
stream (`GET /api/v1/events/stream`), resumed with `Last-Event-ID` after any disconnect;
its token and CA are every remote command's (remote.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from plasmaboot.lifecycle import State
from plasmaboot.remote import refusal, trust
from plasmaboot.store import EventRecord, Store
from plasmaboot.watch.fleet import HISTORY, NodeRow

POLL_S = 0.5
PAGE = 500
RECONNECT_S = 1.0
# No byte for this long (the server sends a heartbeat every 15 s): reconnect.
STREAM_SILENCE_S = 45.0
MAX_LINE = 4 << 20  # an event's JSON is at most a few hundred KB (docs/api.md)
SERVER_NODE_FILTERS = 200  # more names than this: filter here, not in the URL


class WatchError(Exception):
    """Why watching cannot go on, worded for the operator."""


@dataclass(frozen=True)
class Snapshot:
    rows: list[NodeRow]
    cursor: int


class Source(Protocol):
    async def snapshot(self, names: list[str]) -> Snapshot: ...
    def events(self, after: int, names: list[str]) -> AsyncIterator[EventRecord]: ...


def _select(found: dict[str, Any], names: list[str]) -> list[str]:
    """The host names to watch: the ones named, else every node not decommissioned."""
    if not names:
        return sorted(h for h, state in found.items() if state != State.DECOMMISSIONED.value)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise WatchError(f"no node named {', '.join(unknown)}; `plasmaboot node list` shows them")
    return list(dict.fromkeys(names))


class LocalSource:
    def __init__(self, store: Store, poll_s: float = POLL_S) -> None:
        self.store = store
        self.poll_s = poll_s

    async def snapshot(self, names: list[str]) -> Snapshot:
        newest = self.store.events(limit=1)
        cursor = newest[-1].id if newest else 0
        records = {n.hostname: n for n in self.store.list_nodes()}
        rows = []
        for hostname in _select({h: r.state.value for h, r in records.items()}, names):
            record = records[hostname]
            history = self.store.events(hostname, limit=HISTORY)
            rows.append(NodeRow.from_history(hostname, record.state, record.updated_at, history))
        return Snapshot(rows, cursor)

    async def events(self, after: int, names: list[str]) -> AsyncIterator[EventRecord]:
        only = names if names and len(names) <= SERVER_NODE_FILTERS else None
        while True:
            page = self.store.events_page(after, PAGE, nodes=only)
            for event in page:
                yield event
            if page:
                after = page[-1].id
            if len(page) < PAGE:
                await asyncio.sleep(self.poll_s)


def _event(data: dict[str, Any]) -> EventRecord:
    return EventRecord(
        int(data["id"]),
        float(data["ts"]),
        str(data["node"]),
        data.get("from_state"),
        data.get("to_state"),
        str(data["event"]),
        str(data["actor"]),
        dict(data.get("detail") or {}),
    )


async def sse_events(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """(id, data) of each SSE message read from a response body."""
    buffer = b""
    ident = ""
    data: list[str] = []
    async for chunk in content.iter_any():
        buffer += chunk
        if len(buffer) > MAX_LINE and b"\n" not in buffer:
            raise WatchError("the event stream sent a line longer than 4 MiB")
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            if not line:
                if data:
                    yield ident, "\n".join(data)
                ident, data = "", []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                ident = value
            elif field == "data":
                data.append(value)


class RemoteSource:
    """A server's admin API: the nodes and their recent events, then the event stream."""

    def __init__(self, server: str, token: str, ca: Path | None = None) -> None:
        self.base = server.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ssl = trust(ca)

    async def _refused(self, response: aiohttp.ClientResponse) -> WatchError:
        try:
            reason = str((await response.json())["error"])
        except (aiohttp.ContentTypeError, json.JSONDecodeError, KeyError, TypeError):
            reason = "no reason given"
        return WatchError(refusal(self.base, response.status, reason))

    async def _get(self, http: aiohttp.ClientSession, path: str) -> Any:
        try:
            async with http.get(self.base + path, headers=self.headers, ssl=self.ssl) as response:
                if response.status in (401, 403):
                    raise await self._refused(response)
                if response.status == 404 and path.startswith("/api/v1/"):
                    raise WatchError(
                        f"{self.base}{path}: HTTP 404: is this the server's admin listener? "
                        "The boot port does not serve the admin API; use "
                        "https://ADDRESS:PORT of server.admin (default 127.0.0.1:8443)"
                    )
                if response.status != 200:
                    raise WatchError(
                        f"{self.base}{path}: HTTP {response.status}: {await response.text()}"
                    )
                return await response.json()
        except aiohttp.ClientError as exc:
            raise WatchError(f"cannot reach {self.base}: {exc}") from None

    async def snapshot(self, names: list[str]) -> Snapshot:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            newest = await self._get(http, "/api/v1/events?limit=1")
            cursor = int(newest[-1]["id"]) if newest else 0
            nodes = {n["hostname"]: n for n in await self._get(http, "/api/v1/nodes")}
            chosen = _select({h: n["state"] for h, n in nodes.items()}, names)
            limit = asyncio.Semaphore(8)

            async def row(hostname: str) -> NodeRow:
                async with limit:
                    path = f"/api/v1/events?node={quote(hostname)}&limit={HISTORY}"
                    history = [_event(e) for e in await self._get(http, path)]
                node = nodes[hostname]
                return NodeRow.from_history(
                    hostname, State(node["state"]), float(node["updated_at"]), history
                )

            rows = await asyncio.gather(*(row(h) for h in chosen))
        return Snapshot(list(rows), cursor)

    async def events(self, after: int, names: list[str]) -> AsyncIterator[EventRecord]:
        query = ""
        if names and len(names) <= SERVER_NODE_FILTERS:
            query = "?" + "&".join(f"node={quote(n)}" for n in names)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=STREAM_SILENCE_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                headers = {**self.headers, "Last-Event-ID": str(after)}
                try:
                    async with http.get(
                        f"{self.base}/api/v1/events/stream{query}", headers=headers, ssl=self.ssl
                    ) as response:
                        if response.status in (401, 403):
                            raise await self._refused(response)
                        if response.status == 200:
                            async for ident, data in sse_events(response.content):
                                event = _event(json.loads(data))
                                after = max(after, int(ident or event.id))
                                yield event
                except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
                    pass  # resumed below from the last id received
                await asyncio.sleep(RECONNECT_S)
