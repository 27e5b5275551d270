"""DHCP option codes and the typed readings of the options plasmaboot acts on.

Options travel as raw bytes in `DhcpPacket.options`; these helpers turn the few that
drive decisions (RFC 2132, RFC 4578 93/94/97, RFC 3004 user class, iPXE 175, RFC 3046
relay info, RFC 3011 subnet selection) into values, and build the encapsulated ones
plasmaboot sends back.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from enum import IntEnum
from ipaddress import IPv4Address


class Opt(IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    BROADCAST = 28
    NTP = 42
    VENDOR_SPECIFIC = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOTFILE = 67
    USER_CLASS = 77
    RELAY_AGENT = 82
    CLIENT_ARCH = 93
    CLIENT_NDI = 94
    CLIENT_UUID = 97
    SUBNET_SELECTION = 118  # RFC 3011
    IPXE = 175
    END = 255


class MessageType(IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


IPXE_NO_PXEDHCP = 176  # iPXE 175.176: do not wait for ProxyDHCP offers
PXE_DISCOVERY_CONTROL = 6  # PXE spec option 43.6
RELAY_LINK_SELECTION = 5  # RFC 3527 option 82.5
RELAY_SOURCE_PORT = 19  # RFC 8357 option 82.19


def parse_tlvs(data: bytes) -> dict[int, bytes]:
    """Sub-options (43, 82, 175) as code -> value; a truncated tail is ignored, not fatal."""
    result: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == Opt.END:
            break
        if code == Opt.PAD:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        length = data[i + 1]
        result[code] = result.get(code, b"") + data[i + 2 : i + 2 + length]
        i += 2 + length
    return result


def build_tlvs(items: Mapping[int, bytes]) -> bytes:
    """Encapsulated sub-options; each value must fit in one 255-byte sub-option."""
    out = bytearray()
    for code, value in items.items():
        if len(value) > 255:
            raise ValueError(f"sub-option {code} is {len(value)} bytes; the limit is 255")
        out += bytes((code, len(value))) + value
    return bytes(out)


def client_arches(value: bytes | None) -> tuple[int, ...]:
    """RFC 4578 2.1: option 93 is a list of 16-bit architecture types."""
    if not value or len(value) % 2:
        return ()
    return struct.unpack(f"!{len(value) // 2}H", value)


def user_classes(value: bytes | None) -> tuple[bytes, ...]:
    """RFC 3004 length-prefixed user classes; iPXE and others send one bare string."""
    if not value:
        return ()
    items: list[bytes] = []
    i = 0
    while i < len(value):
        length = value[i]
        if length == 0 or i + 1 + length > len(value):
            return (value,)
        items.append(value[i + 1 : i + 1 + length])
        i += 1 + length
    return tuple(items)


def is_ipxe(options: Mapping[int, bytes]) -> bool:
    return Opt.IPXE in options or b"iPXE" in user_classes(options.get(Opt.USER_CLASS))


def text(value: bytes | None) -> str | None:
    """An option read as text; undecodable bytes are replaced, never fatal."""
    if value is None:
        return None
    return value.rstrip(b"\x00").decode("ascii", errors="replace")


def ip_list(addresses: Iterable[IPv4Address]) -> bytes:
    return b"".join(a.packed for a in addresses)


def u32(value: int) -> bytes:
    return struct.pack("!I", value)


def u16_value(value: bytes | None) -> int | None:
    if value is None or len(value) != 2:
        return None
    return int(struct.unpack("!H", value)[0])


def ip_value(value: bytes | None) -> IPv4Address | None:
    if value is None or len(value) != 4:
        return None
    return IPv4Address(value)
