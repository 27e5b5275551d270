"""dnsmasq.conf: full DHCP, reservation-only, or ProxyDHCP beside an existing DHCP server.

The network's `dhcp.mode` picks the flavour. DNS is switched off (port=0): the cluster's
names come from the BIND zones (`zones.py`), and plasmaboot itself serves TFTP and HTTP.
"""

from __future__ import annotations

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
    overridden,
)


def _range(net: Network, tag: str) -> str:
    assert net.dhcp is not None
    mask = net.subnet.netmask
    if net.dhcp.mode == "proxy":
        return f"dhcp-range=set:{tag},{net.subnet.network_address},proxy,{mask}"
    if net.dhcp.mode == "reservation" or net.dhcp.pool is None:
        return (
            f"dhcp-range=set:{tag},{net.subnet.network_address},static,{mask},{net.dhcp.lease_time}"
        )
    pool = net.dhcp.pool
    return f"dhcp-range=set:{tag},{pool.start},{pool.end},{mask},{net.dhcp.lease_time}"


def _network(inv: Inventory, net: Network, tag: str) -> list[str]:
    assert net.dhcp is not None
    lines = [f"# {net.name} (VLAN {net.vlan}), mode {net.dhcp.mode}"]
    if net.dhcp.interface:
        lines.append(f"interface={net.dhcp.interface}")
    lines.append(_range(net, tag))
    # A relay address outside the subnet still leases from it (dnsmasq 2.86+).
    for relay in net.dhcp.relays:
        if relay not in net.subnet:
            lines.append(f"shared-network={relay},{net.subnet.network_address}")
    if net.dhcp.mode != "proxy":
        lines.append(f"dhcp-option=tag:{tag},option:domain-name,{inv.cluster.domain}")
        if net.gateway is not None:
            lines.append(f"dhcp-option=tag:{tag},option:router,{net.gateway}")
        if net.dns:
            lines.append(f"dhcp-option=tag:{tag},option:dns-server,{','.join(map(str, net.dns))}")
        if net.ntp:
            lines.append(f"dhcp-option=tag:{tag},option:ntp-server,{','.join(map(str, net.ntp))}")
    return lines


def _override_tags(inv: Inventory) -> tuple[list[str], dict[int, list[str]], list[str]]:
    """Tag each node's MACs, then node+arch pairs that have an override."""
    lines: list[str] = []
    by_arch: dict[int, list[str]] = {}
    boot_lines: list[str] = []
    for node in inv.nodes:
        boots = overridden(inv, node)
        if not boots:
            continue
        lines += [f"dhcp-mac=set:node-{node.hostname},{mac}" for mac in node.macs]
        for boot in boots:
            tag = f"ovr-{node.hostname}-{boot.arch}"
            lines.append(f"tag-if=set:{tag},tag:node-{node.hostname},tag:arch{boot.arch}")
            by_arch.setdefault(boot.arch, []).append(tag)
            boot_lines.append(_boot_line(inv, f"tag:!ipxe,tag:{tag}", boot))
    return lines, by_arch, boot_lines


def _boot_line(inv: Inventory, tags: str, boot: ArchBoot) -> str:
    if boot.http:
        return f"dhcp-boot={tags},{boot.filename}"
    return f"dhcp-boot={tags},{boot.filename},,{inv.server.provisioning_ip}"


def _boot(inv: Inventory, proxy: bool) -> list[str]:
    """iPXE gets the script; firmware the boot policy's file for its option 93. Every
    dhcp-boot line excludes the others' tags, so the order dnsmasq tries them is moot."""
    boots = arch_boots(inv)
    lines = [
        "# iPXE identifies itself with user-class iPXE: give it the HTTP boot script and tell",
        "# it (option 175.176 no-pxedhcp) not to wait for a ProxyDHCP offer.",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-option=tag:ipxe,encap:175,176,1",
        "dhcp-match=set:hasarch,option:client-arch",
        *[f"dhcp-match=set:arch{b.arch},option:client-arch,{b.arch}" for b in boots],
    ]
    if proxy:
        # ProxyDHCP answers with a PXE menu; UEFI HTTP boot does not use one.
        server = inv.server.provisioning_ip
        for boot in (b for b in boots if not b.http):
            lines.append(
                f'pxe-service=tag:!ipxe,{boot.arch},"plasmaboot iPXE",{boot.filename},{server}'
            )
            lines.append(f'pxe-service=tag:ipxe,{boot.arch},"plasmaboot",{boot_script_url(inv)}')
        return lines
    tag_lines, by_arch, override_lines = _override_tags(inv)
    lines += [*tag_lines, f"dhcp-boot=tag:ipxe,{boot_script_url(inv)}", *override_lines]
    for boot in boots:
        excluded = "".join(f",tag:!{tag}" for tag in by_arch.get(boot.arch, []))
        lines.append(_boot_line(inv, f"tag:!ipxe,tag:arch{boot.arch}{excluded}", boot))
        if boot.http:
            lines.append(f"dhcp-option-force=tag:!ipxe,tag:arch{boot.arch},60,{HTTP_CLIENT}")
    # No option 93: the boot policy treats the client as BIOS.
    lines.append(_boot_line(inv, "tag:!ipxe,tag:!hasarch", boots[0]))
    unknown = ",".join(f"tag:!arch{b.arch}" for b in boots)
    lines.append(
        f"dhcp-boot=tag:!ipxe,tag:hasarch,{unknown},{FALLBACK_BOOTFILE},,"
        f"{inv.server.provisioning_ip}"
    )
    return lines


def render_dnsmasq(inv: Inventory, ctx: RenderContext) -> Files:
    """dnsmasq.conf; ProxyDHCP when the provisioning network's dhcp.mode is proxy."""
    networks = dhcp_networks(inv)
    if not networks:
        raise RenderError("no network has a dhcp: section; add one to the provisioning network")
    modes = {net.dhcp.mode for net in networks if net.dhcp is not None}
    if "proxy" in modes and len(modes) > 1:
        raise RenderError(
            "dnsmasq cannot mix proxy and non-proxy DHCP networks in one instance; "
            "give every dhcp: section the same mode"
        )
    proxy = modes == {"proxy"}
    lines = [
        f"# {HEADER}",
        f"# Cluster {inv.cluster.name}; check with: dnsmasq --test -C FILE",
        "port=0",
        "bind-interfaces",
        "log-dhcp",
    ]
    if not proxy:
        lines += ["dhcp-authoritative", f"domain={inv.cluster.domain}"]
    for index, net in enumerate(networks):
        lines += ["", *_network(inv, net, f"net{index}")]
    lines += ["", *_boot(inv, proxy)]
    if not proxy:
        lines += ["", "# Fixed addresses: every NIC of every node."]
        # One line per node: dnsmasq refuses the same address on two dhcp-host lines.
        for node in inv.nodes:
            macs = ",".join(node.macs)
            lines.append(f"dhcp-host={macs},{node.provisioning_ip},{node.hostname}")
    return {"dnsmasq.conf": "\n".join(lines) + "\n"}
