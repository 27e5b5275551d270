"""TFTP server for PXE firmware: RFC 1350 reads with RFC 2347/2348/2349/7440 options."""

from pathlib import Path

from plasmaboot.tftp.files import BytesResponse, FileResolver, ResponseData
from plasmaboot.tftp.server import TftpServer
from plasmaboot.tftp.transfer import TransferStats

DEBIAN_IPXE_ROOT = Path("/usr/lib/ipxe")
"""Where Debian's `ipxe` package puts undionly.kpxe and ipxe.efi."""
DEBIAN_IPXE_LINK_ROOTS = (Path("/boot"),)
"""Debian links /usr/lib/ipxe/ipxe.efi to /boot/ipxe.efi: pass these as `link_roots`."""

__all__ = [
    "DEBIAN_IPXE_LINK_ROOTS",
    "DEBIAN_IPXE_ROOT",
    "BytesResponse",
    "FileResolver",
    "ResponseData",
    "TftpServer",
    "TransferStats",
]
