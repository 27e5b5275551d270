"""The lab's router advert: the fields iPXE and RFC 4861 read."""

from __future__ import annotations

import struct

from plasmaboot.lab.router_advert import (
    ROUTER_ADVERTISEMENT,
    is_router_solicitation,
    router_advertisement,
)

MAC = bytes.fromhex("525400123456")


def test_rfc4861_4_2_advert_claims_no_router_no_dhcpv6_and_carries_its_link_address() -> None:
    advert = router_advertisement(MAC)
    kind, code, _checksum, hop_limit, flags, lifetime, reachable, retrans = struct.unpack(
        "!BBHBBHII", advert[:16]
    )
    assert (kind, code) == (ROUTER_ADVERTISEMENT, 0)
    assert hop_limit == 64
    assert flags & 0xC0 == 0  # no M/O: iPXE ends its IPv6 step instead of starting DHCPv6
    assert lifetime == 0  # RFC 4861 6.2.3: not a default router
    assert (reachable, retrans) == (0, 0)
    assert advert[16:] == bytes((1, 1)) + MAC  # source link-layer option, 8 bytes


def test_only_a_well_formed_solicitation_is_answered() -> None:
    assert is_router_solicitation(bytes((133, 0)) + bytes(6))
    assert not is_router_solicitation(bytes((133, 1)) + bytes(6))  # RFC 4861 6.1.1: code 0
    assert not is_router_solicitation(bytes((134, 0)) + bytes(14))  # our own advert, looped
    assert not is_router_solicitation(bytes((133, 0)))  # truncated
