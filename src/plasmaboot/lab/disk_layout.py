"""The installed lab disk, as text: partition table, boot loader entries, fstab.

One MBR partition table serves both firmware kinds:

- partition 1: FAT32 EFI system partition (type 0xef), marked active. It holds the kernel
  and initrd once, systemd-boot as `/EFI/BOOT/BOOTX64.EFI` (the removable-media path OVMF
  boots without any boot entry), and SYSLINUX (`/syslinux/`, its boot sector in the
  partition's first sector) for BIOS. Syslinux's `mbr.bin` in the disk's first 440 bytes
  boots the active partition.
- partition 2: ext4 root, the rest of the disk.

Everything here is a pure function of its arguments, so the unit tests check the text.
"""

from __future__ import annotations

SECTOR = 512
FIRST_SECTOR = 2048  # 1 MiB alignment, as every partitioning tool does today
ESP_MIB = 64
DISK_LABEL_ID = "0x504c4142"  # "PLAB"
ESP_LABEL = "PBBOOT"
ROOT_LABEL = "pb-root"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
LOADER_ENTRY = "plasmaboot-lab.conf"
SERIAL = "console=ttyS0,115200"
# systemd prints each unit's name on the serial console (the tests read
# "Reached target multi-user.target" there).
STATUS = "systemd.show_status=1 systemd.status_unit_format=combined"


def partition_table(esp_mib: int = ESP_MIB) -> str:
    """`sfdisk` input: an MBR table with the active ESP first and the root after it."""
    esp_sectors = esp_mib * (1 << 20) // SECTOR
    return (
        "label: dos\n"
        f"label-id: {DISK_LABEL_ID}\n"
        "unit: sectors\n"
        "\n"
        f"start={FIRST_SECTOR}, size={esp_sectors}, type=ef, bootable\n"
        f"start={FIRST_SECTOR + esp_sectors}, type=83\n"
    )


def partition_device(disk: str, number: int) -> str:
    """`/dev/vda` -> `/dev/vda1`; `/dev/nvme0n1` -> `/dev/nvme0n1p1` (the kernel's names)."""
    return f"{disk}{'p' if disk[-1:].isdigit() else ''}{number}"


def kernel_options(root_uuid: str) -> str:
    return f"root=UUID={root_uuid} rw {SERIAL} {STATUS}"


def loader_conf() -> str:
    """systemd-boot's `/loader/loader.conf`: boot the lab entry at once, no menu."""
    return f"default {LOADER_ENTRY}\ntimeout 0\nconsole-mode keep\neditor no\n"


def loader_entry(root_uuid: str, title: str = "PlasmaCloud lab (Debian 12)") -> str:
    """systemd-boot's `/loader/entries/plasmaboot-lab.conf` (Boot Loader Specification)."""
    return (
        f"title {title}\nlinux /{KERNEL}\ninitrd /{INITRD}\noptions {kernel_options(root_uuid)}\n"
    )


def syslinux_cfg(root_uuid: str) -> str:
    """SYSLINUX's `/syslinux/syslinux.cfg`: the same kernel, initrd and options for BIOS."""
    return (
        f"SERIAL 0 115200\n"
        "DEFAULT plasmaboot\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL plasmaboot\n"
        f"  LINUX /{KERNEL}\n"
        f"  INITRD /{INITRD}\n"
        f"  APPEND {kernel_options(root_uuid)}\n"
    )


def fstab(root_uuid: str) -> str:
    # passno 0: no fsck at boot (the filesystem was just made; fsck is slow under TCG)
    return f"UUID={root_uuid} / ext4 rw,noatime,errors=remount-ro 0 0\n"
