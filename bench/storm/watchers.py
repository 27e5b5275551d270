"""Event-stream watchers during a storm: clients of `GET /api/v1/events/stream` on the
admin listener, each reading every event the storm stores, as dashboards and
`plasmaboot watch` do (issue: 50 of them must cost a 1,000-node storm under 5%).

`Watchers` (used by run.py) makes a read-scope token in the server's store, reads the
store's newest event id, and starts this file as a process in the server's namespace (the
admin listener is loopback there):

    python bench/storm/watchers.py PLAN.json RESULT.json

The process opens `count` streams after that id and prints `connected` once every one
answered 200. After the storm `Watchers.finish` writes the store's newest id to its stdin;
the process waits until every watcher has read up to it (bounded by `drain_timeout_s`)
and writes each watcher's event ids and its own CPU time. `finish` compares them with the
ids in the store: every watcher must hold each one exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from systems import SERVER_NS, in_ns

from plasmaboot.provision.admin_tokens import AdminTokens, Scope
from plasmaboot.store import open_store

ADMIN_BASE = "https://127.0.0.1:8443"  # the inventory's default server.admin
DRAIN_TIMEOUT_S = 60.0


async def watch(plan: dict[str, Any]) -> dict[str, Any]:
    """Each watcher keeps the `id:` of every message and nothing else: like the storm's
    clients, the bench's side must not be what it measures, and on 2 shared cores the
    test suite's SSE client (a JSON decode and a queue per message) took 5 CPU seconds
    for 50 watchers of a 1,000-node storm."""
    tls = ssl.create_default_context(cafile=plan["ca"])
    url = f"{plan['base']}/api/v1/events/stream?after={plan['after']}"
    headers = {"Authorization": f"Bearer {plan['token']}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as http:
        responses = [await http.get(url, headers=headers, ssl=tls) for _ in range(plan["count"])]
        ids: list[list[int]] = [[] for _ in responses]
        last_at = [0.0] * len(responses)

        async def read(index: int, response: aiohttp.ClientResponse) -> None:
            tail = b""
            async for chunk in response.content.iter_any():
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                ids[index] += [int(line[4:]) for line in lines if line.startswith(b"id: ")]
                last_at[index] = time.time()

        def newest() -> int:
            return min(got[-1] if got else plan["after"] for got in ids)

        statuses = [r.status for r in responses]
        readers = [asyncio.create_task(read(i, r)) for i, r in enumerate(responses)]
        print("connected" if statuses == [200] * len(responses) else f"refused {statuses}",
              flush=True)  # fmt: skip
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        storm_end, target = time.time(), int(line)
        deadline = time.monotonic() + plan["drain_timeout_s"]
        while newest() < target and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for response in responses:
            response.close()
    drained = max(0.0, max(last_at) - storm_end) if newest() >= target else None
    return {
        "ids": ids,
        "drained_s": None if drained is None else round(drained, 2),
        "cpu_s": time.process_time(),  # the watchers' own share of the machine's 2 cores
    }


@dataclass
class Watchers:
    """The watcher process of one storm, started against a running plasmaboot."""

    proc: subprocess.Popen[str]
    store_location: Path
    after: int
    out: Path
    count: int

    @classmethod
    def start(cls, work: Path, state_dir: Path, count: int) -> Watchers:
        store = open_store(state_dir)
        try:
            token = AdminTokens(store).create("storm-watchers", Scope.READ, None)
            newest = store.events(limit=1)
        finally:
            store.close()
        after = newest[-1].id if newest else 0
        plan = work / "watchers.plan.json"  # holds the token: the run's directory, removed
        plan.write_text(json.dumps({
            "base": ADMIN_BASE, "ca": str(state_dir / "pki" / "ca.crt"), "token": token,
            "after": after, "count": count, "drain_timeout_s": DRAIN_TIMEOUT_S,
        }))  # fmt: skip
        out = work / "watchers.out.json"
        argv = [sys.executable, __file__, str(plan), str(out)]
        proc = subprocess.Popen(
            in_ns(SERVER_NS, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        watchers = cls(proc, state_dir, after, out, count)
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline().strip()
            if ready != "connected":
                raise RuntimeError(f"stream watchers did not connect: {ready or proc.poll()}")
        except BaseException:
            watchers.stop()
            raise
        return watchers

    def finish(self) -> dict[str, Any]:
        """After the storm: every event stored since the start, and what each watcher got."""
        store = open_store(self.store_location)
        try:
            stored, page = [], store.events_page(self.after, 500)
            while page:
                stored += [e.id for e in page]
                page = store.events_page(stored[-1], 500)
        finally:
            store.close()
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{stored[-1] if stored else self.after}\n")
        self.proc.stdin.flush()
        if self.proc.wait(timeout=DRAIN_TIMEOUT_S + 60) != 0:
            raise RuntimeError(f"stream watchers exited {self.proc.returncode}")
        got = json.loads(self.out.read_text())
        expected = set(stored)
        received = [len(ids) for ids in got["ids"]]
        return {
            "watchers": self.count,
            "events": len(stored),
            "received_min": min(received),
            "received_max": max(received),
            "complete": sum(
                len(ids) == len(set(ids)) and set(ids) == expected for ids in got["ids"]
            ),
            "drained_s": got["drained_s"],
            "watcher_cpu_s": got["cpu_s"],
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    result = asyncio.run(watch(plan))
    Path(sys.argv[2]).write_text(json.dumps(result))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
