"""The three protocols a simulated PXE client speaks: DHCP, TFTP (RFC 2347/2348/7440), HTTP.

Hand-written, and deliberately independent of plasmaboot's own codecs: a load generator
that reused the server's packet code would agree with the server's bugs. Each piece is the
smallest client that does the real exchange; big HTTP bodies are received with
`sock_recv_into` into one shared discard buffer, because a storm moves tens of GiB and
per-chunk `bytes` objects (what aiohttp or StreamReader hand out) would make the client,
not the server, the bottleneck.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import cast

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
_DISCARD = bytearray(4 << 20)


# ---- DHCP (RFC 2131/2132, 4578; iPXE option 175) ------------------------------------


@dataclass(frozen=True)
class DhcpReply:
    kind: int
    xid: int
    yiaddr: str
    siaddr: str
    bootfile: str
    server_id: str


def dhcp_packet(kind: int, xid: int, mac: bytes, options: dict[int, bytes]) -> bytes:
    """A BOOTREQUEST with the broadcast flag set (so one port-68 socket sees every reply)."""
    head = struct.pack("!BBBBIHH4s4s4s4s", 1, 1, 6, 0, xid, 0, 0x8000, *[bytes(4)] * 4)
    body = mac.ljust(16, b"\x00") + bytes(64 + 128) + MAGIC
    opts = bytes([53, 1, kind])
    for code, value in options.items():
        opts += bytes([code, len(value)]) + value
    return head + body + opts + b"\xff"


def parse_dhcp_reply(data: bytes) -> DhcpReply | None:
    """The fields a PXE client acts on, or None for anything that is not a BOOTREPLY."""
    if len(data) < 240 or data[0] != 2 or data[236:240] != MAGIC:
        return None
    xid = struct.unpack_from("!I", data, 4)[0]
    options: dict[int, bytes] = {}
    i = 240
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        code, length = data[i], data[i + 1]
        options[code] = data[i + 2 : i + 2 + length]
        i += 2 + length
    bootfile = options.get(67) or data[108:236].split(b"\x00", 1)[0]
    kind = options.get(53, b"\x00")[0]
    server_id = options.get(54, data[20:24])
    return DhcpReply(
        kind=kind,
        xid=xid,
        yiaddr=str(IPv4Address(data[16:20])),
        siaddr=str(IPv4Address(data[20:24])),
        bootfile=bootfile.rstrip(b"\x00").decode("ascii", "replace"),
        server_id=str(IPv4Address(server_id[:4])),
    )


class DhcpPort(asyncio.DatagramProtocol):
    """One UDP socket on port 68 for every simulated client; replies go to the waiter of
    their xid (clients differ by chaddr and xid, like real NICs on one wire)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiters: dict[int, asyncio.Queue[DhcpReply]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        reply = parse_dhcp_reply(data)
        if reply is not None and reply.xid in self.waiters:
            self.waiters[reply.xid].put_nowait(reply)

    def send(self, packet: bytes, port: int = 67) -> None:
        assert self.transport is not None
        self.transport.sendto(packet, ("255.255.255.255", port))


async def open_dhcp_port(interface: str) -> DhcpPort:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    sock.bind(("0.0.0.0", 68))
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(DhcpPort, sock=sock)
    return protocol


# ---- TFTP (RFC 1350, 2347 options, 2348 blksize, 2349 tsize, 7440 windowsize) ----------


@dataclass
class TftpTransfer(asyncio.DatagramProtocol):
    """Receives one file; ACKs the last block of each window, or the last in-order block
    after a gap (RFC 7440 section 4), and re-sends its last packet on silence."""

    blksize: int = 512
    windowsize: int = 1
    received: int = 0
    expected: int = 1
    done: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    transport: asyncio.DatagramTransport | None = None
    peer: tuple[str, int] | None = None
    last_sent: bytes = b""
    since_ack: int = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def _send(self, packet: bytes) -> None:
        assert self.transport is not None and self.peer is not None
        self.last_sent = packet
        self.transport.sendto(packet, self.peer)

    def _ack(self, block: int) -> None:
        self.since_ack = 0
        self._send(struct.pack("!HH", 4, block & 0xFFFF))

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self.done.done() or len(data) < 4:
            return
        self.peer = (str(addr[0]), addr[1])
        opcode, block = struct.unpack_from("!HH", data)
        if opcode == 6:  # OACK
            fields = data[2:].split(b"\x00")
            opts = dict(zip(fields[0::2], fields[1::2], strict=False))
            self.blksize = int(opts.get(b"blksize", b"512"))
            self.windowsize = int(opts.get(b"windowsize", b"1"))
            self._ack(0)
        elif opcode == 3:
            self._data(block, len(data) - 4)
        elif opcode == 5:
            message = data[4:].split(b"\x00", 1)[0].decode("ascii", "replace")
            self.done.set_exception(OSError(f"TFTP error {block}: {message}"))

    def _data(self, block: int, size: int) -> None:
        if block != self.expected & 0xFFFF:
            self._ack(self.expected - 1)  # gap or duplicate: restart the window from here
            return
        self.received += size
        self.expected += 1
        self.since_ack += 1
        if size < self.blksize:
            self._ack(block)
            self.done.set_result(self.received)
        elif self.since_ack >= self.windowsize:
            self._ack(block)


async def tftp_get(
    local_ip: str, server: str, name: str, *, blksize: int, windowsize: int | None, port: int = 69
) -> int:
    """Fetch `name`; returns its size. Retransmits every second until the caller's timeout."""
    loop = asyncio.get_running_loop()
    options = [b"octet", b"blksize", str(blksize).encode(), b"tsize", b"0"]
    if windowsize:
        options += [b"windowsize", str(windowsize).encode()]
    rrq = b"\x00\x01" + name.encode() + b"\x00" + b"\x00".join(options) + b"\x00"
    transport, transfer = await loop.create_datagram_endpoint(
        TftpTransfer, local_addr=(local_ip, 0)
    )
    try:
        transfer.peer = (server, port)
        transfer._send(rrq)
        while True:
            progress = transfer.received
            try:
                return await asyncio.wait_for(asyncio.shield(transfer.done), 1.0)
            except TimeoutError:
                if transfer.received == progress and transfer.last_sent:
                    transfer._send(transfer.last_sent)
    finally:
        transport.close()


# ---- HTTP/1.1 (one request per connection, like iPXE's chain/kernel/initrd) ------------


@dataclass(frozen=True)
class HttpResult:
    status: int
    length: int
    body: bytes  # kept only for small responses (scripts, JSON); big files are counted


async def http_request(
    local_ip: str,
    host: str,
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    keep_body: bool = True,
) -> HttpResult:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        sock.bind((local_ip, 0))
        await loop.sock_connect(sock, (host, port))
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = bytearray()
        while b"\r\n\r\n" not in head:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise ConnectionError(f"{path}: connection closed before the headers ended")
            head += chunk
        raw_head, _, rest = bytes(head).partition(b"\r\n\r\n")
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        fields = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)
        }
        length = int(fields.get("content-length", "-1"))
        kept = bytearray(rest) if keep_body else bytearray()
        received = len(rest)
        # The shared buffer is only safe when nothing is read back from it: another
        # client's receive may overwrite it before this coroutine resumes.
        target = memoryview(bytearray(65536) if keep_body else _DISCARD)
        while length < 0 or received < length:
            count = await loop.sock_recv_into(sock, target)
            if count == 0:
                break
            if keep_body:
                kept += target[:count]
            received += count
        if 0 <= length != received:
            raise ConnectionError(f"{path}: got {received} of {length} bytes")
        return HttpResult(status, received, bytes(kept))
    finally:
        sock.close()
