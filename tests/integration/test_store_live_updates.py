"""Live updates on the shared PostgreSQL store (LISTEN/NOTIFY, store/changes.py), against
a real PostgreSQL: a commit wakes every other store's readers at once and names what it
wrote; a rolled-back write wakes nobody; two real `plasmaboot serve` processes deliver
each other's events to their streams in well under the poll period; a transition through
one server's admin API reaches another's DHCP node view within a second; and killing a
server's listening connection (pg_terminate_backend) loses no event."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dhcp_support import inventory_yaml
from events_support import LAB, ServeProcess, StreamClient
from test_store_postgres import Server as PgServer
from test_store_postgres import pg_server  # noqa: F401  (fixture)

from plasmaboot.dhcp import DhcpServer
from plasmaboot.dhcp.server import LEASE_REFRESH_S
from plasmaboot.inventory import load_inventory, parse_inventory
from plasmaboot.lifecycle import Event, IllegalTransition, State
from plasmaboot.store import Lease
from plasmaboot.store.changes import LIVE_POLL_S, ChangeWatch
from plasmaboot.store.postgres import PostgresStore
from plasmaboot.store.postgres_listener import APPLICATION_NAME
from plasmaboot.web.events import POLL_S

pytestmark = pytest.mark.integration

FUTURE = 1e10
SAMPLES = 20


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:  # noqa: F811  (the imported fixture)
    with pg_server.database() as url:
        yield url


async def until_live(*stores: PostgresStore, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(store._listener.live for store in stores):
        assert time.monotonic() < deadline, "the listener did not connect"
        await asyncio.sleep(0.02)


async def drain(watch: ChangeWatch) -> None:
    """Take what woke the watch so far (the listener's connect wakes every reader)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watch.wait_for_change(30.0), 0.3)


def listeners(pg: PgServer, dbname: str) -> list[int]:
    """The backend pids of the listening connections on `dbname`."""
    with pg.admin(dbname) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND datname = %s",
            (APPLICATION_NAME, dbname),
        ).fetchall()
    return [row[0] for row in rows]


async def test_a_commit_wakes_the_other_stores_at_once_naming_what_it_wrote(pg_url: str) -> None:
    one, two = PostgresStore(pg_url), PostgresStore(pg_url)
    one.import_inventory(load_inventory(LAB))
    theirs = two.watch("leases", others_only=True)
    mine = one.watch("leases", others_only=True)
    events = two.watch("events")
    try:
        await until_live(one, two)
        for watch in (theirs, mine, events):
            await drain(watch)

        lease = Lease("10.77.0.100", "01:aa", "52:54:00:00:00:aa", "bound", FUTURE)
        started = time.monotonic()
        assert one.save_leases([lease]) == []
        assert await theirs.wait_for_change(30.0) == {"10.77.0.100"}
        assert time.monotonic() - started < 1.0
        with pytest.raises(TimeoutError):  # its own write is in its memory already
            await asyncio.wait_for(mine.wait_for_change(30.0), 0.5)
        assert one.delete_lease("10.77.0.100")
        assert await theirs.wait_for_change(30.0) == {"10.77.0.100"}

        # a transition that is refused rolls back: nothing is sent
        with pytest.raises(IllegalTransition):
            one.transition("node01", Event.JOINED, "test")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(events.wait_for_change(30.0), 0.5)
        started = time.monotonic()
        one.transition("node01", Event.PXE_BOOT, "test")
        assert await events.wait_for_change(30.0) is None, "unnamed: read from the cursor"
        assert time.monotonic() - started < 1.0 < LIVE_POLL_S, "woken, not polled"
        assert two.events()[-1].event == "pxe-boot"
    finally:
        for watch in (theirs, mine, events):
            watch.close()
        one.close()
        two.close()


async def test_a_dropped_listener_polls_reconnects_and_wakes_its_readers(
    pg_server: PgServer,  # noqa: F811
    pg_url: str,
) -> None:
    store, writer = PostgresStore(pg_url), PostgresStore(pg_url)
    watch = store.watch("leases", others_only=True)
    dbname = pg_url.rsplit("/", 1)[1]
    try:
        await until_live(store)
        await drain(watch)
        (pid,) = listeners(pg_server, dbname)
        with pg_server.admin(dbname) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # the readers hear it is gone ("read everything"), then that it is back
        assert await watch.wait_for_change(LIVE_POLL_S) is None
        await until_live(store)
        assert listeners(pg_server, dbname) not in ([], [pid]), "a new connection"
        await drain(watch)
        writer.save_leases([Lease("10.77.0.101", "01:bb", "52:54:00:00:00:bb", "bound", FUTURE)])
        assert await watch.wait_for_change(30.0) == {"10.77.0.101"}
    finally:
        watch.close()
        store.close()
        writer.close()


async def test_another_servers_lease_reaches_the_dhcp_lease_view_at_once(pg_url: str) -> None:
    """The DHCP server's view of the fleet's leases (what its boot scripts trust) takes in
    a lease another server wrote as soon as it commits, not at the next read-back."""
    inv = parse_inventory(yaml.safe_load(inventory_yaml("full", "eth9")))
    store, writer = PostgresStore(pg_url), PostgresStore(pg_url)
    server = DhcpServer(inv, store, interface="eth9")  # no socket: the view alone
    refresh = asyncio.create_task(server._lease_refresh_loop())
    try:
        await until_live(store)
        latencies = []
        for n in range(SAMPLES):
            mac, ip = f"52:54:00:77:01:{n:02x}", f"10.231.0.{150 + n}"
            started = time.monotonic()
            writer.save_leases([Lease(ip, mac, mac, "bound", FUTURE)])
            while server.leased_address(mac) != ip:
                assert time.monotonic() - started < 5, f"{ip} never reached the view"
                await asyncio.sleep(0.002)
            latencies.append(time.monotonic() - started)
        median = statistics.median(latencies)
        assert median < 0.1 < LEASE_REFRESH_S, f"median {median * 1000:.1f} ms: {latencies}"
        assert server.active_leases == SAMPLES
    finally:
        refresh.cancel()
        await asyncio.gather(refresh, return_exceptions=True)
        store.close()
        writer.close()


async def test_a_transition_through_another_server_reaches_the_dhcp_node_view_within_a_second(
    pg_url: str, tmp_path: Path
) -> None:
    """Server A's admin API (and the CLI, writing to the store) moves a node; server B's
    DHCP node view (what decides which boot it is offered) has the new state within a
    second: notified, not polled (live notifications poll every LIVE_POLL_S)."""
    (tmp_path / "a").mkdir()
    a = ServeProcess.start(tmp_path / "a", store=pg_url)
    store, cli = PostgresStore(pg_url), PostgresStore(pg_url)
    server = DhcpServer(load_inventory(LAB), store, interface="eth9")  # no socket: the view
    server._read_nodes()
    server._refresh_task = server._follow_nodes()
    try:
        await until_live(store)
        (mac, *_) = server._node_macs["node01"]
        latencies = []
        for n in range(SAMPLES):
            event, to = (
                (Event.DECOMMISSION, State.DECOMMISSIONED)
                if n % 2 == 0
                else (Event.RECOMMISSION, State.ENROLLED)
            )
            started = time.monotonic()
            await a.action("node01", event)
            while (view := server._node(mac)) is None or view.state is not to:
                assert time.monotonic() - started < 5, f"{to} never reached the view"
                await asyncio.sleep(0.002)
            latencies.append(time.monotonic() - started)
        median = statistics.median(latencies)
        assert max(latencies) < 1.0 < LIVE_POLL_S, f"median {median * 1000:.1f} ms: {latencies}"

        (mac2, *_) = server._node_macs["node02"]
        started = time.monotonic()
        cli.transition("node02", Event.PXE_BOOT, "cli")
        while (view := server._node(mac2)) is None or view.state is not State.PXE_BOOTING:
            assert time.monotonic() - started < 1.0, "the CLI's transition never reached the view"
            await asyncio.sleep(0.002)
    finally:
        await server.stop()
        store.close()
        cli.close()
        a.stop()


async def _latencies(one: ServeProcess, client: StreamClient, count: int) -> list[float]:
    """Fire `count` events through `one`'s admin API; seconds from each event's insert
    (its `ts`, this machine's clock) to its arrival on `client`'s stream."""
    latencies = []
    for n in range(count):
        fired = await one.action("node01", Event.DECOMMISSION if n % 2 == 0 else Event.RECOMMISSION)
        message = await client.next(timeout=5.0)
        latencies.append(time.time() - message.data["ts"])
        assert message.id == fired
    return latencies


async def test_another_servers_event_reaches_the_stream_at_once_and_none_is_lost(
    pg_server: PgServer,  # noqa: F811
    pg_url: str,
    tmp_path: Path,
) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    one = ServeProcess.start(tmp_path / "one", store=pg_url)
    two = ServeProcess.start(tmp_path / "two", store=pg_url)
    dbname = pg_url.rsplit("/", 1)[1]
    client = await StreamClient.open(two.base, tls=two.tls)
    try:
        assert client.status == 200
        deadline = time.monotonic() + 10
        while "change listener connected" not in two.log.read_text():
            assert time.monotonic() < deadline, two.log.read_text()[-2000:]
            await asyncio.sleep(0.05)
        latencies = await _latencies(one, client, SAMPLES)
        median = statistics.median(latencies)
        assert median < 0.1 < POLL_S, f"median {median * 1000:.1f} ms: {latencies}"

        # Server two's listening connection is killed (server one has none: no reader).
        (pid,) = listeners(pg_server, dbname)
        with pg_server.admin(dbname) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        before = client.messages.qsize()
        fired = [await one.action("node02", e) for e in (Event.PXE_BOOT, Event.DECOMMISSION,
                                                         Event.RECOMMISSION)]  # fmt: skip
        assert [(await client.next(timeout=5.0)).id for _ in fired] == fired, "in order, none lost"
        assert client.messages.qsize() == before == 0, "and nothing twice"
        log = two.log.read_text()
        assert "change listener disconnected; readers poll until it reconnects" in log
        deadline = time.monotonic() + 10
        while two.log.read_text().count("change listener connected") < 2:
            assert time.monotonic() < deadline, two.log.read_text()[-2000:]
            await asyncio.sleep(0.05)
        assert listeners(pg_server, dbname) not in ([], [pid]), "a new connection"
        # notified again, not polled
        again = statistics.median(await _latencies(one, client, 6))
        assert again < 0.1, f"median {again * 1000:.1f} ms after the reconnect"
    finally:
        await client.close()
        one.stop()
        two.stop()
