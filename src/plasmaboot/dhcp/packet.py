"""The DHCPv4 wire format (RFC 2131 section 2, RFC 2132, RFC 3396).

Hand-written because the Python DHCP libraries either pull in a packet-capture stack
(scapy), lack RFC 3396 long options and option 52 overload, or are unmaintained; the
server needs one small, allocation-light decoder it can fuzz.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from plasmaboot.dhcp.options import MessageType, Opt

MAGIC_COOKIE = b"\x63\x82\x53\x63"
BOOTREQUEST = 1
BOOTREPLY = 2
BROADCAST_FLAG = 0x8000
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
HEADER_SIZE = HEADER.size  # 236
MIN_DHCP_SIZE = 576  # RFC 2131 section 2: every client accepts this much
BOOTP_MIN_PAYLOAD = 300  # some PXE ROMs drop replies shorter than a BOOTP packet
UNSPECIFIED = IPv4Address(0)
_ZERO = bytes(4)

# Options a reply keeps when it must shrink to the client's option 57.
_ESSENTIAL = frozenset({Opt.MESSAGE_TYPE, Opt.SERVER_ID, Opt.LEASE_TIME, Opt.SUBNET_MASK})
_HEAD = (Opt.MESSAGE_TYPE, Opt.SERVER_ID)


class DecodeError(ValueError):
    """The bytes are not a DHCP packet; the message says which field is wrong."""


@dataclass
class DhcpPacket:
    op: int
    xid: int
    chaddr: bytes  # the hardware address, `hlen` bytes
    htype: int = 1
    hops: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: IPv4Address = UNSPECIFIED
    yiaddr: IPv4Address = UNSPECIFIED
    siaddr: IPv4Address = UNSPECIFIED
    giaddr: IPv4Address = UNSPECIFIED
    sname: bytes = b""
    file: bytes = b""
    options: dict[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> MessageType | None:
        value = self.options.get(Opt.MESSAGE_TYPE)
        if value is None or len(value) != 1:
            return None
        try:
            return MessageType(value[0])
        except ValueError:
            return None

    @property
    def mac(self) -> str:
        return self.chaddr.hex(":")

    @property
    def broadcast(self) -> bool:
        return bool(self.flags & BROADCAST_FLAG)


def _read_options(data: bytes, where: str, into: dict[int, bytes]) -> None:
    """Append each option to `into`; RFC 3396 says repeated codes concatenate in order."""
    i = 0
    end = len(data)
    while i < end:
        code = data[i]
        if code == Opt.END:
            return
        if code == Opt.PAD:
            i += 1
            continue
        if i + 1 >= end:
            raise DecodeError(f"{where}: option {code} has no length byte")
        length = data[i + 1]
        if i + 2 + length > end:
            raise DecodeError(
                f"{where}: option {code} claims {length} bytes, only {end - i - 2} remain"
            )
        into[code] = into.get(code, b"") + data[i + 2 : i + 2 + length]
        i += 2 + length


def _address(packed: bytes) -> IPv4Address:
    return UNSPECIFIED if packed == _ZERO else IPv4Address(packed)


def decode(data: bytes) -> DhcpPacket:
    """Parse one datagram; raises DecodeError naming the broken field."""
    if len(data) < HEADER_SIZE + 4:
        raise DecodeError(f"packet is {len(data)} bytes; a DHCP packet has at least 240")
    (op, htype, hlen, hops, xid, secs, flags, ci, yi, si, gi, chaddr, sname, file) = (
        HEADER.unpack_from(data)
    )
    if op not in (BOOTREQUEST, BOOTREPLY):
        raise DecodeError(f"op is {op}; expected 1 (BOOTREQUEST) or 2 (BOOTREPLY)")
    if hlen > 16:
        raise DecodeError(f"hlen is {hlen}; chaddr holds at most 16 bytes")
    if data[HEADER_SIZE : HEADER_SIZE + 4] != MAGIC_COOKIE:
        raise DecodeError("magic cookie missing: a BOOTP packet, not DHCP")
    options: dict[int, bytes] = {}
    _read_options(data[HEADER_SIZE + 4 :], "options", options)
    overload = options.pop(Opt.OVERLOAD, b"\x00")
    overload_value = overload[0] if len(overload) == 1 else 0
    # RFC 3396 section 7: concatenate options, then file, then sname.
    if overload_value & 1:
        _read_options(file, "file (overloaded)", options)
        file = b""
    if overload_value & 2:
        _read_options(sname, "sname (overloaded)", options)
        sname = b""
    return DhcpPacket(
        op=op,
        xid=xid,
        chaddr=chaddr[:hlen],
        htype=htype,
        hops=hops,
        secs=secs,
        flags=flags,
        ciaddr=_address(ci),
        yiaddr=_address(yi),
        siaddr=_address(si),
        giaddr=_address(gi),
        sname=sname.rstrip(b"\x00"),
        file=file.rstrip(b"\x00"),
        options=options,
    )


def _option_bytes(code: int, value: bytes) -> bytes:
    """One option, split into 255-byte pieces when longer (RFC 3396 section 5)."""
    if len(value) <= 255:
        return bytes((code, len(value))) + value
    return b"".join(
        bytes((code, len(chunk))) + chunk
        for chunk in (value[i : i + 255] for i in range(0, len(value), 255))
    )


def _in_wire_order(options: dict[int, bytes]) -> Iterator[tuple[int, bytes]]:
    """Message type and server id first (some PXE ROMs read only the head), then the rest
    in the caller's order."""
    for head in _HEAD:
        value = options.get(head)
        if value is not None:
            yield head, value
    for code, value in options.items():
        if code not in _HEAD:
            yield code, value


def encode(packet: DhcpPacket, max_size: int = MIN_DHCP_SIZE) -> bytes:
    """Serialise; options that do not fit `max_size` (option 57) are left out, last first.

    Message type and server id go first (some PXE ROMs read only the head); the caller's
    option order is otherwise kept, so it decides what is dropped when space runs out.
    """
    if len(packet.chaddr) > 16:
        raise ValueError(f"chaddr is {len(packet.chaddr)} bytes; the field holds 16")
    if len(packet.sname) > 64 or len(packet.file) > 128:
        raise ValueError("sname holds 64 bytes and file 128; send longer names as option 67")
    header = HEADER.pack(
        packet.op,
        packet.htype,
        len(packet.chaddr),
        packet.hops,
        packet.xid,
        packet.secs,
        packet.flags,
        packet.ciaddr.packed,
        packet.yiaddr.packed,
        packet.siaddr.packed,
        packet.giaddr.packed,
        packet.chaddr,
        packet.sname,
        packet.file,
    )
    budget = max(max_size, MIN_DHCP_SIZE) - 28 - HEADER_SIZE - 4 - 1  # IP+UDP, cookie, END
    body = bytearray()
    for code, value in _in_wire_order(packet.options):
        encoded = _option_bytes(code, value)
        if len(body) + len(encoded) > budget and code not in _ESSENTIAL:
            continue
        body += encoded
    body.append(Opt.END)
    payload = header + MAGIC_COOKIE + body
    if len(payload) < BOOTP_MIN_PAYLOAD:
        payload += bytes(BOOTP_MIN_PAYLOAD - len(payload))
    return payload
