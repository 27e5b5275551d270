"""The boot decision: client facts + node state -> what DHCP offers and what iPXE runs.

Pure and in one place, so DHCP, TFTP, HTTP and the rendered files never disagree and the
tables are tested without sockets. `NEXT_BOOT` says, per lifecycle state, what a node's
next network boot does; `dhcp_boot` what its DHCP reply carries.

Architecture numbers follow the IANA "Processor Architecture Types" registry (RFC 4578
section 2.1 and its updates). The network reference calls 6 and 9 "HTTP boot"; they are
x86 UEFI and EBC/x64 UEFI PXE. HTTP boot is 15 (x86), 16 (x64) and 19 (arm64), announced
with vendor class "HTTPClient".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from plasmaboot.boot.paths import ENTRY_SCRIPT_PATH, ipxe_binary_path
from plasmaboot.lifecycle import BOOTS_FROM_DISK, State

HTTP_BOOT_ARCHES = frozenset({15, 16, 19})

# arch (option 93) -> iPXE binary served over TFTP (or HTTP for HTTP-boot arches).
DEFAULT_BOOTFILES: dict[int, str] = {
    0: "undionly.kpxe",  # x86 BIOS
    6: "ipxe-i386.efi",  # x86 UEFI
    7: "ipxe.efi",  # x64 UEFI
    9: "ipxe.efi",  # EBC; x64 UEFI firmware that sends 9
    10: "ipxe-arm32.efi",  # ARM32 UEFI
    11: "ipxe-arm64.efi",  # ARM64 UEFI
    15: "ipxe-i386.efi",  # x86 UEFI HTTP
    16: "ipxe.efi",  # x64 UEFI HTTP
    19: "ipxe-arm64.efi",  # ARM64 UEFI HTTP
}
FALLBACK_BOOTFILE = "ipxe.efi"


class NextBoot(StrEnum):
    INSTALL = "install"  # the installer image, with a one-time boot token
    LOCAL_DISK = "local-disk"  # hand over to the installed OS on the local disk
    MENU = "menu"  # a machine the inventory does not describe waits for an operator
    STOP = "stop"  # decommissioned: never provisioned again


S = State
# What a node's next network boot does, per lifecycle state. `installed` already boots the
# disk: the install is done and the installed OS must get the chance to confirm it.
NEXT_BOOT: dict[State, NextBoot] = {
    S.DISCOVERED: NextBoot.MENU,
    **{s: NextBoot.INSTALL for s in (S.ENROLLED, S.PXE_BOOTING, S.BOOT_FAILED,
                                     S.INSTALL_FAILED, S.INSTALLER_BOOTED, S.INSTALLING)},
    **{s: NextBoot.LOCAL_DISK for s in (S.INSTALLED, *BOOTS_FROM_DISK)},
    S.DECOMMISSIONED: NextBoot.STOP,
}  # fmt: skip


class BootKind(StrEnum):
    TFTP = "tftp"  # a firmware PXE client: send the iPXE binary's TFTP name
    HTTP = "http"  # a UEFI HTTP-boot client: send the iPXE binary's URL
    IPXE_SCRIPT = "ipxe-script"  # iPXE is already running: send the entry script URL
    NONE = "none"  # no boot file: the firmware moves on to its local disk


@dataclass(frozen=True)
class ClientFacts:
    mac: str
    arch: int | None = None  # option 93
    vendor_class: str | None = None  # option 60
    is_ipxe: bool = False  # user-class "iPXE" or option 175 present


@dataclass(frozen=True)
class BootDecision:
    kind: BootKind
    filename: str | None
    vendor_class: str | None  # option 60 to send back: "HTTPClient" for HTTP boot only
    reason: str


def is_http_boot(facts: ClientFacts) -> bool:
    vendor = facts.vendor_class or ""
    return vendor.startswith("HTTPClient") or facts.arch in HTTP_BOOT_ARCHES


def bootfile_for(arch: int | None, overrides: dict[str, str] | None = None) -> tuple[str, str]:
    """The iPXE binary for an architecture (node overrides first) and why it was chosen."""
    key = str(arch if arch is not None else 0)
    if overrides and key in overrides:
        return overrides[key], f"node override for arch {key}"
    if arch is None:
        return DEFAULT_BOOTFILES[0], "no option 93: treated as BIOS (RFC 4578 clients send it)"
    if arch in DEFAULT_BOOTFILES:
        return DEFAULT_BOOTFILES[arch], f"arch {arch}"
    return FALLBACK_BOOTFILE, f"unknown arch {arch}: defaulting to {FALLBACK_BOOTFILE}"


def dhcp_boot(
    facts: ClientFacts,
    state: State | None,
    http_base: str,
    *,
    overrides: dict[str, str] | None = None,
    chain_when_on_disk: bool = False,
) -> BootDecision:
    """What to put in a DHCP reply's boot fields for this client.

    `state` is None for a machine the inventory does not know: it still gets iPXE, whose
    script then shows the menu or enrols it. A node whose installed OS has confirmed its
    first boot gets no boot file, so its firmware boots the disk and it never netboot-loops;
    `chain_when_on_disk` instead chains it to iPXE, whose script then exits to the disk
    (for firmware that cannot fall through, and for the lab's simulated disk).
    """
    if state is State.DECOMMISSIONED:
        return BootDecision(BootKind.NONE, None, None, "decommissioned: no netboot")
    on_disk = state in BOOTS_FROM_DISK
    if on_disk and not chain_when_on_disk and not facts.is_ipxe:
        return BootDecision(BootKind.NONE, None, None, f"{state}: boots from its local disk")
    if facts.is_ipxe:
        return BootDecision(
            BootKind.IPXE_SCRIPT,
            f"{http_base}{ENTRY_SCRIPT_PATH}",
            None,
            "iPXE client: HTTP entry script",
        )
    bootfile, why = bootfile_for(facts.arch, overrides)
    if is_http_boot(facts):
        return BootDecision(
            BootKind.HTTP, http_base + ipxe_binary_path(bootfile), "HTTPClient", f"HTTP boot, {why}"
        )
    # No option 60 here: EDK2 reads a full-DHCP offer that says "PXEClient" without PXE
    # option 43 as a BINL offer and goes to port 4011 instead of booting the file named.
    # ProxyDHCP replies add PXEClient and option 43 themselves.
    return BootDecision(BootKind.TFTP, bootfile, None, f"PXE, {why}")
