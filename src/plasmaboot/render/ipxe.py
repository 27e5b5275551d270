"""iPXE scripts: the static boot.ipxe menu, per-node install scripts, local-disk boot.

These are pure functions of the inventory so that `plasmaboot serve` (dynamic scripts) and
the `ipxe` render target (static files for nginx) hand out byte-identical scripts.
"""

from __future__ import annotations

import re

from plasmaboot.boot.paths import IPXE_DIR, NODE_SCRIPT_DIR, image_path
from plasmaboot.inventory.models import Inventory, Node, Profile
from plasmaboot.render.common import HEADER, Files, RenderContext
from plasmaboot.render.common import (
    base_url as server_base_url,
)

MENU_TIMEOUT_MS = 30_000
DOWNLOAD_ATTEMPTS = 5
RETRY_DELAY_S = 5
SERIAL_CONSOLE = "console=ttyS0,115200"
INITRD_NAME = "initrd"


def _label(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _text(value: str) -> str:
    """iPXE expands ${...} and splits on quotes; free text must contain neither."""
    return re.sub(r"[${}'\"\n]", "", value)


def _cmdline(inv: Inventory, profile: Profile, extra: str = "") -> str:
    """The image's arguments, a serial console unless one is given, and `extra`."""
    args = inv.images[profile.image].cmdline.split()
    if not any(arg.startswith("console=ttyS") for arg in args):
        args.insert(0, SERIAL_CONSOLE)
    return " ".join([*args, *extra.split()])


def _profile_block(inv: Inventory, name: str, profile: Profile, base_url: str) -> list[str]:
    image = inv.images[profile.image]
    return [
        f":profile-{_label(name)}",
        f"echo Netbooting profile {_text(name)} (role {profile.role})",
        f"set kernel-url {base_url}{image_path(image.kernel)}",
        f"set initrd-url {base_url}{image_path(image.initrd)}",
        f"set cmdline {_cmdline(inv, profile)}",
        "goto netboot",
    ]


def _netboot_block() -> list[str]:
    """Download kernel and initrd with bounded retries, then boot; shell or reboot on failure.

    `initrd=initrd` on the kernel line names the initrd for the EFI stub; the BIOS build
    ignores it, the EFI build cannot find the initrd without it.
    """
    lines: list[str] = []
    for step, command, success in (
        (
            "kernel",
            f"kernel ${{kernel-url}} initrd={INITRD_NAME} ${{cmdline}} ${{node-args}}",
            "initrd-start",
        ),
        ("initrd", f"initrd --name {INITRD_NAME} ${{initrd-url}}", "boot"),
    ):
        lines += [
            f":{step}-start" if step == "initrd" else ":netboot",
            "set attempt:int32 0",
            f":{step}-retry",
            f"{command} && goto {success} ||",
            "inc attempt",
            f"iseq ${{attempt}} {DOWNLOAD_ATTEMPTS} && goto failed ||",
            f"echo {step} download failed (attempt ${{attempt}}/{DOWNLOAD_ATTEMPTS}), "
            f"retrying in {RETRY_DELAY_S}s",
            f"sleep {RETRY_DELAY_S}",
            f"goto {step}-retry",
        ]
    lines += [
        ":boot",
        "boot || goto failed",
        ":failed",
        "echo Netboot failed (${errno}): check the /boot/ tree and the log of the server",
        "prompt --timeout 10000 Press a key for the iPXE shell, or wait to reboot && goto shell ||",
        "reboot",
        ":shell",
        "shell",
        "reboot",
    ]
    return lines


def _script(lines: list[str]) -> str:
    return "\n".join(["#!ipxe", f"# {HEADER}", *lines]) + "\n"


def menu_script(inv: Inventory, base_url: str) -> str:
    """boot.ipxe: known MACs boot their node's profile, others get a menu (local disk default)."""
    lines = [
        f"# Cluster {inv.cluster.name}: known MACs are selected automatically.",
        f"set base-url {base_url}",
        "clear node-args",
    ]
    for node in inv.nodes:
        for mac in node.macs:
            lines.append(f"iseq ${{net0/mac}} {mac} && goto node-{node.hostname} ||")
    lines.append("goto menu")
    for node in inv.nodes:
        lines += [
            f":node-{node.hostname}",
            f"echo {node.hostname} ({inv.fqdn(node)}): profile {_text(node.profile)}",
            f"set node-args plasmaboot.node={node.hostname}",
            f"goto profile-{_label(node.profile)}",
        ]
    lines += [
        ":menu",
        f"menu PlasmaCloud netboot: cluster {inv.cluster.name} (MAC ${{net0/mac}})",
        "item --gap -- Profiles",
    ]
    for name, profile in inv.profiles.items():
        text = f"{name}: {profile.description}" if profile.description else name
        lines.append(f"item profile-{_label(name)} {_text(text)}")
    lines += [
        "item --gap -- Other",
        "item local Boot from the local disk",
        "item shell iPXE shell",
        "item reboot Reboot",
        f"choose --timeout {MENU_TIMEOUT_MS} --default local target || goto local",
        "goto ${target}",
    ]
    for name, profile in inv.profiles.items():
        lines += _profile_block(inv, name, profile, "${base-url}")
    lines += _netboot_block()
    lines += [":local", *_local_disk_lines(), ":reboot", "reboot"]
    return _script(lines)


def install_script(inv: Inventory, node: Node, base_url: str, *, kernel_args: str = "") -> str:
    """The script for one known node: its profile's kernel and initrd, no menu."""
    profile = inv.profiles[node.profile]
    args = f"plasmaboot.node={node.hostname} {kernel_args}".strip()
    lines = [
        f"# {node.hostname} ({inv.fqdn(node)}): profile {_text(node.profile)}",
        f"set node-args {args}",
        f"goto profile-{_label(node.profile)}",
        *_profile_block(inv, node.profile, profile, base_url),
        *_netboot_block(),
    ]
    return _script(lines)


def _local_disk_lines() -> list[str]:
    """`sanboot` the first BIOS disk; where that fails (always under UEFI): `exit 1`.

    The exit status must be non-zero: UEFI firmware (EDK2/OVMF) treats a boot option that
    returns success as done and opens its boot manager menu, while an error makes it try
    the next entry of its boot order, the disk. BIOS tries the next device either way.
    """
    return [
        "echo Booting from the local disk",
        "sanboot --no-describe --drive 0x80 || goto local-failed",
        ":local-failed",
        "echo Handing back to the firmware boot order (next entry: the local disk)",
        "exit 1",
    ]


def local_disk_script() -> str:
    """Boot the local disk: the firmware's next boot entry gets it (see above)."""
    return _script(_local_disk_lines())


def render_ipxe(inv: Inventory, ctx: RenderContext) -> Files:
    """boot.ipxe plus node/<mac>.ipxe per NIC, laid out like the server's /boot/ipxe/."""
    base = server_base_url(inv)
    files: Files = {"boot.ipxe": menu_script(inv, base), "local.ipxe": local_disk_script()}
    node_dir = NODE_SCRIPT_DIR.removeprefix(IPXE_DIR + "/")
    for node in inv.nodes:
        script = install_script(inv, node, base)
        for mac in node.macs:
            files[f"{node_dir}/{mac}.ipxe"] = script
    return files
