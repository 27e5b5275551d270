"""The lab image boots in QEMU and drives the real HTTP side of `plasmaboot serve`.

Each boot does what iPXE would: fetch the node's script from the server (the real aiohttp
app on loopback) and boot the lab kernel and initrd with the script's kernel arguments
(QEMU direct kernel boot, TCG: KVM is not dependable here). The guest reaches the
host's loopback as 10.0.2.2 through QEMU user networking, so nothing leaves this machine.
Every lifecycle state asserted below was reported by the VM itself; the disk image carries
the install marker from one boot to the next, as a real disk would.
"""

from __future__ import annotations

import asyncio
import gzip
import lzma
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from plasmaboot.inventory import load_inventory
from plasmaboot.lab.image import (
    DEFAULT_WORK_DIR,
    MODULES,
    LabImage,
    build_lab_image,
    find_module,
    module_bytes,
)
from plasmaboot.lifecycle import Event, State
from plasmaboot.provision import Provisioner, ProvisionerSettings
from plasmaboot.store import SqliteStore
from plasmaboot.web.app import build_app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QEMU = "qemu-system-x86_64"
MAC = "52:54:00:12:34:56"
PORTS = range(17300, 17400)
BOOT_TIMEOUT_S = 180
DISK_BYTES = 4 << 20
GUEST_HOST = "10.0.2.2"  # QEMU user networking's name for the host's loopback


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package for it: see `make deps`)")
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built image, laid out as serve's assets dir (`lab/vmlinuz`, `lab/initrd`)."""
    need(QEMU)
    out = tmp_path_factory.mktemp("assets")
    build_lab_image(out, work_dir=DEFAULT_WORK_DIR)
    return out


@dataclass
class LabServer:
    provisioner: Provisioner
    loopback_base: str
    guest_base: str
    workdir: Path
    assets: Path

    @property
    def store(self) -> SqliteStore:
        store = self.provisioner.store
        assert isinstance(store, SqliteStore)
        return store

    def state(self) -> State:
        node = self.store.get_node("node01")
        assert node is not None
        return node.state

    def last_event_id(self) -> int:
        events = self.store.events("node01")
        return events[-1].id if events else 0

    def events_after(self, mark: int) -> list[str]:
        return [e.event for e in self.store.events("node01", after=mark)]

    async def fetch_boot(self) -> Boot:
        """The node's script, as iPXE fetches it: its kernel arguments with the built image."""
        async with aiohttp.ClientSession() as http:
            url = f"{self.loopback_base}/boot/ipxe/node/{MAC}.ipxe"
            async with http.get(url) as response:
                assert response.status == 200
                script = await response.text()
        sets = dict(re.findall(r"^set (\S+) (.*)$", script, re.MULTILINE))
        append = f"initrd=initrd {sets['cmdline']} {sets['node-args']}"
        return Boot(self.assets / "lab/vmlinuz", self.assets / "lab/initrd", append)

    async def netboot(self, disk: Path, label: str) -> str:
        """Boot as iPXE would with this node's script; the serial console's text."""
        boot = await self.fetch_boot()
        return await run_vm(boot, disk, self.workdir / label)


@dataclass(frozen=True)
class Boot:
    kernel: Path
    initrd: Path
    append: str


async def run_vm(boot: Boot, disk: Path, log_stem: Path) -> str:
    log = log_stem.with_suffix(".console.log")
    argv = [
        QEMU, "-accel", "tcg", "-m", "512", "-display", "none", "-nodefaults", "-no-reboot",
        "-monitor", "none", "-serial", f"file:{log}",
        "-kernel", str(boot.kernel), "-initrd", str(boot.initrd), "-append", boot.append,
        "-drive", f"file={disk},if=virtio,format=raw",
        "-netdev", "user,id=n0", "-device", f"virtio-net-pci,netdev=n0,mac={MAC}",
    ]  # fmt: skip
    vm = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, stderr = await asyncio.wait_for(vm.communicate(), BOOT_TIMEOUT_S)
    except TimeoutError:
        vm.kill()
        await vm.wait()
        console = log.read_text(errors="replace") if log.exists() else ""
        pytest.fail(f"the VM did not power off in {BOOT_TIMEOUT_S} s; console:\n{console}")
    console = log.read_text(errors="replace")
    assert vm.returncode == 0, f"qemu exited {vm.returncode}: {stderr.decode()}\n{console}"
    return console


@pytest.fixture
async def server(assets: Path, tmp_path: Path) -> AsyncIterator[LabServer]:
    """The real HTTP side of serve (the app `plasmaboot serve` runs) on a loopback port."""
    inventory = load_inventory(ROOT / "examples/lab/miniature.yaml")
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(inventory)
    for port in PORTS:
        settings = ProvisionerSettings(
            state_dir=tmp_path,
            assets_dir=assets,
            tftp_root=Path("/usr/lib/ipxe"),
            http_base=f"http://{GUEST_HOST}:{port}",
            simulate_disk_boot=True,
        )
        provisioner = Provisioner(inventory, store, settings)
        runner = web.AppRunner(build_app(provisioner, "admin-secret", list))
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", port).start()
        except OSError:
            await runner.cleanup()
            continue
        yield LabServer(
            provisioner, f"http://127.0.0.1:{port}", settings.http_base, tmp_path, assets
        )
        await runner.cleanup()
        store.close()
        return
    pytest.fail(f"no free loopback port in {PORTS.start}-{PORTS.stop - 1}")


def blank_disk(path: Path) -> Path:
    with path.open("wb") as disk:
        disk.truncate(DISK_BYTES)
    return path


async def test_install_then_first_boot_then_disk_boot_reach_active(server: LabServer) -> None:
    disk = blank_disk(server.workdir / "node01.disk")

    mark = server.last_event_id()
    console = await server.netboot(disk, "install")
    assert server.events_after(mark) == [
        "pxe-boot",
        "installer-booted",
        "install-started",
        "installed",
    ], console
    assert server.state() is State.INSTALLED
    assert disk.read_bytes()[:512].rstrip(b"\0") == b"plasmaboot-lab-installed node01\n"
    assert "plasmaboot-lab: rebooting into the installed system" in console

    mark = server.last_event_id()
    console = await server.netboot(disk, "firstboot")
    assert server.events_after(mark) == ["first-boot", "join-started", "joined"], console
    assert server.state() is State.ACTIVE
    assert disk.read_bytes()[512:1024].rstrip(b"\0") == b"plasmaboot-lab-joined node01\n"

    mark = server.last_event_id()
    console = await server.netboot(disk, "diskboot")
    events = server.store.events("node01", after=mark)
    assert [(e.event, e.from_state, e.to_state) for e in events] == [
        ("booted-from-disk", "active", "active")
    ], console
    assert server.state() is State.ACTIVE


async def test_first_boot_without_install_marker_reports_failed(server: LabServer) -> None:
    await server.netboot(blank_disk(server.workdir / "node01.disk"), "install")
    assert server.state() is State.INSTALLED
    wiped = blank_disk(server.workdir / "node01.disk")  # the "installed" disk lost its OS

    mark = server.last_event_id()
    console = await server.netboot(wiped, "firstboot")
    events = server.store.events("node01", after=mark)
    assert [e.event for e in events] == ["fail"], console
    assert "no install marker for node01" in str(events[0].detail["reason"])
    assert server.state() is State.JOIN_FAILED
    assert "plasmaboot-lab: powering off" in console


async def test_replayed_boot_token_is_refused_and_changes_nothing(server: LabServer) -> None:
    disk = blank_disk(server.workdir / "node01.disk")
    install = await server.fetch_boot()
    await run_vm(install, disk, server.workdir / "install")
    assert server.state() is State.INSTALLED

    mark = server.last_event_id()
    console = await run_vm(install, disk, server.workdir / "replay")  # its token is spent
    assert server.events_after(mark) == [], console
    assert server.state() is State.INSTALLED
    assert "lookup of 52:54:00:12:34:56 refused: HTTP 401" in console
    assert "already used" in console, "the server's reason must reach the console"


async def test_lifecycle_refusal_reaches_the_console_and_the_vm_powers_off(
    server: LabServer,
) -> None:
    install = await server.fetch_boot()
    server.provisioner.fire("node01", Event.DECOMMISSION, "admin")  # while the VM powers on
    mark = server.last_event_id()
    console = await run_vm(
        install, blank_disk(server.workdir / "node01.disk"), server.workdir / "vm"
    )
    assert server.events_after(mark) == [], console
    assert server.state() is State.DECOMMISSIONED
    assert "lookup of 52:54:00:12:34:56 refused: HTTP 409" in console
    assert '"state": "decommissioned"' in console, "the 409 body must reach the console"
    assert "plasmaboot-lab: powering off" in console


def test_initrd_is_a_newc_archive_the_real_cpio_reads(assets: Path, tmp_path: Path) -> None:
    cpio = need("cpio")
    archive = gzip.decompress((assets / "lab/initrd").read_bytes())
    listing = subprocess.run(
        [cpio, "-it", "--quiet"], input=archive, capture_output=True, check=True
    ).stdout.decode()
    names = set(listing.split())
    assert {"init", "bin/busybox", "bin/sh", "bin/udhcpc", "dev/console"} <= names
    assert {f"lib/modules/{m}.ko" for m in ("virtio_net", "virtio_blk")} <= names
    subprocess.run(
        [cpio, "-id", "--quiet", "--no-absolute-filenames", "init", "lib/modules/order"],
        input=archive,
        cwd=tmp_path,
        check=True,
    )
    init = (tmp_path / "init").read_bytes()
    assert init == (ROOT / "src/plasmaboot/lab/initramfs/init.sh").read_bytes()
    order = (tmp_path / "lib/modules/order").read_text().split()
    assert order == [m for m in MODULES if m in order]
    assert order.index("virtio_ring") < order.index("virtio_pci") < order.index("virtio_net")


def test_xz_compressed_module_is_unpacked_for_busybox_insmod(tmp_path: Path) -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 64
    packed = tmp_path / "kernel/drivers/net/virtio_net.ko.xz"
    packed.parent.mkdir(parents=True)
    packed.write_bytes(lzma.compress(elf, format=lzma.FORMAT_XZ))
    found = find_module(tmp_path, "virtio_net")
    assert found == packed
    assert module_bytes(found) == elf
    assert find_module(tmp_path, "virtio_blk") is None  # built in: nothing to load


def test_rebuild_is_cached_and_reproducible(assets: Path, tmp_path: Path) -> None:
    before = (assets / "lab/initrd").stat().st_mtime_ns
    again = build_lab_image(assets, work_dir=DEFAULT_WORK_DIR)
    assert again == LabImage(assets / "lab/vmlinuz", assets / "lab/initrd")
    assert again.initrd.stat().st_mtime_ns == before, "an up-to-date image was rebuilt"
    messages: list[str] = []
    fresh = build_lab_image(tmp_path, work_dir=DEFAULT_WORK_DIR, progress=messages.append)
    assert fresh.initrd.read_bytes() == again.initrd.read_bytes()
    assert fresh.kernel.read_bytes() == again.kernel.read_bytes()
    assert any(m.startswith("building the initrd") for m in messages), messages
    assert not any(m.startswith("downloading") for m in messages), "the cache was not used"
