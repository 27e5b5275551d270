"""What /health reports: every service answers a real request, every couple of seconds.

`HealthProber` runs one probe per service each `period_s`, each bounded by `timeout_s`:

- tftp: the loop thread is alive, the socket open, and a read request for
  `PROBE_FILENAME` sent to the server's own address and port gets a TFTP answer (the "file
  not found" error, from the TFTP loop and socket that serve machines);
- http: a TCP connection to the server's own listener and a `GET /api/openapi.json`
  answered 200 (a real route through the same handler wrapper; not /health itself, and
  not a boot route, which an operator follows in the log);
- admin: the same request to the admin listener, over TLS verified against plasmaboot's
  CA (an expired or mismatched certificate fails the probe, as it fails every client);
- dhcp: every socket is open, and a datagram sent to each from the host itself (to the
  interface's own address, so it is delivered locally and never reaches the wire) is read
  by the DHCP server's reader on its loop (`dhcp.server.PROBE_MAGIC`).

/health reads `status(name)`: "running" only while the last probe of that service passed
and is recent (within `STALE_AFTER_PERIODS` periods), so a prober that stopped cannot keep
reporting healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import secrets
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from plasmaboot.dhcp.server import PROBE_MAGIC, DhcpServer
from plasmaboot.logs import get_logger
from plasmaboot.serve.loop_thread import LoopThread
from plasmaboot.tftp.server import PROBE_FILENAME, TftpServer

log = get_logger("plasmaboot.health")

PROBE_PERIOD_S = 2.0
PROBE_TIMEOUT_S = 1.0
STALE_AFTER_PERIODS = 3
HTTP_PROBE_PATH = "/api/openapi.json"
_SIOCGIFADDR = 0x8915
_TFTP_ANSWERS = {3, 5, 6}  # DATA, ERROR, OACK

Probe = Callable[[], Awaitable[None]]


class ProbeFailed(Exception):
    """A probe's answer (or its absence), worded for the operator."""


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str
    at: float  # monotonic


def interface_ipv4(name: str) -> str | None:
    """The interface's (primary) IPv4 address, or None when it has none or does not exist."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            packed = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def own_address(bind: str, interface: str | None = None) -> str:
    """Where a probe reaches a server bound to `bind` (and maybe to `interface`) from here."""
    if bind not in ("", "0.0.0.0", "::"):
        return bind
    if interface:  # a socket bound to a device hears only what comes to that device's address
        address = interface_ipv4(interface)
        if address is None:
            raise ProbeFailed(f"{interface} has no IPv4 address: nothing can reach the server")
        return address
    return "::1" if bind == "::" else "127.0.0.1"


def _udp_socket(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    return sock


def tftp_probe(server: TftpServer, thread: LoopThread, interface: str | None) -> Probe:
    async def probe() -> None:
        if not thread.alive:
            raise ProbeFailed("the TFTP loop thread is not running")
        if not server.listening:
            raise ProbeFailed("the TFTP socket is closed")
        host = own_address(server.host, interface)
        request = b"\x00\x01" + PROBE_FILENAME.encode() + b"\x00octet\x00"
        loop = asyncio.get_running_loop()
        with _udp_socket(host) as sock:
            await loop.sock_sendto(sock, request, (host, server.port))
            while True:
                data, _ = await loop.sock_recvfrom(sock, 2048)
                if len(data) >= 4 and int.from_bytes(data[:2], "big") in _TFTP_ANSWERS:
                    return

    return probe


def http_probe(bind: str, port: int, tls: Callable[[], ssl.SSLContext] | None = None) -> Probe:
    """`GET HTTP_PROBE_PATH` on the listener at `bind`:`port` (over TLS with the context
    `tls` gives at each probe: the CAs a client trusts may change while serve runs)."""

    async def probe() -> None:
        host = own_address(bind)
        context = tls() if tls else None
        reader, writer = await asyncio.open_connection(
            host, port, ssl=context, server_hostname=host if context else None
        )
        try:
            name = f"[{host}]" if ":" in host else host
            writer.write(
                f"GET {HTTP_PROBE_PATH} HTTP/1.1\r\nHost: {name}:{port}\r\n"
                "User-Agent: plasmaboot-health-probe\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            status = (await reader.readline()).split()
            if len(status) < 2 or status[1] != b"200":
                raise ProbeFailed(f"GET {HTTP_PROBE_PATH} answered {b' '.join(status)!r}")
            await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return probe


def dhcp_probe(server: DhcpServer) -> Probe:
    async def probe() -> None:
        if not server.listening:
            raise ProbeFailed("a DHCP socket is closed")
        host = own_address("0.0.0.0", server.interface)
        loop = asyncio.get_running_loop()
        with _udp_socket(host) as sock:
            for port in server.ports:
                nonce = secrets.token_hex(8).encode()
                await loop.sock_sendto(sock, PROBE_MAGIC + nonce, (host, port))
                while server.probes_heard.get(port) != nonce:
                    await asyncio.sleep(0.01)

    return probe


class HealthProber:
    """Runs each service's probe every `period_s`; `status(name)` is what /health shows."""

    def __init__(
        self,
        probes: dict[str, Probe],
        *,
        period_s: float = PROBE_PERIOD_S,
        timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.probes = probes
        self.period_s = period_s
        self.timeout_s = timeout_s
        self.stale_s = STALE_AFTER_PERIODS * period_s + timeout_s
        self.results: dict[str, ProbeResult] = {}
        self._task: asyncio.Task[None] | None = None

    def status(self, name: str) -> str:
        result = self.results.get(name)
        if result is None or not result.ok:
            return "failed"
        return "running" if time.monotonic() - result.at <= self.stale_s else "failed"

    def reason(self, name: str) -> str:
        result = self.results.get(name)
        if result is None:
            return "never probed"
        if result.ok and time.monotonic() - result.at > self.stale_s:
            return f"no probe for {time.monotonic() - result.at:.0f} s"
        return result.reason

    def publish(self, into: dict[str, Callable[[], str]]) -> None:
        """Make /health read this prober for each of its services."""
        for name in self.probes:
            into[name] = functools.partial(self.status, name)

    async def probe_once(self) -> None:
        await asyncio.gather(*(self._probe(name, probe) for name, probe in self.probes.items()))

    async def _probe(self, name: str, probe: Probe) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await probe()
            result = ProbeResult(True, "answered", time.monotonic())
        except TimeoutError:
            result = ProbeResult(False, f"no answer within {self.timeout_s:g} s", time.monotonic())
        except Exception as exc:  # any error is the service's failure, never the prober's
            result = ProbeResult(False, str(exc) or type(exc).__name__, time.monotonic())
        before = self.results.get(name)
        self.results[name] = result
        if not result.ok and (before is None or before.ok):
            log.warning(f"health: {name} failed", service=name, reason=result.reason)
        elif result.ok and before is not None and not before.ok:
            log.warning(f"health: {name} answers again", service=name)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.period_s)
            await self.probe_once()
