"""The asyncio TFTP server: one listening endpoint for requests, one socket per transfer.

Written here rather than taken from a library because none of the kept Python TFTP servers
combines asyncio, RFC 7440 windowsize and pluggable dynamic files; the design borrows
fbtftp's `ResponseData` and per-transfer stats callback without its fork-per-transfer.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

from plasmaboot.logs import get_logger
from plasmaboot.tftp import metrics
from plasmaboot.tftp.files import (
    FileResolver,
    NetasciiResponse,
    RequestRefused,
    ResponseData,
    RootFiles,
)
from plasmaboot.tftp.packets import (
    MAX_BLKSIZE,
    MIN_BLKSIZE,
    BadPacket,
    ErrorCode,
    Opcode,
    ReadRequest,
    build_error,
    negotiate,
    parse_request,
)
from plasmaboot.tftp.transfer import Transfer, TransferStats

log = get_logger(__name__)

_SEND_BUFFER = 1 << 20
_IPV4_OVERHEAD = 20 + 8 + 4
_IPV6_OVERHEAD = 40 + 8 + 4
_MIN_MTU = 576  # the smallest datagram every IPv4 host must accept (RFC 791)
_IP_MTU = 14  # linux/in.h IP_MTU; only some Python builds export it
_IPV6_MTU = 24
# serve's health probe (serve/health.py) reads this name: answered "file not found" from the
# loop and socket machines use, but neither counted nor logged (/metrics stays the machines').
PROBE_FILENAME = ".plasmaboot-health-probe"


class TftpServer:
    """Serves read requests from `root` (and `resolver`'s dynamic files) until `stop()`.

    Requests over `max_transfers` in total or `max_per_client` per client address are
    dropped, not refused, so PXE firmware retries instead of failing the boot. `gso=False`
    sends one packet per syscall instead of one UDP GSO send per window: slower, and a
    firewall then sees (and may drop) single packets rather than whole windows.
    """

    def __init__(
        self,
        root: Path,
        *,
        host: str = "0.0.0.0",
        port: int = 69,
        resolver: FileResolver | None = None,
        on_transfer: Callable[[TransferStats], None] | None = None,
        interface: str | None = None,
        max_transfers: int = 512,
        max_per_client: int = 4,
        timeout: float = 1.0,
        retries: int = 5,
        mtu: int = 1500,
        link_roots: Iterable[Path] = (),
        gso: bool = True,
    ) -> None:
        if not 0 < timeout <= 255:
            raise ValueError(f"timeout: {timeout} s is out of range, use 0 < timeout <= 255")
        if retries < 0:
            raise ValueError(f"retries: {retries} is negative, use 0 or more")
        if max_transfers < 1 or max_per_client < 1:
            raise ValueError("max_transfers and max_per_client: use 1 or more")
        if mtu < _MIN_MTU:
            raise ValueError(f"mtu: {mtu} is too small for TFTP, use at least 576")
        self.files = RootFiles(root, link_roots)
        self.host = host
        self.port = port
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._resolver = resolver
        self._on_transfer = on_transfer
        self._interface = interface
        self._max_transfers = max_transfers
        self._max_per_client = max_per_client
        self._timeout = timeout
        self._retries = retries
        self._mtu = mtu
        self._gso = gso
        self._transfers: dict[tuple[str, int], Transfer] = {}
        self._per_client: dict[str, int] = {}
        self._listener: asyncio.DatagramTransport | None = None

    @property
    def listening(self) -> bool:
        """True while the request socket is open (the health probe of `serve`)."""
        return self._listener is not None and not self._listener.is_closing()

    @property
    def active_transfers(self) -> int:
        return len(self._transfers)

    async def start(self) -> None:
        """Bind the listening port; with `port=0` the chosen port is stored in `self.port`."""
        loop = asyncio.get_running_loop()
        sock = self._new_socket()
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"tftp: cannot bind {self.host}:{self.port}: {exc}") from exc
        self.port = sock.getsockname()[1]
        self._listener, _ = await loop.create_datagram_endpoint(
            lambda: _RequestListener(self), sock=sock
        )
        log.info("tftp.listening", host=self.host, port=self.port, root=str(self.files.root))

    async def stop(self) -> None:
        """Stop listening and end every transfer, telling each client the server is going."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for transfer in list(self._transfers.values()):
            transfer.abort("server shutting down")
        await asyncio.sleep(0)

    def _new_socket(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        if self._interface:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self._interface.encode())
        return sock

    def _handle_request(self, datagram: bytes, client: tuple[str, int]) -> None:
        """Answer one datagram sent to the listening port."""
        try:
            opcode, request = parse_request(datagram)
        except BadPacket as exc:
            self._refuse(client, "malformed", ErrorCode.ILLEGAL_OPERATION, str(exc))
            return
        if opcode is Opcode.WRQ:
            message = "write requests are refused: this server is read-only"
            self._refuse(client, "write", ErrorCode.ACCESS_VIOLATION, message)
            return
        if request.filename == PROBE_FILENAME and self._listener is not None:
            self._listener.sendto(build_error(ErrorCode.FILE_NOT_FOUND, "health probe"), client)
            return
        if client in self._transfers:  # a retransmitted RRQ: the running transfer answers it
            metrics.REQUESTS_REFUSED.labels("retransmitted").inc()
            return
        if len(self._transfers) >= self._max_transfers:
            metrics.REQUESTS_REFUSED.labels("busy").inc()
            return
        if self._per_client.get(client[0], 0) >= self._max_per_client:
            metrics.REQUESTS_REFUSED.labels("busy_client").inc()
            return
        if request.mode not in ("octet", "netascii"):
            message = f"mode: {request.mode!r} is not supported, use octet or netascii"
            self._refuse(client, "mode", ErrorCode.ILLEGAL_OPERATION, message)
            return
        try:
            data = self._open(request, client)
        except RequestRefused as exc:
            reason = "not_found" if exc.code == ErrorCode.FILE_NOT_FOUND else "refused"
            self._refuse(client, reason, exc.code, str(exc))
            return
        self._start_transfer(request, client, data)

    def _open(self, request: ReadRequest, client: tuple[str, int]) -> ResponseData:
        data: ResponseData | None = None
        if self._resolver is not None:
            try:
                data = self._resolver(request.filename, client)
            except Exception:
                log.exception("tftp.resolver_failed", filename=request.filename, client=client)
                raise RequestRefused(ErrorCode.NOT_DEFINED, "server error") from None
        if data is None:
            data = self.files.open(request.filename)
        return NetasciiResponse(data) if request.mode == "netascii" else data

    def _start_transfer(
        self, request: ReadRequest, client: tuple[str, int], data: ResponseData
    ) -> None:
        try:
            sock = self._new_socket()
            sock.bind((self.host, 0))
            sock.connect(client)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            max_blksize = self._max_blksize(sock)
        except OSError as exc:
            data.close()
            log.warning("tftp.socket_failed", client=client, error=str(exc))
            self._refuse(client, "socket", ErrorCode.NOT_DEFINED, "server out of sockets")
            return
        negotiated = negotiate(request.options, max_blksize=max_blksize, file_size=data.size())
        transfer = Transfer(
            asyncio.get_running_loop(),
            sock,
            client,
            request.filename,
            data,
            negotiated,
            timeout=self._timeout,
            retries=self._retries,
            gso=self._gso,
            on_done=self._transfer_done,
        )
        self._transfers[client] = transfer
        self._per_client[client[0]] = self._per_client.get(client[0], 0) + 1
        metrics.ACTIVE.inc()
        transfer.start()

    def _max_blksize(self, sock: socket.socket) -> int:
        """The largest block that fits the configured MTU and the kernel's path MTU."""
        if self._family == socket.AF_INET:
            level, option, overhead = socket.IPPROTO_IP, _IP_MTU, _IPV4_OVERHEAD
        else:
            level, option, overhead = socket.IPPROTO_IPV6, _IPV6_MTU, _IPV6_OVERHEAD
        mtu = min(self._mtu, sock.getsockopt(level, option))
        return max(MIN_BLKSIZE, min(MAX_BLKSIZE, mtu - overhead))

    def _transfer_done(self, transfer: Transfer, stats: TransferStats) -> None:
        self._transfers.pop(transfer.client, None)
        ip = transfer.client[0]
        remaining = self._per_client.get(ip, 1) - 1
        if remaining:
            self._per_client[ip] = remaining
        else:
            self._per_client.pop(ip, None)
        metrics.ACTIVE.dec()
        metrics.record_transfer(stats)
        # aborts are routine (EDK2 probes the size, then aborts): keep them out of the log
        level = {"ok": log.info, "aborted": log.debug}.get(stats.outcome, log.warning)
        level(
            "tftp.transfer",
            client=stats.client,
            filename=stats.filename,
            outcome=stats.outcome,
            bytes=stats.bytes_sent,
            retransmits=stats.retransmits,
            options=stats.options,
            duration_s=round(stats.duration_s, 4),
            error=stats.error,
        )
        if self._on_transfer is not None:
            try:
                self._on_transfer(stats)
            except Exception:
                log.exception("tftp.on_transfer_failed", filename=stats.filename)

    def _refuse(self, client: tuple[str, int], reason: str, code: ErrorCode, message: str) -> None:
        metrics.REQUESTS_REFUSED.labels(reason).inc()
        log.info("tftp.refused", client=client, reason=reason, message=message)
        if self._listener is not None:
            self._listener.sendto(build_error(code, message), client)


class _RequestListener(asyncio.DatagramProtocol):
    def __init__(self, server: TftpServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._server._handle_request(data, addr)
        except Exception:  # a bad request or dynamic file must never stop the listener
            log.exception("tftp.request_failed", client=addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("tftp.listener_error", error=str(exc))
