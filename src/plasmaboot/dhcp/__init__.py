"""DHCPv4 for provisioning: codec, lease allocator and the asyncio server."""

from plasmaboot.dhcp.config import DhcpConfigError, ServingConfig
from plasmaboot.dhcp.leases import FixedHost, LeaseAllocator
from plasmaboot.dhcp.packet import DecodeError, DhcpPacket, decode, encode
from plasmaboot.dhcp.server import DhcpServer

__all__ = [
    "DecodeError",
    "DhcpConfigError",
    "DhcpPacket",
    "DhcpServer",
    "FixedHost",
    "LeaseAllocator",
    "ServingConfig",
    "decode",
    "encode",
]
