"""The DHCPv4 codec: RFC 2131 layout, RFC 3396 long options, option 52 overload, fuzzing."""

from __future__ import annotations

import contextlib
from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plasmaboot.dhcp import options as o
from plasmaboot.dhcp.options import MessageType, Opt
from plasmaboot.dhcp.packet import (
    BOOTREQUEST,
    HEADER_SIZE,
    MAGIC_COOKIE,
    DecodeError,
    DhcpPacket,
    decode,
    encode,
)

ips = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
option_codes = st.integers(1, 254).filter(lambda c: c != Opt.OVERLOAD)
packets = st.builds(
    DhcpPacket,
    op=st.sampled_from([1, 2]),
    xid=st.integers(0, 2**32 - 1),
    chaddr=st.binary(min_size=0, max_size=16),
    htype=st.integers(0, 255),
    hops=st.integers(0, 255),
    secs=st.integers(0, 65535),
    flags=st.integers(0, 65535),
    ciaddr=ips,
    yiaddr=ips,
    siaddr=ips,
    giaddr=ips,
    sname=st.binary(max_size=64).map(lambda b: b.rstrip(b"\x00")),
    file=st.binary(max_size=128).map(lambda b: b.rstrip(b"\x00")),
    options=st.dictionaries(option_codes, st.binary(min_size=1, max_size=700), max_size=8),
)


def _raw(options: bytes, *, file: bytes = b"", sname: bytes = b"") -> bytes:
    header = bytearray(HEADER_SIZE)
    header[0], header[1], header[2] = BOOTREQUEST, 1, 6
    header[28:34] = bytes.fromhex("525400123456")
    header[44 : 44 + len(sname)] = sname
    header[108 : 108 + len(file)] = file
    return bytes(header) + MAGIC_COOKIE + options


@settings(max_examples=300, deadline=None)
@given(packets)
def test_rfc2131_2_round_trip_keeps_every_field(packet: DhcpPacket) -> None:
    assert decode(encode(packet, max_size=65535)) == packet


def test_rfc3396_long_option_is_split_and_concatenated() -> None:
    packet = DhcpPacket(op=2, xid=7, chaddr=b"\x01" * 6, options={Opt.BOOTFILE: b"x" * 600})
    wire = encode(packet, max_size=1500)
    assert wire.count(bytes((Opt.BOOTFILE, 255))) == 2  # 255 + 255 + 90
    assert decode(wire).options[Opt.BOOTFILE] == b"x" * 600


def test_rfc3396_repeated_option_in_request_concatenates_in_order() -> None:
    raw = _raw(bytes([53, 1, 1, 77, 2]) + b"ab" + bytes([77, 2]) + b"cd" + b"\xff")
    assert decode(raw).options[Opt.USER_CLASS] == b"abcd"


def test_rfc2131_option_52_overload_reads_file_then_sname() -> None:
    file_opts = bytes([12, 3]) + b"abc" + b"\xff"
    sname_opts = bytes([12, 2]) + b"de" + b"\xff"
    raw = _raw(bytes([53, 1, 1, 52, 1, 3, 255]), file=file_opts, sname=sname_opts)
    packet = decode(raw)
    assert packet.options[Opt.HOSTNAME] == b"abcde"
    assert packet.file == b"" and packet.sname == b""
    assert Opt.OVERLOAD not in packet.options


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"\x01" * 100, "at least 240"),
        (_raw(b"")[:-4] + b"\x00\x00\x00\x00", "magic cookie"),
        (_raw(bytes([53, 5, 1])), "option 53 claims 5 bytes"),
        (_raw(bytes([53])), "no length byte"),
    ],
)
def test_rfc2131_malformed_packet_names_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(DecodeError, match=field):
        decode(raw)


def test_rfc2132_9_10_reply_never_exceeds_option_57() -> None:
    options = {Opt.MESSAGE_TYPE: b"\x02", Opt.SERVER_ID: b"\x0a\x00\x00\x01"}
    options |= {code: b"y" * 200 for code in range(100, 110)}
    wire = encode(DhcpPacket(op=2, xid=1, chaddr=b"\x01" * 6, options=options), max_size=576)
    assert len(wire) + 28 <= 576
    assert decode(wire).message_type is MessageType.OFFER


def test_rfc951_reply_is_padded_to_bootp_size() -> None:
    wire = encode(DhcpPacket(op=2, xid=1, chaddr=b"\x01" * 6, options={53: b"\x05"}))
    assert len(wire) >= 300


def test_rfc4578_arch_list_and_pxe_vendor_class() -> None:
    assert o.client_arches(b"\x00\x07") == (7,)
    assert o.client_arches(b"\x00\x10\x00\x07") == (16, 7)
    assert o.client_arches(b"\x00") == ()
    assert o.text(b"PXEClient:Arch:00007:UNDI:003000") == "PXEClient:Arch:00007:UNDI:003000"


def test_rfc3004_user_class_and_ipxe_bare_string() -> None:
    assert o.user_classes(b"\x04iPXE\x03foo") == (b"iPXE", b"foo")
    assert o.user_classes(b"iPXE") == (b"iPXE",)
    assert o.is_ipxe({Opt.USER_CLASS: b"iPXE"})
    assert o.is_ipxe({Opt.IPXE: bytes([19, 1, 1])})
    assert not o.is_ipxe({Opt.USER_CLASS: b"\x03foo"})


def test_ipxe_175_and_pxe_43_encapsulation_round_trip() -> None:
    encoded = o.build_tlvs({o.IPXE_NO_PXEDHCP: b"\x01"})
    assert encoded == bytes([176, 1, 1])
    assert o.parse_tlvs(encoded + b"\xff") == {176: b"\x01"}
    assert o.parse_tlvs(bytes([6, 1, 8, 9])) == {6: b"\x08"}  # truncated tail ignored


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=700))
def test_fuzz_decode_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(data)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_options_area_raises_only_decode_error(options: bytes) -> None:
    try:
        packet = decode(_raw(options))
    except DecodeError:
        return
    for code in (Opt.CLIENT_ARCH, Opt.USER_CLASS, Opt.RELAY_AGENT, Opt.IPXE):
        o.client_arches(packet.options.get(code))
        o.user_classes(packet.options.get(code))
        o.parse_tlvs(packet.options.get(code, b""))
