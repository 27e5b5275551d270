"""`GET /api/v1/events/stream` against the real aiohttp app on a loopback port, with real
events fired through the Provisioner (the one write path): live delivery, resuming after
a forced disconnect with no gap and no duplicate, filters, auth, heartbeats, shutdown,
and several servers on one store (a shared SQLite file; a real PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import aiohttp
import pytest
from events_support import ADMIN, TO_ACTIVE, ServeProcess, Server, StreamClient, serve
from test_store_postgres import Server as PgServer
from test_store_postgres import pg_server  # noqa: F401  (fixture)

from plasmaboot.lifecycle import Event
from plasmaboot.store import SqliteStore
from plasmaboot.store.postgres import PostgresStore
from plasmaboot.web import events as stream_module

pytestmark = pytest.mark.integration


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    running = await serve(SqliteStore.in_dir(tmp_path / "state"), tmp_path / "state")
    yield running
    await running.stop()
    running.store.close()


def ids_after(server: Server, after: int) -> list[int]:
    return [e.id for e in server.store.events(after=after)]


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_transitions_arrive_live_with_the_store_id_kind_and_record(
    server: Server,
) -> None:
    client = await StreamClient.open(server.base)
    try:
        assert client.status == 200
        started = time.monotonic()
        fired = server.fire("node01", Event.PXE_BOOT)
        message = await client.next()
        assert time.monotonic() - started < 1.0, "a local transition wakes the stream"
        assert (message.id, message.kind) == (fired.id, "pxe-boot")
        assert message.data == asdict(server.store.events("node01")[-1])
        assert message.data["from_state"] == "enrolled"
        assert message.data["to_state"] == "pxe-booting"

        # recorded without a transition (install output, power actions): read by the poll
        output = server.store.record("node01", "install-output", "installer", {"line": "ok"})
        message = await client.next(timeout=2.0)
        assert (message.id, message.kind, message.data["detail"]) == (
            output.id,
            "install-output",
            {"line": "ok"},
        )
        for event in TO_ACTIVE[1:]:
            fired = server.fire("node01", event)
            message = await client.next()
            assert (message.id, message.kind) == (fired.id, event.value)
        assert message.data["to_state"] == "active"
        assert client.retry == "2000"
    finally:
        await client.close()


async def test_a_forced_disconnect_resumes_with_no_gap_and_no_duplicate(server: Server) -> None:
    start = server.store.events()[-1].id
    first = await StreamClient.open(server.base, last_id=start)
    received: list[int] = []
    try:
        for hostname in ("node01", "node02"):
            for event in TO_ACTIVE[:3]:
                server.fire(hostname, event)
        received += [m.id for m in await first.take(3)]  # the rest may be in flight
    finally:
        await first.close(abort=True)
    assert await until(lambda: server.feed.clients == 0), "the server saw it go"
    # while it is away: transitions, reports and output lines
    for hostname in ("node01", "node02"):
        server.fire(hostname, Event.FIRST_BOOT)
        server.store.record(hostname, "install-output", "installer", {"line": hostname})
    server.fire("node03", Event.PXE_BOOT)
    server.fire("node03", Event.FAIL, reason="no DHCP answer")

    again = await StreamClient.open(server.base, last_id=received[-1])
    try:
        expected = ids_after(server, start)
        while len(received) < len(expected):
            received.append((await again.next()).id)
        assert received == expected  # in order, each once
        server.fire("node01", Event.JOINED)  # and it goes on live
        assert (await again.next()).id == server.store.events()[-1].id
        assert await again.quiet(0.7)
    finally:
        await again.close()


async def test_after_resumes_like_last_event_id_and_the_header_wins(server: Server) -> None:
    marks = [server.fire("node01", e).id for e in TO_ACTIVE[:3]]
    by_query = await StreamClient.open(server.base, f"?after={marks[0]}")
    both = await StreamClient.open(server.base, f"?after={marks[0]}", last_id=marks[1])
    try:
        assert [m.id for m in await by_query.take(2)] == marks[1:]
        assert [m.id for m in await both.take(1)] == marks[2:]
        assert await both.quiet(0.7)
    finally:
        await by_query.close()
        await both.close()


async def test_no_resume_point_streams_from_now_on(server: Server) -> None:
    server.fire("node01", Event.PXE_BOOT)
    client = await StreamClient.open(server.base)
    try:
        assert await client.quiet(0.7), "nothing from before it connected"
        fired = server.fire("node02", Event.PXE_BOOT)
        assert (await client.next()).id == fired.id
    finally:
        await client.close()


async def test_replay_longer_than_a_page_and_the_ring(server: Server) -> None:
    server.feed.page, server.feed.ring_size = 7, 5  # pages and ring trims in a few events
    start = server.store.events()[-1].id
    client = await StreamClient.open(server.base, last_id=start)
    try:
        for n in range(40):
            server.store.record(f"node0{n % 4 + 1}", "install-output", "installer", {"n": n})
        late = await StreamClient.open(server.base, last_id=start)  # behind the ring
        expected = ids_after(server, start)
        assert [m.id for m in await client.take(40)] == expected
        assert [m.id for m in await late.take(40)] == expected
        # each event's SSE text is rendered once, kept exactly as long as the ring keeps it
        assert sorted(server.feed._texts) == [e.id for e in server.feed._ring]
        await late.close()
    finally:
        await client.close()


async def test_filters_by_node_and_state(server: Server) -> None:
    start = server.store.events()[-1].id
    two = await StreamClient.open(server.base, "?node=node01&node=node03", last_id=start)
    failing = await StreamClient.open(server.base, "?state=boot-failed", last_id=start)
    both = await StreamClient.open(server.base, "?node=node02&state=pxe-booting", last_id=start)
    try:
        for hostname in ("node01", "node02", "node03", "node04"):
            server.fire(hostname, Event.PXE_BOOT)
        server.fire("node02", Event.FAIL, reason="cable")
        server.fire("node02", Event.RETRY)
        server.fire("node04", Event.INSTALLER_BOOTED)

        assert [m.data["node"] for m in await two.take(2)] == ["node01", "node03"]
        assert await two.quiet(0.7)
        # into boot-failed and out of it
        assert [m.kind for m in await failing.take(2)] == ["fail", "retry"]
        assert await failing.quiet(0.3)
        # node02 was pxe-booting before or after: its pxe-boot and its fail
        assert [m.kind for m in await both.take(2)] == ["pxe-boot", "fail"]
        assert await both.quiet(0.3)
    finally:
        for client in (two, failing, both):
            await client.close()


@pytest.mark.parametrize(
    ("query", "field"),
    [("?state=sleeping", "state"), ("?after=-1", None), ("?after=x", None), ("?node=", "node")],
)
async def test_bad_filters_are_a_400_naming_them(
    server: Server, query: str, field: str | None
) -> None:
    client = await StreamClient.open(server.base, query)
    try:
        assert client.status == 400
        body = await client.error_body()
        assert body.get("field") == field and body["error"]
    finally:
        await client.close()


async def test_the_admin_token_guards_it(server: Server) -> None:
    for token, status in ((None, 401), ("wrong", 401)):
        client = await StreamClient.open(server.base, token=token)
        assert client.status == status
        await client.close()
    async with (
        aiohttp.ClientSession() as http,
        http.head(
            f"{server.base}/api/v1/events/stream", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert server.feed.clients == 0, "HEAD does not open a stream"


async def test_an_idle_stream_gets_heartbeats(server: Server) -> None:
    server.feed.heartbeat_s = 0.3
    client = await StreamClient.open(server.base)
    try:
        await asyncio.sleep(1.2)
        assert client.comments.count(": heartbeat") >= 2, client.comments
    finally:
        await client.close()


async def test_a_client_that_stops_reading_is_cut_off_not_buffered(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(stream_module, "WRITE_TIMEOUT_S", 0.5)
    caplog.set_level(logging.INFO, logger="plasmaboot.http")
    start = server.store.events()[-1].id
    host, port = server.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(
        f"GET /api/v1/events/stream HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {ADMIN}\r\nLast-Event-ID: {start}\r\n\r\n".encode()
    )
    await writer.drain()
    assert await until(lambda: server.feed.clients == 1)
    line = "x" * 8000
    for n in range(600):  # ~5 MB of install output that the client never reads
        server.store.record(f"node0{n % 4 + 1}", "install-output", "installer", {"line": line})
    try:
        assert await until(lambda: server.feed.clients == 0, timeout=20), "still buffering"
        assert "client not reading; closed" in caplog.text
        healthy = await StreamClient.open(server.base, last_id=server.store.events()[-1].id)
        fired = server.fire("node01", Event.PXE_BOOT)
        assert (await healthy.next()).id == fired.id
        await healthy.close()
    finally:
        writer.close()
        del reader


async def test_stopping_the_server_ends_its_streams_at_once(tmp_path: Path) -> None:
    running = await serve(SqliteStore.in_dir(tmp_path / "state"), tmp_path / "state")
    client = await StreamClient.open(running.base)
    try:
        started = time.monotonic()
        await running.stop()
        assert time.monotonic() - started < 5, "a stream held shutdown up"
    finally:
        await client.close()
        running.store.close()


# ---- several servers on one store ----------------------------------------------------------


async def check_every_server_streams_every_servers_events(one: Server, two: ServeProcess) -> None:
    """Events fired on either server reach both servers' streams within a second, and a
    client that switches servers mid-stream resumes with no gap and no duplicate."""
    start = one.store.events()[-1].id
    watchers = [await StreamClient.open(s.base, last_id=start, tls=s.tls) for s in (one, two)]
    try:
        for hostname, on_two in (("node01", False), ("node02", True), ("node03", False)):
            fired_at = time.monotonic()
            if on_two:
                fired = await two.action(hostname, Event.PXE_BOOT)
            else:
                fired = one.fire(hostname, Event.PXE_BOOT).id
            for client in watchers:
                message = await client.next(timeout=2.0)
                assert message.id == fired and message.data["node"] == hostname
            assert time.monotonic() - fired_at < 1.0, "another server's event came late"
        moved = watchers[0]
        await moved.close(abort=True)
        await two.action("node04", Event.PXE_BOOT)
        one.store.record("node02", "install-output", "installer", {"line": "x"})
        resumed = await StreamClient.open(two.base, last_id=fired, tls=two.tls)
        try:
            expected = ids_after(one, fired)
            assert len(expected) == 2
            assert [m.id for m in await resumed.take(len(expected))] == expected
            assert await resumed.quiet(0.7)
        finally:
            await resumed.close()
    finally:
        for client in watchers:
            await client.close()


async def test_two_servers_on_one_sqlite_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    one = await serve(SqliteStore.in_dir(state), state)
    two = ServeProcess.start(state)
    try:
        await check_every_server_streams_every_servers_events(one, two)
    finally:
        two.stop()
        await one.stop()
        one.store.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:  # noqa: F811  (the imported fixture)
    with pg_server.database() as url:
        yield url


async def test_two_servers_on_one_postgresql(pg_url: str, tmp_path: Path) -> None:
    one = await serve(PostgresStore(pg_url), tmp_path / "one")
    (tmp_path / "two").mkdir()
    two = ServeProcess.start(tmp_path / "two", store=pg_url)
    try:
        await check_every_server_streams_every_servers_events(one, two)
    finally:
        two.stop()
        await one.stop()
        one.store.close()


def test_the_stream_is_an_admin_route_with_its_content_type() -> None:
    from plasmaboot.web.app import ROUTES

    (route,) = [r for r in ROUTES if r.path == "/api/v1/events/stream"]
    assert (route.auth, route.content) == ("read", "text/event-stream")
    assert route.listeners == ("admin",)
    assert route.handler is stream_module.event_stream
