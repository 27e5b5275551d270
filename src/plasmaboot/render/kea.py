"""kea-dhcp4.json: the same boot decisions as dhcpd.conf for ISC Kea, dhcpd's successor.

Client classes carry the boot file: iPXE (user-class "iPXE") gets the HTTP script and option
175.176 (no-pxedhcp), other clients the iPXE binary for their option-93 architecture. The
classes are mutually exclusive so Kea's class precedence never matters.
"""

from __future__ import annotations

from typing import Any

from plasmaboot.boot.policy import FALLBACK_BOOTFILE
from plasmaboot.inventory.models import Inventory, Network
from plasmaboot.render.common import (
    HEADER,
    HTTP_CLIENT,
    ArchBoot,
    Files,
    RenderContext,
    RenderError,
    arch_boots,
    boot_script_url,
    dhcp_networks,
    json_text,
    overridden,
)

DEFAULT_LEASE_FILE = "/var/lib/kea/kea-leases4.csv"
_IPXE = "option[77].hex == 'iPXE'"


def _boot_class(name: str, test: str, boot: ArchBoot) -> dict[str, Any]:
    cls: dict[str, Any] = {"name": name, "test": test, "boot-file-name": boot.filename}
    if boot.http:
        cls["option-data"] = [
            {"name": "vendor-class-identifier", "data": HTTP_CLIENT, "always-send": True}
        ]
    return cls


def _arch_test(arch: int) -> str:
    return f"option[93].hex == 0x{arch:04x}"


def _client_classes(inv: Inventory) -> list[dict[str, Any]]:
    """iPXE first, then node overrides, then the site table; tests exclude each other."""
    classes: list[dict[str, Any]] = [
        {
            "name": "ipxe",
            "test": _IPXE,
            "boot-file-name": boot_script_url(inv),
            "option-data": [
                {"name": "ipxe-encap-opts", "always-send": True},
                {"space": "ipxe", "name": "no-pxedhcp", "data": "1"},
            ],
        }
    ]
    overrides: dict[int, list[str]] = {}
    for node in inv.nodes:
        macs = " or ".join(f"hexstring(pkt4.mac, ':') == '{mac}'" for mac in node.macs)
        for boot in overridden(inv, node):
            name = f"node-{node.hostname}-arch{boot.arch}"
            test = f"not ({_IPXE}) and ({macs}) and {_arch_test(boot.arch)}"
            classes.append(_boot_class(name, test, boot))
            overrides.setdefault(boot.arch, []).append(name)
    boots = arch_boots(inv)
    for boot in boots:
        test = f"not ({_IPXE}) and {_arch_test(boot.arch)}"
        test += "".join(f" and not member('{name}')" for name in overrides.get(boot.arch, []))
        classes.append(_boot_class(f"arch-{boot.arch}", test, boot))
    # No option 93 at all: the boot policy treats the client as BIOS.
    classes.append(_boot_class("arch-none", f"not ({_IPXE}) and not option[93].exists", boots[0]))
    known = " or ".join(_arch_test(boot.arch) for boot in boots)
    classes.append(
        {
            "name": "arch-other",
            "test": f"not ({_IPXE}) and option[93].exists and not ({known})",
            "boot-file-name": FALLBACK_BOOTFILE,
        }
    )
    return classes


def _subnet(inv: Inventory, net: Network, subnet_id: int) -> dict[str, Any]:
    assert net.dhcp is not None
    if net.dhcp.mode == "proxy":
        raise RenderError(
            f"network {net.name!r} uses dhcp.mode proxy, which Kea cannot serve; "
            "render the dnsmasq target instead, or set mode: full or reservation"
        )
    options: list[dict[str, Any]] = [{"name": "domain-name", "data": inv.cluster.domain}]
    if net.gateway is not None:
        options.append({"name": "routers", "data": str(net.gateway)})
    if net.dns:
        options.append({"name": "domain-name-servers", "data": ", ".join(map(str, net.dns))})
    if net.ntp:
        options.append({"name": "ntp-servers", "data": ", ".join(map(str, net.ntp))})
    subnet: dict[str, Any] = {
        "id": subnet_id,
        "subnet": str(net.subnet),
        "comment": f"{net.name} (VLAN {net.vlan})",
        "valid-lifetime": net.dhcp.lease_time,
        "next-server": str(inv.server.provisioning_ip),
        "option-data": options,
        "pools": [],
        "reservations": [],
    }
    if net.dhcp.pool is not None and net.dhcp.mode == "full":
        subnet["pools"] = [{"pool": f"{net.dhcp.pool.start} - {net.dhcp.pool.end}"}]
    # Each node is reserved in the subnet holding its address (one per rack in a fleet).
    subnet["reservations"] = [
        {"hw-address": mac, "ip-address": str(node.provisioning_ip), "hostname": node.hostname}
        for node in inv.nodes
        if node.provisioning_ip in net.subnet
        for mac in node.macs
    ]
    if net.dhcp.relays:
        # A giaddr listed here selects this subnet even outside it (Kea's "relay").
        subnet["relay"] = {"ip-addresses": [str(relay) for relay in net.dhcp.relays]}
    return subnet


def render_kea(
    inv: Inventory, ctx: RenderContext, *, lease_file: str = DEFAULT_LEASE_FILE
) -> Files:
    """kea-dhcp4.json; `lease_file` lets tests keep Kea's memfile in a temp directory."""
    networks = dhcp_networks(inv)
    if not networks:
        raise RenderError("no network has a dhcp: section; add one to the provisioning network")
    interfaces = sorted({net.dhcp.interface for net in networks if net.dhcp and net.dhcp.interface})
    doc: dict[str, Any] = {
        "Dhcp4": {
            "comment": f"{HEADER} Cluster {inv.cluster.name}.",
            "interfaces-config": {"interfaces": interfaces or ["*"]},
            "lease-database": {"type": "memfile", "persist": True, "name": lease_file},
            "authoritative": True,
            # A node with several NICs reserves the same address once per MAC.
            "ip-reservations-unique": False,
            "option-def": [
                {
                    "name": "ipxe-encap-opts",
                    "code": 175,
                    "space": "dhcp4",
                    "type": "empty",
                    "encapsulate": "ipxe",
                },
                {"name": "no-pxedhcp", "code": 176, "space": "ipxe", "type": "uint8"},
            ],
            "client-classes": _client_classes(inv),
            "subnet4": [_subnet(inv, net, i) for i, net in enumerate(networks, start=1)],
        }
    }
    return {"kea-dhcp4.json": json_text(doc)}
