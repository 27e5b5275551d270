"""The iPXE script a booting node gets: `boot.policy.NEXT_BOOT` decides from its state.

The script text comes from `render.ipxe` (the same code that renders the static files), so
the live server and the rendered files never disagree. This module adds what only the
live server knows: a one-time boot token on the installer's command line, and the
`pxe-boot` event when an install starts.
"""

from __future__ import annotations

from plasmaboot.boot.paths import node_script_path
from plasmaboot.boot.policy import NEXT_BOOT, NextBoot
from plasmaboot.inventory import Node
from plasmaboot.lifecycle import Event
from plasmaboot.provision import Provisioner
from plasmaboot.render import ipxe
from plasmaboot.store import NodeRecord


def entry_script(http_base: str) -> str:
    """boot.ipxe: get an address (retrying), then chain to this machine's own script."""
    node_url = http_base + node_script_path("${net0/mac}")
    return f"""#!ipxe
# plasmaboot entry script: every machine chains to its own script by MAC.
set attempt:int32 0
:net
isset ${{net0/ip}} || dhcp || goto net_retry
:chain
chain --autofree --replace {node_url} || goto chain_retry
:net_retry
inc attempt
echo plasmaboot: DHCP failed (attempt ${{attempt}}), retrying in 5 s
sleep 5
goto net
:chain_retry
inc attempt
echo plasmaboot: fetching the node script failed (attempt ${{attempt}}), retrying in 5 s
sleep 5
iseq ${{attempt}} 60 && reboot ||
goto chain
"""


def stop_script(reason: str) -> str:
    return f"#!ipxe\necho plasmaboot: {reason}\nsleep 10\nexit 1\n"


def _kernel_args(provisioner: Provisioner, node: Node, stage: str) -> str:
    token = provisioner.tokens.issue_boot(node.hostname)
    base = provisioner.settings.http_base
    return f"plasmaboot.url={base} plasmaboot.token={token} plasmaboot.stage={stage}"


def node_script(provisioner: Provisioner, record: NodeRecord, spec: Node | None) -> str:
    """The script for a known node; fires `pxe-boot` when an install starts."""
    inv = provisioner.inventory
    base = provisioner.settings.http_base
    next_boot = NEXT_BOOT[record.state]
    if next_boot is NextBoot.STOP:
        return stop_script(f"{record.hostname} is decommissioned; it will not be provisioned")
    if spec is None or next_boot is NextBoot.MENU:
        return ipxe.menu_script(inv, base)
    if next_boot is NextBoot.LOCAL_DISK:
        if provisioner.settings.simulate_disk_boot:
            args = _kernel_args(provisioner, spec, "firstboot")
            return ipxe.install_script(inv, spec, base, kernel_args=args)
        return ipxe.local_disk_script()
    provisioner.fire_if_allowed(record, Event.PXE_BOOT, "http", {"script": "install"})
    args = _kernel_args(provisioner, spec, "install")
    return ipxe.install_script(inv, spec, base, kernel_args=args)
