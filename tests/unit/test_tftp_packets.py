"""RFC 1350 packet format and RFC 2347/2348/2349/7440 option negotiation, without sockets."""

from __future__ import annotations

import pytest

from plasmaboot.tftp.packets import (
    BadPacket,
    ErrorCode,
    Opcode,
    build_error,
    build_oack,
    negotiate,
    parse_ack_or_error,
    parse_request,
)


def rrq(*words: str, opcode: int = 1) -> bytes:
    return opcode.to_bytes(2, "big") + b"".join(w.encode() + b"\0" for w in words)


def test_rfc1350_rrq_carries_filename_and_mode() -> None:
    opcode, request = parse_request(rrq("undionly.kpxe", "OCTET"))
    assert opcode is Opcode.RRQ
    assert request.filename == "undionly.kpxe"
    assert request.mode == "octet"
    assert request.options == {}


def test_rfc1350_wrq_is_recognised_so_it_can_be_refused() -> None:
    opcode, _ = parse_request(rrq("x", "octet", opcode=2))
    assert opcode is Opcode.WRQ


def test_rfc2347_option_names_are_case_insensitive_and_values_kept() -> None:
    _, request = parse_request(rrq("f", "octet", "BlkSize", "1468", "TSIZE", "0"))
    assert request.options == {"blksize": "1468", "tsize": "0"}


@pytest.mark.parametrize(
    ("datagram", "field"),
    [
        (b"\x00\x01", "packet"),
        (b"\x00\x03abc\0", "opcode"),
        (b"\x00\x01file\0octet", "NUL-terminated"),
        (b"\x00\x01file\0", "mode"),
        (b"\x00\x01\0octet\0", "filename"),
        (rrq("f", "octet", "blksize"), "option 'blksize' has no value"),
        (b"\x00\x01f\xff\0octet\0", "ASCII"),
    ],
)
def test_rfc1350_malformed_requests_name_the_field(datagram: bytes, field: str) -> None:
    with pytest.raises(BadPacket, match=field):
        parse_request(datagram)


def test_rfc2347_no_options_means_no_oack() -> None:
    agreed = negotiate({}, max_blksize=1468, file_size=100)
    assert agreed.acked == {}
    assert (agreed.blksize, agreed.windowsize, agreed.timeout) == (512, 1, None)


def test_rfc2347_unknown_options_are_ignored() -> None:
    agreed = negotiate({"multicast": "", "rollover": "0"}, max_blksize=1468, file_size=1)
    assert agreed.acked == {}


def test_rfc2348_blksize_accepted_in_range() -> None:
    agreed = negotiate({"blksize": "1024"}, max_blksize=1468, file_size=None)
    assert agreed.blksize == 1024
    assert agreed.acked == {"blksize": "1024"}


def test_rfc2348_blksize_capped_to_path_mtu() -> None:
    agreed = negotiate({"blksize": "65464"}, max_blksize=1468, file_size=None)
    assert agreed.blksize == 1468
    assert agreed.acked["blksize"] == "1468"


@pytest.mark.parametrize("value", ["7", "65465", "-1", "big", ""])
def test_rfc2348_blksize_out_of_range_is_ignored(value: str) -> None:
    agreed = negotiate({"blksize": value}, max_blksize=1468, file_size=None)
    assert agreed.blksize == 512
    assert "blksize" not in agreed.acked


def test_rfc2349_tsize_answers_the_file_size() -> None:
    agreed = negotiate({"tsize": "0"}, max_blksize=1468, file_size=850528)
    assert agreed.acked == {"tsize": "850528"}


def test_rfc2349_tsize_left_out_when_size_unknown() -> None:
    agreed = negotiate({"tsize": "0"}, max_blksize=1468, file_size=None)
    assert "tsize" not in agreed.acked


@pytest.mark.parametrize(("value", "expected"), [("1", 1.0), ("255", 255.0), ("0", None)])
def test_rfc2349_timeout_between_1_and_255(value: str, expected: float | None) -> None:
    agreed = negotiate({"timeout": value}, max_blksize=1468, file_size=None)
    assert agreed.timeout == expected
    assert ("timeout" in agreed.acked) == (expected is not None)


def test_rfc7440_windowsize_accepted_and_capped() -> None:
    assert negotiate({"windowsize": "16"}, max_blksize=1468, file_size=None).windowsize == 16
    capped = negotiate({"windowsize": "65535"}, max_blksize=1468, file_size=None)
    assert capped.windowsize == 64
    assert capped.acked == {"windowsize": "64"}


def test_rfc7440_windowsize_zero_is_ignored() -> None:
    agreed = negotiate({"windowsize": "0"}, max_blksize=1468, file_size=None)
    assert agreed.windowsize == 1
    assert agreed.acked == {}


def test_rfc2347_oack_lists_agreed_options() -> None:
    assert (
        build_oack({"blksize": "1468", "tsize": "7"})
        == b"\x00\x06blksize\x001468\x00tsize\x007\x00"
    )


def test_rfc1350_error_packet_has_code_and_message() -> None:
    packet = build_error(ErrorCode.FILE_NOT_FOUND, "File not found")
    assert packet == b"\x00\x05\x00\x01File not found\x00"
    assert parse_ack_or_error(packet) == (Opcode.ERROR, 1, "File not found")


def test_rfc1350_ack_parsed_and_other_opcodes_refused() -> None:
    assert parse_ack_or_error(b"\x00\x04\xff\xff") == (Opcode.ACK, 65535, "")
    with pytest.raises(BadPacket, match="opcode"):
        parse_ack_or_error(b"\x00\x03\x00\x01data")
