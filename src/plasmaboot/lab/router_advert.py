"""Answer IPv6 router solicitations on the lab bridge, so iPXE stops waiting for a router.

iPXE configures IPv4 (DHCP) and IPv6 (router discovery) side by side and waits for both:
with no router on the link it spends about 15 s soliciting on every start. One router
advertisement without the managed/other flags ends its IPv6 step at once (iPXE's
`ipv6conf_rx_router_advertisement`). The advert has router lifetime 0 (RFC 4861 6.2.3:
not a default router) and no prefix, so no machine takes an IPv6 address or route from it.

Lab only: on a real provisioning VLAN the network's own routers speak for IPv6.

    ip netns exec NS python -m plasmaboot.lab.router_advert --interface BRIDGE
"""

from __future__ import annotations

import argparse
import socket
import struct
from pathlib import Path

ROUTER_SOLICITATION = 133
ROUTER_ADVERTISEMENT = 134
ALL_NODES = "ff02::1"
ALL_ROUTERS = "ff02::2"
_SOURCE_LINK_LAYER = 1  # RFC 4861 4.6.1
_HOP_LIMIT = 255  # RFC 4861 6.1.2: receivers drop ND messages with any other hop limit


def router_advertisement(mac: bytes) -> bytes:
    """RFC 4861 4.2: cur hop limit 64, no M/O flags, router lifetime 0, no prefixes.

    The checksum field is left 0: the kernel fills it for raw ICMPv6 sockets (RFC 3542 3.1).
    """
    header = struct.pack("!BBHBBHII", ROUTER_ADVERTISEMENT, 0, 0, 64, 0, 0, 0, 0)
    return header + bytes((_SOURCE_LINK_LAYER, 1)) + mac


def is_router_solicitation(packet: bytes) -> bool:
    return len(packet) >= 8 and packet[0] == ROUTER_SOLICITATION and packet[1] == 0


def open_socket(interface: str) -> socket.socket:
    """A raw ICMPv6 socket on `interface`, joined to all-routers, sending with hop limit 255."""
    index = socket.if_nametoindex(interface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, _HOP_LIMIT)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, _HOP_LIMIT)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    group = socket.inet_pton(socket.AF_INET6, ALL_ROUTERS) + struct.pack("@I", index)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
    return sock


def interface_mac(interface: str) -> bytes:
    text = Path(f"/sys/class/net/{interface}/address").read_text().strip()
    return bytes.fromhex(text.replace(":", ""))


def serve(interface: str) -> None:
    """Answer every solicitation with one advert to all nodes; runs until killed."""
    sock = open_socket(interface)
    advert = router_advertisement(interface_mac(interface))
    destination = (ALL_NODES, 0, 0, socket.if_nametoindex(interface))
    print(f"router adverts on {interface}", flush=True)
    while True:
        packet, source = sock.recvfrom(1500)
        if is_router_solicitation(packet):
            sock.sendto(advert, destination)
            print(f"answered a router solicitation from {source[0]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m plasmaboot.lab.router_advert")
    parser.add_argument("--interface", required=True, help="the lab bridge")
    serve(parser.parse_args().interface)


if __name__ == "__main__":
    main()
