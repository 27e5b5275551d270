"""Hardware facts of this machine, read from sysfs and procfs (no tools, no root needed
except for the DMI serial and UUID, which only root can read; unreadable ones are null).

Every reader takes the mount point of sysfs (`sys_root`, normally /sys) or procfs
(`proc_root`, normally /proc), so tests point it at a directory tree of the same layout.
The shape (every key always present, unknown values null) is what the server validates
(`HardwareFacts` in web/api.py) and stores; strings are cut at MAX_TEXT characters and
lists at MAX_ITEMS entries, the server's bounds, so an odd machine is never refused.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MAX_TEXT = 256
MAX_ITEMS = 64
SECTOR_BYTES = 512  # /sys/block/*/size counts 512-byte sectors whatever the disk's own

# Block devices that are not disks: loop, RAM disks, zram, optical drives, device-mapper,
# software RAID, network block devices. Anything else without a `device` link is virtual.
NOT_DISKS = re.compile(r"^(loop|ram|zram|sr|dm-|md|nbd)\d+$")
CPU_MODEL_KEYS = ("model name", "Model", "cpu model", "cpu")  # x86, arm, mips, ppc

Facts = dict[str, Any]


def read_text(path: Path) -> str | None:
    """A sysfs/procfs attribute without padding, or None when absent, unreadable or empty."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError:  # absent, root-only (DMI serial), or EINVAL (speed of a down link)
        return None
    text = text.replace("\x00", "").strip()
    return text[:MAX_TEXT] or None


def read_int(path: Path) -> int | None:
    text = read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def read_flag(path: Path) -> bool | None:
    value = read_int(path)
    return None if value is None else value != 0


def read_dmi(sys_root: Path) -> Facts:
    """Vendor, product, serial and UUID of the system board (null where unreadable)."""
    dmi = sys_root / "class/dmi/id"
    return {
        "vendor": read_text(dmi / "sys_vendor"),
        "product": read_text(dmi / "product_name"),
        "serial": read_text(dmi / "product_serial"),
        "uuid": read_text(dmi / "product_uuid"),
    }


def read_cpu(proc_root: Path) -> Facts:
    """The CPU model and the number of logical CPUs, from /proc/cpuinfo."""
    count = 0
    models: dict[str, str] = {}
    try:
        lines = (proc_root / "cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            continue
        if key == "processor":
            count += 1
        elif key in CPU_MODEL_KEYS and value.strip():
            models.setdefault(key, value.strip()[:MAX_TEXT])
    model = next((models[k] for k in CPU_MODEL_KEYS if k in models), None)
    return {"model": model, "count": count or None}


def read_memory_bytes(proc_root: Path) -> int | None:
    """MemTotal of /proc/meminfo in bytes (the kernel counts it in KiB and calls it kB)."""
    try:
        lines = (proc_root / "meminfo").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition(":")
        if key == "MemTotal":
            number, _, unit = value.strip().partition(" ")
            try:
                return int(number) * (1024 if unit.strip() == "kB" else 1)
            except ValueError:
                return None
    return None


def _vpd_serial(path: Path) -> str | None:
    """The unit serial number of a SCSI/SATA disk's VPD page 0x80."""
    try:
        page = path.read_bytes()
    except OSError:
        return None
    if len(page) < 4 or page[1] != 0x80:
        return None
    length = int.from_bytes(page[2:4], "big")
    text = page[4 : 4 + length].decode("ascii", errors="replace").replace("\x00", "").strip()
    return text[:MAX_TEXT] or None


def _disk_serial(block: Path) -> str | None:
    for candidate in (block / "device/serial", block / "serial"):  # NVMe, virtio
        serial = read_text(candidate)
        if serial:
            return serial
    vpd = _vpd_serial(block / "device/vpd_pg80")  # SCSI, SATA behind libata
    if vpd:
        return vpd
    return read_text(block / "device/wwid") or read_text(block / "wwid")


def read_disks(sys_root: Path) -> list[Facts]:
    """Disks under /sys/block: name, size in bytes, model, serial, rotational, removable."""
    disks: list[Facts] = []
    try:
        names = sorted(entry.name for entry in (sys_root / "block").iterdir())
    except OSError:
        return disks
    for name in names:
        block = sys_root / "block" / name
        if NOT_DISKS.match(name) or not (block / "device").exists():
            continue
        sectors = read_int(block / "size")
        disks.append(
            {
                "name": name[:MAX_TEXT],
                "size_bytes": sectors * SECTOR_BYTES if sectors is not None else None,
                "model": read_text(block / "device/model"),
                "serial": _disk_serial(block),
                "rotational": read_flag(block / "queue/rotational"),
                "removable": read_flag(block / "removable"),
            }
        )
    return disks[:MAX_ITEMS]


def _link(net: Path) -> str:
    operstate = read_text(net / "operstate")
    if operstate == "up":
        return "up"
    if operstate in (None, "unknown", "dormant"):  # drivers that do not track operstate
        return "up" if read_int(net / "carrier") == 1 else "down"
    return "down"


def read_nics(sys_root: Path) -> list[Facts]:
    """Physical NICs (not lo, not virtual: those have no `device` link): name, MAC, link
    up/down, speed in Mb/s (null when unknown: the kernel says -1 or refuses to read)."""
    nics: list[Facts] = []
    try:
        names = sorted(entry.name for entry in (sys_root / "class/net").iterdir())
    except OSError:
        return nics
    for name in names:
        net = sys_root / "class/net" / name
        if name == "lo" or not (net / "device").exists():
            continue
        mac = read_text(net / "address")
        speed = read_int(net / "speed")
        nics.append(
            {
                "name": name[:MAX_TEXT],
                "mac": mac.lower() if mac else None,
                "link": _link(net),
                "speed_mbps": speed if speed is not None and speed > 0 else None,
            }
        )
    return nics[:MAX_ITEMS]


def collect(sys_root: Path = Path("/sys"), proc_root: Path = Path("/proc")) -> Facts:
    """Every fact the agent reports, in the shape the server stores."""
    return {
        "system": read_dmi(sys_root),
        "cpu": read_cpu(proc_root),
        "memory_bytes": read_memory_bytes(proc_root),
        "disks": read_disks(sys_root),
        "nics": read_nics(sys_root),
    }


def summary(facts: Facts) -> str:
    """One console line: what the agent found."""
    system = " ".join(v for v in (facts["system"]["vendor"], facts["system"]["product"]) if v)
    memory = facts["memory_bytes"]
    parts = [
        system or "unknown system",
        f"{facts['cpu']['count'] or '?'} x {facts['cpu']['model'] or 'unknown CPU'}",
        f"{memory / 2**30:.1f} GiB" if memory else "memory unknown",
        f"{len(facts['disks'])} disk(s)",
        f"{len(facts['nics'])} NIC(s)",
    ]
    return ", ".join(parts)
