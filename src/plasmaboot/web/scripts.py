"""Which iPXE script a booting node gets, from its lifecycle state.

The script text itself comes from `render.ipxe` (the same code that renders the static
files), so the live server and the rendered files never disagree. This module only
decides: install, boot the disk, menu, or stop.
"""

from __future__ import annotations

from plasmaboot.inventory import Node
from plasmaboot.lifecycle import BOOTS_FROM_DISK, Event, State
from plasmaboot.provision import Provisioner
from plasmaboot.render import ipxe
from plasmaboot.store import NodeRecord

NODE_SCRIPT_PATH = "/boot/ipxe/node/{mac}.ipxe"

INSTALL_STATES = frozenset(
    {
        State.ENROLLED,
        State.PXE_BOOTING,
        State.BOOT_FAILED,
        State.INSTALL_FAILED,
        State.INSTALLER_BOOTED,
        State.INSTALLING,
    }
)
DISK_STATES = BOOTS_FROM_DISK | {State.INSTALLED}


def entry_script(http_base: str) -> str:
    """boot.ipxe: get an address (retrying), then chain to this machine's own script."""
    node_url = http_base + NODE_SCRIPT_PATH.format(mac="${net0/mac}")
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
    state = record.state
    if state is State.DECOMMISSIONED:
        return stop_script(f"{record.hostname} is decommissioned; it will not be provisioned")
    if spec is None:
        return ipxe.menu_script(inv, base)
    if state in DISK_STATES:
        if provisioner.settings.simulate_disk_boot:
            args = _kernel_args(provisioner, spec, "firstboot")
            return ipxe.install_script(inv, spec, base, kernel_args=args)
        return ipxe.local_disk_script()
    if state in INSTALL_STATES:
        provisioner.fire_if_allowed(record, Event.PXE_BOOT, "http", {"script": "install"})
        args = _kernel_args(provisioner, spec, "install")
        return ipxe.install_script(inv, spec, base, kernel_args=args)
    return ipxe.menu_script(inv, base)
