"""Generated files (dhcpd, Kea, dnsmasq, iPXE, nginx, zones, firewalls, cluster-config,
NixOS, systemd) from the one inventory, so they can never disagree.

Files are built with f-strings in small functions rather than a template engine: each is a
few dozen lines, and keeping the structure in typed code lets mypy check every field used.
"""

from plasmaboot.render.common import Files, RenderContext, RenderError
from plasmaboot.render.output import write_files
from plasmaboot.render.registry import TARGETS, render, target_names

__all__ = [
    "TARGETS",
    "Files",
    "RenderContext",
    "RenderError",
    "render",
    "target_names",
    "write_files",
]
