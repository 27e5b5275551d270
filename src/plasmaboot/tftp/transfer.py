"""One read transfer on its own ephemeral-port socket (the server's TID, RFC 1350).

This is the hot path measured against tftpd-hpa and atftpd, so it works on a raw non-blocking
socket driven by `loop.add_reader` (asyncio's datagram transport has no `sendmsg`): a whole
window goes out per event-loop turn, in one `sendmsg` with UDP GSO where the kernel has it,
and the retransmit timer is one `call_at` handle that is pushed back by a deadline instead
of being re-created per packet.

The socket is connected to the client's TID: the kernel then discards datagrams from any other
address (RFC 1350 asks for that; the ERROR 5 it suggests for the stranger is not sent), an
ICMP port unreachable ends the transfer at once, and IP_MTU gives the path MTU for blksize.

Block numbers are tracked as absolute integers and put on the wire modulo 2**16, so files of
more than 65535 blocks roll over to block 0 as tftp-hpa, atftp and curl expect.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from plasmaboot.logs import get_logger
from plasmaboot.tftp.files import ResponseData
from plasmaboot.tftp.packets import (
    BadPacket,
    ErrorCode,
    Negotiated,
    Opcode,
    build_error,
    build_oack,
    parse_ack_or_error,
)

log = get_logger(__name__)

Outcome = Literal["ok", "aborted", "timeout", "error"]

_UDP_SEGMENT = 103  # linux/udp.h; not exported by the socket module
_READ_AHEAD = 64 << 10  # lock-step transfers read 64 KiB at a time, not one block per syscall
_MAX_GSO_SEGMENTS = 64
_MAX_GSO_BYTES = 65000
_DATA_HEADER = struct.Struct("!HH")
_gso_supported = hasattr(socket, "SOL_UDP")


@dataclass(frozen=True)
class TransferStats:
    """What one transfer did; handed to `on_transfer` and counted in /metrics."""

    client: tuple[str, int]
    filename: str
    bytes_sent: int
    blocks: int
    retransmits: int
    duration_s: float
    options: dict[str, str] = field(default_factory=dict)
    outcome: Outcome = "ok"
    error: str | None = None


class Transfer:
    """Sends one file; `on_done` is called exactly once when it ends for any reason."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        client: tuple[str, int],
        filename: str,
        data: ResponseData,
        negotiated: Negotiated,
        *,
        timeout: float,
        retries: int,
        gso: bool,
        on_done: Callable[[Transfer, TransferStats], None],
    ) -> None:
        self.client = client
        self._loop = loop
        self._sock = sock
        self._filename = filename
        self._data = data
        self._options = negotiated.acked
        self._blksize = negotiated.blksize
        self._window = negotiated.windowsize
        self._timeout = negotiated.timeout or timeout
        self._retries = retries
        self._gso = gso
        self._on_done = on_done
        self._oack = build_oack(negotiated.acked) if negotiated.acked else b""  # RFC 2347
        self._buf = bytearray()  # file bytes of blocks acked+1 ...
        self._out = bytearray()  # the packets of the window being sent
        self._eof = False
        self._last_block = -1  # absolute number of the final (short) block, once known
        self._total_bytes = 0
        self._acked = 0
        self._sent = 0
        self._dup_armed = True
        self._tries = 0
        self._retransmits = 0
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._started = time.monotonic()
        self._done = False

    def start(self) -> None:
        self._loop.add_reader(self._sock.fileno(), self._on_readable)
        if self._oack:
            self._send_raw(self._oack)
        else:
            self._send_window()
        self._arm_timer()

    def abort(self, reason: str) -> None:
        """End the transfer from the server side (shutdown), telling the client why."""
        self._send_raw(build_error(ErrorCode.NOT_DEFINED, reason))
        self._finish("error", reason)

    def _on_readable(self) -> None:
        """Handle one datagram per wake-up: epoll wakes us again while more are queued."""
        self._read_one()

    def _read_one(self) -> bool:
        """Handle one queued datagram; False when none was waiting."""
        try:
            datagram = self._sock.recv(1024)
        except BlockingIOError:
            return False
        except OSError as exc:  # ICMP port unreachable: the client is gone
            self._finish("error", f"client unreachable: {exc.strerror}")
            return False
        try:
            opcode, number, message = parse_ack_or_error(datagram)
        except BadPacket:
            return True
        if opcode is Opcode.ERROR:
            self._on_client_error(number, message)
        elif self._on_ack(number) and not self._done:
            self._send_window()
            self._arm_timer()
        return True

    def _on_ack(self, block: int) -> bool:
        ahead = (block - self._acked) & 0xFFFF
        if self._oack:
            if block != 0:
                return False
            self._oack = b""
            self._dup_armed = True
            self._tries = 0
            return True
        if ahead == 0:
            if self._window > 1 and self._dup_armed and self._sent > self._acked:
                self._dup_armed = False  # one resend per window: no sorcerer's apprentice
                self._retransmits += self._sent - self._acked
                self._sent = self._acked
                return True
            return False
        if ahead > self._sent - self._acked:
            return False  # stale or foreign block number
        self._dup_armed = self._acked + ahead == self._sent
        del self._buf[: ahead * self._blksize]
        self._acked += ahead
        self._tries = 0  # only progress resets the retry count: duplicates cannot stall forever
        if self._acked == self._last_block:
            self._finish("ok", None)
            return False
        if self._acked < self._sent:  # the client saw a gap: go back to the block after it
            self._retransmits += self._sent - self._acked
            self._sent = self._acked
        return True

    def _on_client_error(self, code: int, message: str) -> None:
        if code == ErrorCode.OPTION_REFUSED:  # EDK2 probes tsize this way: a normal abort
            self._finish("aborted", f"client ended the transfer after the OACK: {message}")
        else:
            self._finish("aborted", f"client error {code}: {message}")

    def _fill(self) -> None:
        want = self._window * self._blksize
        while not self._eof and len(self._buf) < want:
            chunk = self._data.read(max(want - len(self._buf), _READ_AHEAD))
            if chunk:
                self._buf += chunk
            else:
                self._eof = True
                self._total_bytes = self._acked * self._blksize + len(self._buf)
                self._last_block = self._total_bytes // self._blksize + 1

    def _send_window(self) -> None:
        """(Re)send every block from acked+1 to the end of the window."""
        try:
            self._fill()
        except Exception as exc:
            log.exception("tftp.read_failed", filename=self._filename, client=self.client)
            self._send_raw(build_error(ErrorCode.NOT_DEFINED, "server could not read the file"))
            self._finish("error", f"read failed: {exc!r}")
            return
        blksize = self._blksize
        count = self._window
        if self._eof:
            count = min(count, self._last_block - self._acked)
        first = self._acked + 1
        out = self._out
        out.clear()
        header = _DATA_HEADER.pack
        with memoryview(self._buf) as buf:
            for i in range(count):
                out += header(Opcode.DATA, (first + i) & 0xFFFF)
                out += buf[i * blksize : (i + 1) * blksize]
        self._send_packets(count, 4 + blksize)
        self._sent = self._acked + count

    def _send_packets(self, count: int, segment: int) -> None:
        global _gso_supported
        out = self._out
        per_call = min(_MAX_GSO_SEGMENTS, _MAX_GSO_BYTES // segment)
        with memoryview(out) as view:
            start = 0
            try:
                if self._gso and _gso_supported and count > 1 and per_call > 1:
                    gso = [(socket.SOL_UDP, _UDP_SEGMENT, struct.pack("=H", segment))]
                    step = per_call * segment
                    try:
                        while start < len(out):
                            self._sock.sendmsg([view[start : start + step]], gso)
                            start += step
                        return
                    except OSError as exc:
                        if exc.errno not in (errno.EINVAL, errno.EIO, errno.ENOPROTOOPT):
                            raise
                        _gso_supported = False
                        log.info("tftp.gso_unavailable", error=exc.strerror)
                send = self._sock.send
                while start < len(out):
                    send(view[start : start + segment])
                    start += segment
            except ConnectionRefusedError:  # ICMP port unreachable: the client is gone
                self._finish("error", "client unreachable: port closed")
            except OSError:
                pass  # full buffer, firewall drop (EPERM), no route: lost, the timer resends

    def _send_raw(self, packet: bytes) -> None:
        with contextlib.suppress(OSError):  # the timer retransmits, or the transfer times out
            self._sock.send(packet)

    def _arm_timer(self) -> None:
        if self._done:
            return
        self._deadline = self._loop.time() + self._timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        # A busy loop (hundreds of initrds going out by sendfile) can run this timer before
        # the reader callback of an ACK that has already arrived: read what is queued first,
        # so the loop's own lag is never taken for a lost packet (seen in the boot storm).
        while not self._done and self._read_one():
            pass
        if self._done:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            return
        self._tries += 1
        if self._tries > self._retries:
            self._finish("timeout", f"no answer after {self._retries} retransmissions")
            return
        if self._oack:
            self._retransmits += 1
            self._send_raw(self._oack)
        else:
            self._retransmits += self._sent - self._acked
            self._dup_armed = True
            self._send_window()
        self._arm_timer()

    def _finish(self, outcome: Outcome, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        try:
            self._data.close()
        except Exception:
            log.exception("tftp.close_failed", filename=self._filename)
        acked_bytes = self._total_bytes if outcome == "ok" else self._acked * self._blksize
        stats = TransferStats(
            client=self.client,
            filename=self._filename,
            bytes_sent=acked_bytes,
            blocks=self._acked,
            retransmits=self._retransmits,
            duration_s=time.monotonic() - self._started,
            options=dict(self._options),
            outcome=outcome,
            error=error,
        )
        self._on_done(self, stats)
