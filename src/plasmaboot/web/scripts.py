"""The iPXE script a booting node gets: `boot.policy.NEXT_BOOT` decides from its state.

The script text comes from `render.ipxe` (the same code that renders the static files), so
the live server and the rendered files never disagree. This module adds what only the
live server knows: a one-time boot token on the installer's command line, and the
`pxe-boot` event when an install starts.

Who gets a boot token: when plasmaboot's DHCP leases addresses (full or reservation
mode), only a request from the address it leased to one of the node's MACs; any other
asker is refused (403) before anything is recorded. Without that (proxy DHCP, --no-dhcp)
whoever asks gets one; either way an install token is exchanged at most once per
provisioning cycle (provision/tokens.py), and once it was, the script says so (409)
instead of handing out tokens that would be refused. Fetching a script again records
nothing new: `pxe-boot` is fired only from the states that accept it.
"""

from __future__ import annotations

from plasmaboot.boot.paths import node_script_path
from plasmaboot.boot.policy import NEXT_BOOT, NextBoot
from plasmaboot.inventory import Node
from plasmaboot.lifecycle import Event, State
from plasmaboot.provision import Provisioner
from plasmaboot.provision.tokens import BootStage
from plasmaboot.render import ipxe
from plasmaboot.store import NodeRecord


class ScriptRefused(Exception):
    """The script would carry a boot token this request may not have; nothing was
    recorded. `status` is the HTTP status, `code` the /metrics reason label."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


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


def _kernel_args(provisioner: Provisioner, node: Node, stage: BootStage) -> str:
    token = provisioner.tokens.issue_boot(node.hostname, stage)
    base = provisioner.settings.http_base
    return f"plasmaboot.url={base} plasmaboot.token={token} plasmaboot.stage={stage.value}"


def _check_source(provisioner: Provisioner, record: NodeRecord, remote: str | None) -> None:
    """Refuse a token to anyone but the address plasmaboot's DHCP leased to the node."""
    if provisioner.leased_to(record, remote) is False:
        raise ScriptRefused(
            403,
            "not-leased-address",
            f"{record.hostname}'s boot token goes only to the address plasmaboot's DHCP "
            f"leased to it; {remote or 'this request'} is not that address (netboot the "
            "machine itself: DHCP, then this script)",
        )


def _install_withheld(provisioner: Provisioner, record: NodeRecord) -> None:
    """Refuse a token the lookup would refuse: the cycle's installer already called in."""
    if record.state is not State.PXE_BOOTING:
        raise ScriptRefused(
            409,
            "install-under-way",
            f"{record.hostname} is {record.state.value}: its installer already called in "
            "for this boot; its next netboot installs again once this install has failed",
        )
    if provisioner.tokens.cycle_spent(record):
        raise ScriptRefused(
            409,
            "cycle-spent",
            f"the installer of {record.hostname} already called in for this boot (one boot "
            "token exchange per provisioning cycle); its next netboot installs again once "
            "this boot has failed",
        )


def node_script(
    provisioner: Provisioner, record: NodeRecord, spec: Node | None, remote: str | None = None
) -> str:
    """The script for a known node asked for from `remote`; fires `pxe-boot` when an
    install starts. ScriptRefused when a token is withheld (nothing recorded then)."""
    inv = provisioner.inventory
    base = provisioner.settings.http_base
    next_boot = NEXT_BOOT[record.state]
    if next_boot is NextBoot.STOP:
        return stop_script(f"{record.hostname} is decommissioned; it will not be provisioned")
    if spec is None or next_boot is NextBoot.MENU:
        return ipxe.menu_script(inv, base)
    if next_boot is NextBoot.LOCAL_DISK:
        if provisioner.settings.simulate_disk_boot:
            _check_source(provisioner, record, remote)
            args = _kernel_args(provisioner, spec, BootStage.FIRSTBOOT)
            return ipxe.install_script(inv, spec, base, kernel_args=args)
        return ipxe.local_disk_script()
    _check_source(provisioner, record, remote)  # before pxe-boot: a refusal records nothing
    if provisioner.fire_if_allowed(record, Event.PXE_BOOT, "http", {"script": "install"}):
        record = provisioner.store.get_node(record.hostname) or record
    _install_withheld(provisioner, record)
    args = _kernel_args(provisioner, spec, BootStage.INSTALL)
    return ipxe.install_script(inv, spec, base, kernel_args=args)
