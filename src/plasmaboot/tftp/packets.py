"""TFTP wire format (RFC 1350) and option negotiation (RFC 2347, 2348, 2349, 7440).

Hand-written because the format is a handful of struct calls and no kept library offers an
asyncio server with windowsize; parsing never raises anything but `BadPacket`, so a hostile
datagram can only ever earn an ERROR reply.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum


class Opcode(IntEnum):
    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(IntEnum):
    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_REFUSED = 8


MIN_BLKSIZE = 8
MAX_BLKSIZE = 65464
DEFAULT_BLKSIZE = 512
MAX_WINDOWSIZE = 64
MIN_TIMEOUT = 1
MAX_TIMEOUT = 255
IP_UDP_TFTP_OVERHEAD = 20 + 8 + 4  # IPv4 header + UDP header + TFTP DATA header

_OPCODE = struct.Struct("!H")
_ACK_OR_DATA = struct.Struct("!HH")


class BadPacket(ValueError):
    """A datagram that is not valid TFTP; the message names the offending field."""


@dataclass(frozen=True)
class ReadRequest:
    filename: str
    mode: str
    options: dict[str, str]


@dataclass(frozen=True)
class Negotiated:
    """What the server agreed to: `acked` holds the options echoed in the OACK (RFC 2347)."""

    blksize: int
    windowsize: int
    timeout: float | None
    acked: dict[str, str]


def parse_request(datagram: bytes) -> tuple[Opcode, ReadRequest]:
    """Parse an RRQ/WRQ: opcode, then NUL-terminated filename, mode and option pairs."""
    if len(datagram) < 4:
        raise BadPacket(f"packet: {len(datagram)} bytes is too short for a request")
    (opcode,) = _OPCODE.unpack_from(datagram)
    if opcode not in (Opcode.RRQ, Opcode.WRQ):
        raise BadPacket(f"opcode: {opcode} is not a request (expected 1=RRQ)")
    if not datagram.endswith(b"\0"):
        raise BadPacket("request: the last field is not NUL-terminated")
    fields = datagram[2:-1].split(b"\0")
    if len(fields) < 2:
        raise BadPacket("request: needs a filename and a mode")
    try:
        words = [f.decode("ascii") for f in fields]
    except UnicodeDecodeError as exc:
        raise BadPacket("request: filename, mode and options must be ASCII") from exc
    filename, mode, rest = words[0], words[1].lower(), words[2:]
    if not filename:
        raise BadPacket("filename: empty")
    if len(rest) % 2:
        raise BadPacket(f"options: option {rest[-1]!r} has no value")
    options: dict[str, str] = {}
    for name, value in zip(rest[::2], rest[1::2], strict=True):
        options.setdefault(name.lower(), value)
    return Opcode(opcode), ReadRequest(filename, mode, options)


def negotiate(options: dict[str, str], *, max_blksize: int, file_size: int | None) -> Negotiated:
    """Accept what the server supports, ignore the rest; invalid values are ignored (RFC 2347)."""
    acked: dict[str, str] = {}
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, None
    requested = _int_option(options, "blksize")
    if requested is not None and MIN_BLKSIZE <= requested <= MAX_BLKSIZE:
        blksize = min(requested, max_blksize)
        acked["blksize"] = str(blksize)
    requested = _int_option(options, "windowsize")
    if requested is not None and 1 <= requested <= 65535:
        windowsize = min(requested, MAX_WINDOWSIZE)
        acked["windowsize"] = str(windowsize)
    requested = _int_option(options, "timeout")
    if requested is not None and MIN_TIMEOUT <= requested <= MAX_TIMEOUT:
        timeout = float(requested)
        acked["timeout"] = str(requested)
    if "tsize" in options and file_size is not None:
        acked["tsize"] = str(file_size)
    return Negotiated(blksize, windowsize, timeout, acked)


def _int_option(options: dict[str, str], name: str) -> int | None:
    value = options.get(name)
    if value is None or not value.isdigit():
        return None
    return int(value)


def parse_ack_or_error(datagram: bytes) -> tuple[Opcode, int, str]:
    """Parse what a reader sends back: (ACK, block, "") or (ERROR, code, message)."""
    if len(datagram) < 4:
        raise BadPacket(f"packet: {len(datagram)} bytes is too short for ACK/ERROR")
    opcode, number = _ACK_OR_DATA.unpack_from(datagram)
    if opcode == Opcode.ACK:
        return Opcode.ACK, number, ""
    if opcode == Opcode.ERROR:
        message = datagram[4:].split(b"\0", 1)[0].decode("ascii", "replace")
        return Opcode.ERROR, number, message
    raise BadPacket(f"opcode: {opcode} is not expected from a reader (expected 4=ACK, 5=ERROR)")


def build_oack(acked: dict[str, str]) -> bytes:
    body = b"".join(f"{k}\0{v}\0".encode("ascii") for k, v in acked.items())
    return _OPCODE.pack(Opcode.OACK) + body


def build_error(code: ErrorCode, message: str) -> bytes:
    text = message.encode("ascii", "replace")[:400]
    return _ACK_OR_DATA.pack(Opcode.ERROR, code) + text + b"\0"
