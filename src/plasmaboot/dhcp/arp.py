"""Teach the kernel a client's MAC before unicasting to an address it does not answer ARP for.

RFC 2131 4.1 has the server unicast to `yiaddr` at `chaddr`; a client (or iPXE during
its ProxyDHCP exchange) does not answer ARP for that address yet. ISC dhcpd writes raw
frames and dnsmasq sets a neighbour entry; the entry (SIOCSARP) keeps us on plain UDP
sockets. No Python library wraps this ioctl, hence the few lines here.
"""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCSARP = 0x8955
ATF_COM = 0x02
ARPHRD_ETHER = 1


def set_neighbour(sock: socket.socket, ip: str, mac: bytes, interface: str) -> None:
    """Add a complete ARP entry ip -> mac on `interface`; raises OSError when refused."""
    protocol_addr = struct.pack("=H2s4s8s", socket.AF_INET, b"", socket.inet_aton(ip), b"")
    hardware_addr = struct.pack("=H6s8s", ARPHRD_ETHER, mac, b"")
    request = protocol_addr + hardware_addr + struct.pack("=i", ATF_COM)
    request += bytes(16) + interface.encode()[:15].ljust(16, b"\0")
    fcntl.ioctl(sock.fileno(), SIOCSARP, request)
