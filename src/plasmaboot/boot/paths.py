"""The boot URL paths, spelled once: the HTTP routes, the scripts, the rendered files and the
DHCP replies all build their URLs from these."""

from __future__ import annotations

BOOT_ROOT = "/boot"
IPXE_DIR = f"{BOOT_ROOT}/ipxe"
ENTRY_SCRIPT_PATH = f"{IPXE_DIR}/boot.ipxe"
NODE_SCRIPT_DIR = f"{IPXE_DIR}/node"
NODE_SCRIPT_ROUTE = f"{NODE_SCRIPT_DIR}/{{mac}}.ipxe"  # aiohttp route, str.format template
IPXE_BINARY_ROUTE = f"{IPXE_DIR}/{{name}}"
CHECKSUMS_PATH = f"{BOOT_ROOT}/SHA256SUMS"
IMAGE_ROUTE = f"{BOOT_ROOT}/{{path:.+}}"


def node_script_path(mac: str) -> str:
    """A node's own script; `mac` may be an iPXE variable such as ${net0/mac}."""
    return NODE_SCRIPT_ROUTE.format(mac=mac)


def ipxe_binary_path(name: str) -> str:
    return IPXE_BINARY_ROUTE.format(name=name)


def image_path(relative: str) -> str:
    """The URL path of an image file: images' kernel/initrd are relative to /boot/."""
    return f"{BOOT_ROOT}/{relative.lstrip('/')}"
