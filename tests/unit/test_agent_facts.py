"""Hardware facts from sysfs/procfs, read from trees laid out as the kernel lays them out
(class/ and block/ entries are symlinks into devices/, `device` links point at the parent
device), and once from this machine's real /sys and /proc."""

from __future__ import annotations

import os
from pathlib import Path

from plasmaboot.agent import facts

PCI = "devices/pci0000:00"
SATA = f"{PCI}/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0"
USB = f"{PCI}/0000:00:14.0/usb1/1-1/1-1:1.0/host6/target6:0:0/6:0:0:0"
NVME = f"{PCI}/0000:00:1d.0/nvme/nvme0"
VIRTIO_BLK = f"{PCI}/0000:00:04.0/virtio1"
OPTICAL = f"{PCI}/0000:00:1f.2/ata2/host1/target1:0:0/1:0:0:0"
ENO1 = f"{PCI}/0000:18:00.0"
ENO2 = f"{PCI}/0000:18:00.1"
VIRTIO_NET = f"{PCI}/0000:00:03.0/virtio2"

CPUINFO_X86 = "".join(
    f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold "
    f"6230 CPU @ 2.10GHz\nflags\t\t: fpu vme\n\n"
    for n in range(4)
)
CPUINFO_ARM = (
    "".join(f"processor\t: {n}\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\n\n" for n in range(2))
    + "Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
)
MEMINFO = "MemTotal:       16318480 kB\nMemFree:         1034452 kB\n"


def vpd_pg80(serial: str) -> bytes:
    """SCSI VPD page 0x80 (unit serial number) as the kernel exposes it."""
    data = serial.encode()
    return bytes([0, 0x80, 0, len(data)]) + data


def put(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def link(root: Path, name: str, target: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def block_device(sys: Path, name: str, parent: str | None, files: dict[str, str | bytes]) -> None:
    """/sys/block/NAME -> the device's directory, with `device` -> its parent device."""
    home = f"{parent}/block/{name}" if parent else f"devices/virtual/block/{name}"
    put(sys, {f"{home}/{key}": value for key, value in files.items()})
    if parent:
        link(sys, f"{home}/device", os.path.relpath(sys / parent, sys / home))
    link(sys, f"block/{name}", f"../{home}")


def net_device(sys: Path, name: str, parent: str | None, files: dict[str, str]) -> None:
    home = f"{parent}/net/{name}" if parent else f"devices/virtual/net/{name}"
    put(sys, {f"{home}/{key}": value for key, value in files.items()})
    if parent:
        link(sys, f"{home}/device", os.path.relpath(sys / parent, sys / home))
    link(sys, f"class/net/{name}", f"../../{home}")


def build_machine(root: Path) -> tuple[Path, Path]:
    """A server: DMI, 4 CPUs, 16 GB, SATA + NVMe + virtio + USB disks, three NICs, and the
    block and net devices that are not hardware (loop, dm, zram, md, nbd, ram, optical;
    lo, a bridge, a veth)."""
    sys, proc = root / "sys", root / "proc"
    put(
        sys,
        {
            "devices/virtual/dmi/id/sys_vendor": "Supermicro\n",
            "devices/virtual/dmi/id/product_name": "SYS-1029P-WTR\n",
            "devices/virtual/dmi/id/product_uuid": "00000000-0000-0000-0000-ac1f6b000001\n",
        },
    )
    # product_serial is root-only (0400) on a real machine; the tests run as root, which
    # reads any mode, so a directory in its place stands in for "cannot be read".
    (sys / "devices/virtual/dmi/id/product_serial").mkdir()
    link(sys, "class/dmi/id", "../../devices/virtual/dmi/id")
    put(sys, {f"{SATA}/model": "ST4000NM0035-1V4\n", f"{SATA}/vpd_pg80": vpd_pg80("ZC1ABC23")})
    put(sys, {f"{SATA}/wwid": "t10.ATA     ST4000NM0035-1V4    ZC1ABC23\n"})
    block_device(
        sys, "sda", SATA, {"size": "7814037168\n", "removable": "0\n", "queue/rotational": "1\n"}
    )
    put(
        sys,
        {
            f"{NVME}/model": "Samsung SSD 980 PRO 1TB                 \n",
            f"{NVME}/serial": "S5GXNF0R123456      \n",
        },
    )
    block_device(
        sys,
        "nvme0n1",
        NVME,
        {
            "size": "1953525168\n",
            "removable": "0\n",
            "queue/rotational": "0\n",
            "wwid": "eui.0025385\n",
        },
    )
    put(sys, {f"{VIRTIO_BLK}/vendor": "0x1af4\n"})
    block_device(
        sys,
        "vda",
        VIRTIO_BLK,
        {"size": "20971520\n", "removable": "0\n", "queue/rotational": "1\n", "serial": "disk-1\n"},
    )
    put(sys, {f"{USB}/model": "Cruzer Blade    \n"})
    block_device(
        sys, "sdb", USB, {"size": "30031872\n", "removable": "1\n", "queue/rotational": "1\n"}
    )
    put(sys, {f"{OPTICAL}/model": "DVD-ROM\n"})
    block_device(sys, "sr0", OPTICAL, {"size": "2097151\n", "removable": "1\n"})
    for virtual in ("loop0", "dm-0", "zram0", "md127", "nbd0", "ram0"):
        block_device(sys, virtual, None, {"size": "8\n", "removable": "0\n"})
    net_device(
        sys,
        "eno1",
        ENO1,
        {
            "address": "ac:1f:6b:00:00:01\n",
            "operstate": "up\n",
            "carrier": "1\n",
            "speed": "10000\n",
        },
    )
    # a down link: the kernel refuses to read carrier and speed (EINVAL): no such files here
    net_device(sys, "eno2", ENO2, {"address": "AC:1F:6B:00:00:02\n", "operstate": "down\n"})
    net_device(
        sys,
        "ens3",
        VIRTIO_NET,
        {
            "address": "52:54:00:12:34:56\n",
            "operstate": "unknown\n",
            "carrier": "1\n",
            "speed": "-1\n",
        },
    )
    net_device(sys, "lo", None, {"address": "00:00:00:00:00:00\n", "operstate": "unknown\n"})
    net_device(sys, "br0", None, {"address": "ac:1f:6b:00:00:01\n", "operstate": "up\n"})
    net_device(sys, "veth1a2b", None, {"address": "ee:00:00:00:00:01\n", "operstate": "up\n"})
    put(proc, {"cpuinfo": CPUINFO_X86, "meminfo": MEMINFO})
    return sys, proc


def test_collect_reads_every_fact_from_a_server_tree(tmp_path: Path) -> None:
    sys, proc = build_machine(tmp_path)
    assert facts.collect(sys, proc) == {
        "system": {
            "vendor": "Supermicro",
            "product": "SYS-1029P-WTR",
            "serial": None,
            "uuid": "00000000-0000-0000-0000-ac1f6b000001",
        },
        "cpu": {"model": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz", "count": 4},
        "memory_bytes": 16318480 * 1024,
        "disks": [
            {
                "name": "nvme0n1",
                "size_bytes": 1953525168 * 512,
                "model": "Samsung SSD 980 PRO 1TB",
                "serial": "S5GXNF0R123456",
                "rotational": False,
                "removable": False,
            },
            {
                "name": "sda",
                "size_bytes": 7814037168 * 512,
                "model": "ST4000NM0035-1V4",
                "serial": "ZC1ABC23",
                "rotational": True,
                "removable": False,
            },
            {
                "name": "sdb",
                "size_bytes": 30031872 * 512,
                "model": "Cruzer Blade",
                "serial": None,
                "rotational": True,
                "removable": True,
            },
            {
                "name": "vda",
                "size_bytes": 20971520 * 512,
                "model": None,
                "serial": "disk-1",
                "rotational": True,
                "removable": False,
            },
        ],
        "nics": [
            {"name": "eno1", "mac": "ac:1f:6b:00:00:01", "link": "up", "speed_mbps": 10000},
            {"name": "eno2", "mac": "ac:1f:6b:00:00:02", "link": "down", "speed_mbps": None},
            {"name": "ens3", "mac": "52:54:00:12:34:56", "link": "up", "speed_mbps": None},
        ],
    }


def test_dmi_is_all_null_without_dmi(tmp_path: Path) -> None:
    """ARM boards and some VMs have no /sys/class/dmi at all."""
    assert facts.read_dmi(tmp_path) == dict.fromkeys(("vendor", "product", "serial", "uuid"))


def test_cpu_model_on_arm_and_an_unreadable_cpuinfo(tmp_path: Path) -> None:
    put(tmp_path, {"cpuinfo": CPUINFO_ARM})
    assert facts.read_cpu(tmp_path) == {"model": "Raspberry Pi 4 Model B Rev 1.4", "count": 2}
    assert facts.read_cpu(tmp_path / "absent") == {"model": None, "count": None}


def test_memory_is_memtotal_in_bytes_or_null(tmp_path: Path) -> None:
    put(tmp_path, {"meminfo": MEMINFO})
    assert facts.read_memory_bytes(tmp_path) == 16710123520
    put(tmp_path, {"meminfo": "MemFree: 5 kB\n"})
    assert facts.read_memory_bytes(tmp_path) is None


def test_wwid_is_the_serial_when_nothing_better_is_there(tmp_path: Path) -> None:
    parent = f"{PCI}/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0"
    put(
        tmp_path,
        {
            f"{parent}/wwid": "naa.5000c500a1b2c3d4\n",
            f"{parent}/vpd_pg80": bytes([0, 0x83, 0, 2]) + b"xx",
        },
    )
    block_device(tmp_path, "sdc", parent, {"size": "0\n"})
    (disk,) = facts.read_disks(tmp_path)
    assert disk["serial"] == "naa.5000c500a1b2c3d4"  # not page 0x83 read as page 0x80
    assert disk["size_bytes"] == 0 and disk["rotational"] is None and disk["model"] is None


def test_long_strings_and_many_devices_are_cut_to_the_servers_bounds(tmp_path: Path) -> None:
    for n in range(facts.MAX_ITEMS + 6):
        name = f"eth{n:03d}"
        net_device(
            tmp_path,
            name,
            f"{PCI}/0000:20:00.{n}",
            {"address": f"02:00:00:00:00:{n:02x}\n", "operstate": "up\n"},
        )
    put(tmp_path, {"class/dmi/id/sys_vendor": "V" * 1000 + "\n"})
    nics = facts.read_nics(tmp_path)
    assert len(nics) == facts.MAX_ITEMS and nics[0]["name"] == "eth000"
    assert facts.read_dmi(tmp_path)["vendor"] == "V" * facts.MAX_TEXT


def test_summary_is_one_readable_line(tmp_path: Path) -> None:
    sys, proc = build_machine(tmp_path)
    assert facts.summary(facts.collect(sys, proc)) == (
        "Supermicro SYS-1029P-WTR, 4 x Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz, 15.6 GiB, "
        "4 disk(s), 3 NIC(s)"
    )


def test_this_machines_real_sys_and_proc() -> None:
    real = facts.collect()
    assert real["cpu"]["count"] >= len(os.sched_getaffinity(0)) >= 1
    # MemTotal is the kernel's totalram, which sysconf reports as physical pages
    assert real["memory_bytes"] == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") > 0
    names = {nic["name"] for nic in real["nics"]}
    assert "lo" not in names
    for name in os.listdir("/sys/class/net"):
        physical = os.path.exists(f"/sys/class/net/{name}/device") and name != "lo"
        assert (name in names) == physical, name
    for disk in real["disks"]:
        assert not facts.NOT_DISKS.match(disk["name"])
        assert os.path.exists(f"/sys/block/{disk['name']}/device")
        assert disk["size_bytes"] == int(Path(f"/sys/block/{disk['name']}/size").read_text()) * 512
