"""Live updates on one PostgreSQL store: how long another server's change takes to reach
this server, with LISTEN/NOTIFY against the polling it replaced, side by side.

1. A real PostgreSQL (the integration tests' server: initdb + pg_ctl in a temporary
   directory, a plain login role), a fresh database per run.
2. Server A: a real `plasmaboot serve` process on it (loopback, --no-dhcp), firing
   lifecycle events through its admin API, one at a time.
3. Server B, in this process: the admin application `serve` runs (the event stream)
   over its own PostgresStore, with one SSE client; and a DHCP server's lease view (no
   sockets) over that store, while a third connection writes leases as another DHCP
   server would. Each is measured twice per run: `notify` (the code as it ships) and
   `poll` (B's store told to poll, as before: events every 0.5 s, leases every 1 s).
4. Latency: an event from its insert (its `ts`, this machine's clock) to its arrival on
   B's stream; a lease from its commit to B's view holding it. Changes come one at a
   time, at random moments (seeded jitter), as on a fleet that is not storming.
5. What it costs the write path: 500 `save_leases` of 8 new leases (a DHCP group
   commit) while B's lease view listens, with the NOTIFY in each transaction (`notify`)
   and without it (`poll`, the write path before).

Modes alternate within each run, so the machine's load falls on both. The report is the
median over `--runs` of each run's median, with each run's p95. Run as:
    sudo .venv/bin/python bench/fleet/live_updates.py [--runs 5] [--events 40]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests/integration")]
from dhcp_support import inventory_yaml  # noqa: E402
from events_support import ServeProcess, StreamClient, serve  # noqa: E402
from test_store_postgres import Server as PgServer  # noqa: E402
from test_store_postgres import pg_server  # noqa: E402

from plasmaboot.dhcp import DhcpServer  # noqa: E402
from plasmaboot.inventory import parse_inventory  # noqa: E402
from plasmaboot.lifecycle import Event  # noqa: E402
from plasmaboot.store import Lease, postgres  # noqa: E402
from plasmaboot.store.changes import ChangeWatch  # noqa: E402
from plasmaboot.store.postgres import PostgresStore  # noqa: E402

MODES = ("notify", "poll")
# Changes come at random moments (seeded), not in step with a poll: a change fired right
# after the reader's previous wake would always wait a whole poll period.
JITTER = random.Random(16)


def opened(url: str, mode: str) -> PostgresStore:
    """B's store; `poll`: its readers are never notified (what every reader did before)."""
    store = PostgresStore(url)
    if mode == "poll":
        store.watch = lambda topic, *, others_only=False: ChangeWatch(topic)  # type: ignore[method-assign]
    return store


async def until_live(store: PostgresStore, mode: str) -> None:
    deadline = time.monotonic() + 10
    while mode == "notify" and not store._listener.live:
        assert time.monotonic() < deadline, "the listener did not connect"
        await asyncio.sleep(0.02)


async def event_latencies(
    url: str, mode: str, writer: ServeProcess, count: int, state: Path
) -> list[float]:
    server = await serve(opened(url, mode), state)
    client = await StreamClient.open(server.base)
    try:
        await until_live(server.store, mode)
        latencies = []
        for n in range(count + count % 2):  # pairs: node01 ends each mode enrolled
            await asyncio.sleep(JITTER.uniform(0, 0.6))
            event = Event.DECOMMISSION if n % 2 == 0 else Event.RECOMMISSION
            fired = await writer.action("node01", event)
            message = await client.next(timeout=10)
            assert message.id == fired, (message, fired)
            latencies.append(time.time() - message.data["ts"])
        return latencies
    finally:
        await client.close()
        await server.stop()
        server.store.close()


async def lease_latencies(url: str, mode: str, count: int, offset: int) -> list[float]:
    inv = parse_inventory(yaml.safe_load(inventory_yaml("full", "eth9")))
    store, writer = opened(url, mode), PostgresStore(url)
    view = DhcpServer(inv, store, interface="eth9")  # no socket: its lease view alone
    refresh = asyncio.create_task(view._lease_refresh_loop())
    try:
        await until_live(store, mode)
        latencies = []
        for n in range(offset, offset + count):
            mac, ip = f"52:54:00:78:{n >> 8:02x}:{n & 255:02x}", f"10.231.{n >> 8}.{n & 255}"
            await asyncio.sleep(JITTER.uniform(0, 1.1))
            started = time.monotonic()
            writer.save_leases([Lease(ip, mac, mac, "bound", 1e10)])
            committed = time.monotonic()
            while view.leased_address(mac) != ip:
                assert time.monotonic() - started < 10, f"{ip} never reached the view"
                await asyncio.sleep(0.001)
            latencies.append(time.monotonic() - committed)
        return latencies
    finally:
        refresh.cancel()
        await asyncio.gather(refresh, return_exceptions=True)
        store.close()
        writer.close()


async def write_costs(url: str, mode: str, batches: int) -> list[float]:
    """Seconds per `save_leases` of 8 new leases (a DHCP group commit) while B listens;
    `poll`: without the NOTIFY in the transaction (the write path before it)."""
    inv = parse_inventory(yaml.safe_load(inventory_yaml("full", "eth9")))
    store, writer = opened(url, mode), PostgresStore(url)
    view = DhcpServer(inv, store, interface="eth9")
    refresh = asyncio.create_task(view._lease_refresh_loop())
    original = postgres.notify
    if mode == "poll":
        postgres.notify = lambda *args: None  # type: ignore[assignment]
    try:
        await until_live(store, mode)
        took = []
        for b in range(batches):
            batch = [Lease(f"10.232.{b >> 5}.{(b & 31) * 8 + i}", f"w{b}.{i}", f"w{b}.{i}",
                           "bound", 1e10) for i in range(8)]  # fmt: skip
            started = time.perf_counter()
            writer.save_leases(batch)
            took.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # B's loop takes its notifications
        return took
    finally:
        postgres.notify = original  # type: ignore[assignment]
        refresh.cancel()
        await asyncio.gather(refresh, return_exceptions=True)
        store.close()
        writer.close()


def summary(latencies: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in latencies)
    p95 = ms[int(0.95 * (len(ms) - 1))]
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(p95, 1),
            "max_ms": round(ms[-1], 1)}  # fmt: skip


async def one_run(pg: PgServer, run: int, events: int, base: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with pg.database() as url:
        (base / f"a{run}").mkdir()
        writer = ServeProcess.start(base / f"a{run}", store=url)
        try:
            order = MODES if run % 2 == 0 else MODES[::-1]
            for mode in order:
                state = base / f"b{run}-{mode}"
                result[f"events_{mode}"] = summary(
                    await event_latencies(url, mode, writer, events, state)
                )
            for i, mode in enumerate(order):
                result[f"leases_{mode}"] = summary(
                    await lease_latencies(url, mode, events, 1000 * (i + 1))
                )
            for mode in order:
                with pg.database() as fresh:
                    result[f"writes_{mode}"] = summary(await write_costs(fresh, mode, 500))
        finally:
            writer.stop()
    return result


@contextlib.contextmanager
def postgresql() -> Iterator[PgServer]:
    """The integration tests' PostgreSQL server, outside pytest."""
    with contextlib.contextmanager(pg_server.__wrapped__)() as server:
        yield server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--events", type=int, default=40, help="events (and leases) per mode")
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs = []
    with postgresql() as pg, tempfile.TemporaryDirectory(prefix="pb-fleet-") as tmp:
        for run in range(args.runs):
            runs.append(asyncio.run(one_run(pg, run, args.events, Path(tmp))))
            print(json.dumps({"run": run, **runs[-1]}), file=sys.stderr)
    median = {
        f"{kind}_{mode}_p50_ms": round(
            statistics.median(r[f"{kind}_{mode}"]["p50_ms"] for r in runs), 1
        )
        for kind in ("events", "leases", "writes")
        for mode in MODES
    }
    print(json.dumps({"runs": runs, "median_of_runs": median, "events_per_mode": args.events,
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                      "cpus": os.cpu_count()}, indent=2))  # fmt: skip
    subprocess.run(["uptime"], check=False)


if __name__ == "__main__":
    main()
