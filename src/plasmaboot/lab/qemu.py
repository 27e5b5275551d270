"""QEMU command lines for the three real firmware paths of the lab.

- bios: SeaBIOS + QEMU's iPXE option ROM: iPXE does DHCP itself, then the HTTP script.
- uefi: OVMF's own PXE client (no iPXE ROM: `romfile=`): DHCP arch 7 -> TFTP ipxe.efi ->
  iPXE -> DHCP again as iPXE -> HTTP script.
- uefi-http: OVMF HTTP Boot (arch 16, HTTPClient) -> ipxe.efi over HTTP -> iPXE.

TCG only: KVM is not dependable on the machines this runs on.

Network boot stays first in every VM's boot order (NIC `bootindex=1`), as on real servers;
the disk comes second (`bootindex=2`), reached when iPXE's local-disk script hands over
(BIOS: `sanboot` of drive 0x80; UEFI: `exit 1`, a failure, so the firmware tries its
next boot entry). A VM can also boot a kernel directly (`DirectBoot`), as the tests do
with the installer image.
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
DISK_BYTES = 16 << 20  # the miniature's marker disk
REAL_DISK_BYTES = 3 << 30  # sparse: a real install (lab/install.py) needs room for Debian
REAL_MEMORY_MB = 1024  # the installer initramfs unpacks into RAM; Debian then runs etcd


@dataclass(frozen=True)
class DirectBoot:
    """QEMU's -kernel/-initrd/-append: boots without firmware network boot."""

    kernel: Path
    initrd: Path
    append: str


@dataclass(frozen=True)
class VmSpec:
    name: str
    mac: str
    tap: str
    firmware: Firmware
    workdir: Path
    memory_mb: int = 512
    disk_bytes: int = DISK_BYTES
    direct: DirectBoot | None = None
    no_reboot: bool = False  # QEMU exits when the guest reboots

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
    """The VM's virtual disk (blank and sparse; kept between boots) and UEFI vars."""
    vm.workdir.mkdir(parents=True, exist_ok=True)
    if not vm.disk.exists():
        with vm.disk.open("wb") as disk:
            disk.truncate(vm.disk_bytes)
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
        # append: a power-on must not wipe the console of the boots before it
        "-chardev", f"file,id=console,path={vm.console_log},append=on",
        "-serial", "chardev:console",
        "-pidfile", str(vm.pid_file),
        "-netdev", f"tap,id=n0,ifname={vm.tap},script=no,downscript=no",
        "-device", nic,
        "-drive", f"file={vm.disk},if=none,id=d0,format=raw",
        "-device", "virtio-blk-pci,drive=d0,bootindex=2",
    ]  # fmt: skip
    if vm.direct is not None:
        argv += [
            "-kernel", str(vm.direct.kernel),
            "-initrd", str(vm.direct.initrd),
            "-append", vm.direct.append,
        ]  # fmt: skip
    if vm.no_reboot:
        argv.append("-no-reboot")
    if vm.firmware != "bios":
        argv += [
            "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,file={vm.vars_file}",
        ]  # fmt: skip
    if vm.firmware != "bios":
        # The lab boots over IPv4 only. Without this, OVMF also makes PXE and HTTP Boot
        # entries for IPv6 and, after iPXE `exit`s to boot the disk, sits out each one's
        # timeout (a minute or more) before it reaches the disk.
        argv += ["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no"]
    if vm.firmware == "uefi-http":
        # Without it OVMF tries PXE over IPv4 before HTTP Boot.
        argv += ["-fw_cfg", "name=opt/org.tianocore/IPv4PXESupport,string=no"]
    return argv
