"""QEMU command lines for the three real firmware paths of the lab.

- bios: SeaBIOS + QEMU's iPXE option ROM: iPXE does DHCP itself, then the HTTP script.
- uefi: OVMF's own PXE client (no iPXE ROM: `romfile=`): DHCP arch 7 -> TFTP ipxe.efi ->
  iPXE -> DHCP again as iPXE -> HTTP script.
- uefi-http: OVMF HTTP Boot (arch 16, HTTPClient) -> ipxe.efi over HTTP -> iPXE.

TCG only: KVM is not dependable on the machines this runs on.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Firmware = Literal["bios", "uefi", "uefi-http"]
FIRMWARES: tuple[Firmware, ...] = ("bios", "uefi", "uefi-http")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
DISK_BYTES = 16 << 20


@dataclass(frozen=True)
class VmSpec:
    name: str
    mac: str
    tap: str
    firmware: Firmware
    workdir: Path
    memory_mb: int = 512

    @property
    def disk(self) -> Path:
        return self.workdir / f"{self.name}.disk"

    @property
    def console_log(self) -> Path:
        return self.workdir / f"{self.name}.console.log"

    @property
    def pid_file(self) -> Path:
        return self.workdir / f"{self.name}.pid"

    @property
    def vars_file(self) -> Path:
        return self.workdir / f"{self.name}.OVMF_VARS.fd"


def prepare(vm: VmSpec) -> None:
    """The VM's virtual disk (blank: the lab install writes its marker) and UEFI vars."""
    vm.workdir.mkdir(parents=True, exist_ok=True)
    if not vm.disk.exists():
        with vm.disk.open("wb") as disk:
            disk.truncate(DISK_BYTES)
    if vm.firmware != "bios" and not vm.vars_file.exists():
        shutil.copyfile(OVMF_VARS, vm.vars_file)


def qemu_argv(vm: VmSpec) -> list[str]:
    nic = f"virtio-net-pci,netdev=n0,mac={vm.mac},bootindex=1"
    if vm.firmware != "bios":
        nic += ",romfile="  # OVMF's own network stack, not QEMU's iPXE ROM
    argv = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-m", str(vm.memory_mb),
        "-name", vm.name,
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{vm.console_log}",
        "-pidfile", str(vm.pid_file),
        "-netdev", f"tap,id=n0,ifname={vm.tap},script=no,downscript=no",
        "-device", nic,
        "-drive", f"file={vm.disk},if=none,id=d0,format=raw",
        "-device", "virtio-blk-pci,drive=d0",
    ]  # fmt: skip
    if vm.firmware != "bios":
        argv += [
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={vm.vars_file}",
        ]  # fmt: skip
    if vm.firmware == "uefi-http":
        # Without both switches OVMF tries PXE over IPv4, then IPv6, before HTTP Boot.
        argv += [
            "-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no",
            "-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no",
        ]  # fmt: skip
    return argv
