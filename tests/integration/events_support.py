"""What the event stream and `plasmaboot watch` tests share (no tests in here): a
provisioning server's HTTP side (the real aiohttp app on a loopback port) over a store,
and an SSE client that records exactly what arrived, ids, kinds and heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web

from plasmaboot.inventory import load_inventory
from plasmaboot.lifecycle import Event
from plasmaboot.provision import Provisioner, ProvisionerSettings
from plasmaboot.store import EventRecord, Store
from plasmaboot.web.app import build_app
from plasmaboot.web.events import FEED, EventFeed

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "events-test-admin"
LAB = ROOT / "examples/lab/cluster.yaml"

# enrolled -> active, as the installer agent and first boot report it
TO_ACTIVE = (Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALLED, Event.FIRST_BOOT,
             Event.JOINED)  # fmt: skip


@dataclass
class Server:
    provisioner: Provisioner
    runner: web.AppRunner
    base: str

    @property
    def store(self) -> Store:
        return self.provisioner.store

    @property
    def tls(self) -> ssl.SSLContext | bool:
        return True  # plain HTTP: every route on one in-process application

    @property
    def feed(self) -> EventFeed:
        return self.runner.app[FEED]

    def fire(self, hostname: str, event: Event, **detail: Any) -> EventRecord:
        return self.provisioner.fire(hostname, event, "test", detail)

    async def stop(self) -> None:
        await self.runner.cleanup()


def provisioner(store: Store, state_dir: Path) -> Provisioner:
    inventory = load_inventory(LAB)
    store.import_inventory(inventory)
    settings = ProvisionerSettings(
        state_dir=state_dir,
        assets_dir=state_dir / "assets",
        tftp_root=Path("/usr/lib/ipxe"),
        http_base="http://unset",
    )
    return Provisioner(inventory, store, settings)


async def serve(store: Store, state_dir: Path) -> Server:
    """The HTTP side of `plasmaboot serve` over `store`, on a free loopback port."""
    prov = provisioner(store, state_dir)
    runner = web.AppRunner(build_app(prov, ADMIN, list))  # shutdown as serve does
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    prov.settings.http_base = base
    return Server(prov, runner, base)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ServeProcess:
    """`plasmaboot serve` as a real process (another server on the same store); `base` is
    its admin listener (https, its certificate from the CA in its state directory)."""

    proc: subprocess.Popen[bytes]
    base: str
    log: Path
    ca: Path
    boot: str = ""  # the boot port (plain HTTP): boot scripts and the agent API

    @property
    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    @classmethod
    def start(cls, state_dir: Path, store: str | None = None, config: Path = LAB) -> ServeProcess:
        http_port, admin_port = free_port(), free_port()
        argv = [sys.executable, "-m", "plasmaboot", "serve", "-c", str(config),
                "--state-dir", str(state_dir), "--no-dhcp", "--bind", "127.0.0.1",
                "--http-port", str(http_port), "--tftp-port", str(free_port()),
                "--admin-port", str(admin_port)]  # fmt: skip
        if store is not None:
            argv += ["--store", store]
        log = state_dir.parent / f"serve-{http_port}.log"
        env = {**os.environ, "PLASMABOOT_ADMIN_TOKEN": ADMIN}
        with log.open("wb") as sink:
            proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
        ca = state_dir / "pki" / "ca.crt"
        admin, boot = f"https://127.0.0.1:{admin_port}", f"http://127.0.0.1:{http_port}"
        server = cls(proc, admin, log, ca, boot)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"serve exited: {log.read_text()[-2000:]}"
            try:
                if (
                    ca.exists()
                    and httpx.get(
                        f"{server.base}/api/openapi.json", timeout=1, verify=server.tls
                    ).status_code
                    == 200
                ):
                    return server
            except (httpx.TransportError, ssl.SSLError):
                pass
            time.sleep(0.1)
        server.stop()
        raise AssertionError(f"serve did not answer: {log.read_text()[-2000:]}")

    async def action(self, hostname: str, event: Event) -> int:
        """An operator event through this server's admin API; the event id it recorded."""
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{self.base}/api/v1/nodes/{hostname}/actions",
                json={"event": event.value},
                headers={"Authorization": f"Bearer {ADMIN}"},
                ssl=self.tls,
            ) as response,
        ):
            assert response.status == 200, await response.text()
            return int((await response.json())["id"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Message:
    id: int
    kind: str
    data: dict[str, Any]


@dataclass
class StreamClient:
    """One connection to /api/v1/events/stream, read in the background."""

    url: str
    headers: dict[str, str]
    status: int = 0
    messages: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)
    comments: list[str] = field(default_factory=list)
    retry: str | None = None
    _http: aiohttp.ClientSession | None = None
    _response: aiohttp.ClientResponse | None = None
    _task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        base: str,
        query: str = "",
        token: str | None = ADMIN,
        last_id: int | None = None,
        tls: ssl.SSLContext | bool = True,
    ) -> StreamClient:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        client = cls(f"{base}/api/v1/events/stream{query}", headers)
        client._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        client._response = await client._http.get(client.url, headers=headers, ssl=tls)
        client.status = client._response.status
        if client.status == 200:
            client._task = asyncio.get_running_loop().create_task(client._read())
        return client

    async def _read(self) -> None:
        assert self._response is not None
        ident, kind, data = "", "", []
        async for raw in self._response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                self.comments.append(line)
            elif line.startswith("retry: "):
                self.retry = line[7:]
            elif line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif not line and data:
                await self.messages.put(Message(int(ident), kind, json.loads("\n".join(data))))
                ident, kind, data = "", "", []

    async def next(self, timeout: float = 5.0) -> Message:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def take(self, count: int, timeout: float = 5.0) -> list[Message]:
        return [await self.next(timeout) for _ in range(count)]

    async def quiet(self, seconds: float) -> bool:
        """Nothing more arrives within `seconds`."""
        try:
            await asyncio.wait_for(self.messages.get(), seconds)
        except TimeoutError:
            return True
        return False

    async def error_body(self) -> Any:
        assert self._response is not None
        return await self._response.json()

    async def close(self, *, abort: bool = False) -> None:
        """Hang up; `abort`: reset the connection at once, mid-stream, as a crash would."""
        if self._response is not None and abort and self._response.connection is not None:
            transport = self._response.connection.transport
            if transport is not None:
                transport.abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await self._task
        if self._response is not None:
            self._response.close()
        if self._http is not None:
            await self._http.close()
