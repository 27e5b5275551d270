"""ISC dhcpd.conf: option-93 class logic, iPXE user-class detection, fixed hosts.

ISC dhcpd is end-of-life (Kea is its successor, see `kea.py`) but is what the seeds run, so
this target keeps their structure: iPXE clients (user-class "iPXE") get the HTTP boot script,
everyone else the iPXE binary for their architecture, and iPXE is told (option 175.176,
no-pxedhcp) not to wait for a ProxyDHCP offer that never comes.
"""

from __future__ import annotations

from plasmaboot.boot.policy import FALLBACK_BOOTFILE
from plasmaboot.inventory.models import Inventory, Network, Node
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

_PREAMBLE = """\
option architecture-type code 93 = unsigned integer 16;
option space ipxe;
option ipxe-encap-opts code 175 = encapsulate ipxe;
option ipxe.no-pxedhcp code 176 = unsigned integer 8;

authoritative;
ddns-update-style none;
"""


def _arch_branch(boot: ArchBoot, indent: str) -> list[str]:
    lines = [f'{indent}    filename "{boot.filename}";']
    if boot.http:
        lines += [
            f'{indent}    option vendor-class-identifier "{HTTP_CLIENT}";',
            # Send option 60 even if the client did not ask for it: HTTP boot needs it.
            f"{indent}    option dhcp-parameter-request-list = "
            "concat(option dhcp-parameter-request-list, 3c);",
        ]
    return lines


def _boot_selection(inv: Inventory, indent: str) -> list[str]:
    """iPXE gets the script; firmware the boot policy's file for its option 93."""
    bios = arch_boots(inv)[0]
    lines = [
        f'{indent}if exists user-class and option user-class = "iPXE" {{',
        f'{indent}    filename "{boot_script_url(inv)}";',
        f"{indent}    option ipxe.no-pxedhcp 1;",
        f"{indent}}} elsif not exists architecture-type {{",
        *_arch_branch(bios, indent),
    ]
    for boot in arch_boots(inv):
        lines.append(f"{indent}}} elsif option architecture-type = {boot.hex} {{")
        lines += _arch_branch(boot, indent)
    lines += [f"{indent}}} else {{", f'{indent}    filename "{FALLBACK_BOOTFILE}";', f"{indent}}}"]
    return lines


def _subnet(inv: Inventory, net: Network) -> list[str]:
    assert net.dhcp is not None
    if net.dhcp.mode == "proxy":
        raise RenderError(
            f"network {net.name!r} uses dhcp.mode proxy, which ISC dhcpd cannot serve; "
            "render the dnsmasq target instead, or set mode: full or reservation"
        )
    s = net.subnet
    lines = [
        f"# {net.name} (VLAN {net.vlan}){': ' + net.purpose if net.purpose else ''}",
        f"subnet {s.network_address} netmask {s.netmask} {{",
    ]
    if net.dhcp.pool is not None and net.dhcp.mode == "full":
        lines.append(f"    range {net.dhcp.pool.start} {net.dhcp.pool.end};")
    lines += [
        f"    default-lease-time {net.dhcp.lease_time};",
        f"    max-lease-time {net.dhcp.lease_time};",
        f"    option broadcast-address {s.broadcast_address};",
        f'    option domain-name "{inv.cluster.domain}";',
    ]
    if net.gateway is not None:
        lines.append(f"    option routers {net.gateway};")
    if net.dns:
        lines.append(f"    option domain-name-servers {', '.join(map(str, net.dns))};")
    if net.ntp:
        lines.append(f"    option ntp-servers {', '.join(map(str, net.ntp))};")
    lines.append(f"    next-server {inv.server.provisioning_ip};")
    lines += _boot_selection(inv, "    ")
    lines.append("}")
    return _with_relays(net, lines)


def _with_relays(net: Network, subnet: list[str]) -> list[str]:
    """Relay addresses outside the subnet join it in one shared-network as /32 subnets: a
    giaddr there then leases from this subnet, as `dhcp.relays` says."""
    assert net.dhcp is not None
    outside = [relay for relay in net.dhcp.relays if relay not in net.subnet]
    if not outside:
        return subnet
    lines = [f"shared-network {net.name} {{"]
    for relay in outside:
        lines.append(f"    subnet {relay} netmask 255.255.255.255 {{ }}  # relay (giaddr)")
    lines += [f"    {line}" if line else line for line in subnet]
    lines.append("}")
    return lines


def _overrides(inv: Inventory, node: Node) -> list[str]:
    """Host statements run after the subnet's, so these replace its choice for this node.

    The iPXE test comes first and re-states the script: dhcpd's `not (exists X and ...)`
    fails to evaluate (and so counts as false) whenever X is absent.
    """
    boots = overridden(inv, node)
    if not boots:
        return []
    lines = [
        '    if exists user-class and option user-class = "iPXE" {',
        f'        filename "{boot_script_url(inv)}";',
    ]
    for boot in boots:
        lines.append(f"    }} elsif option architecture-type = {boot.hex} {{")
        lines += _arch_branch(boot, "    ")
    lines.append("    }")
    return lines


def _hosts(inv: Inventory) -> list[str]:
    lines: list[str] = []
    for node in inv.nodes:
        for index, mac in enumerate(node.macs):
            name = node.hostname if index == 0 else f"{node.hostname}-nic{index}"
            lines += [
                f"host {name} {{",
                f"    hardware ethernet {mac};",
                f"    fixed-address {node.provisioning_ip};",
                f'    option host-name "{node.hostname}";',
                *_overrides(inv, node),
                "}",
            ]
    return lines


def render_dhcpd(inv: Inventory, ctx: RenderContext) -> Files:
    """dhcpd.conf for every network the inventory serves DHCP on."""
    networks = dhcp_networks(inv)
    if not networks:
        raise RenderError("no network has a dhcp: section; add one to the provisioning network")
    lines = [f"# {HEADER}", f"# Cluster {inv.cluster.name}; check with: dhcpd -4 -t -cf FILE", ""]
    lines.append(_PREAMBLE)
    for net in networks:
        lines += [*_subnet(inv, net), ""]
    lines += ["# Fixed addresses: one host block per NIC of every node.", *_hosts(inv)]
    return {"dhcpd.conf": "\n".join(lines) + "\n"}
