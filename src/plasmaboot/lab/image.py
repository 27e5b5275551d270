"""Build the lab netboot image: Debian's cloud kernel and a busybox initramfs.

The kernel, its virtio modules and busybox come from Debian packages: the ones installed
on this machine when they are, otherwise `apt-get download` + `dpkg-deb -x` into a work
dir that is kept, so a second build is fast and needs no network. The initramfs is the
lab installer (`initramfs/init.sh`) in miniature: see that script for what a VM does.

The newc cpio writer is hand-written (about 40 lines): the standard library has none, and
`cpio`/`find` would need root to create /dev/console and would stamp the build's times
and owners into the archive. Written here, the initrd is byte-for-byte reproducible.
"""

from __future__ import annotations

import gzip
import lzma
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.files import write_atomic

KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# Load order (dependencies first). Missing ones are built in: the init skips them.
MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
)
INITRAMFS_SOURCES = Path(__file__).with_name("initramfs")
DEFAULT_WORK_DIR = Path.home() / ".cache" / "plasmaboot" / "lab-image"

Progress = Callable[[str], None]


class LabImageError(RuntimeError):
    """The image cannot be built; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class LabImage:
    kernel: Path
    initrd: Path


class NewcArchive:
    """A cpio archive in the kernel's initramfs format (newc, no checksums, mtime 0)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._inode = 0

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        self._inode += 1
        encoded = name.encode() + b"\0"
        fields = (self._inode, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._chunks += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]

    def add_dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def add_file(self, name: str, data: bytes, executable: bool = False) -> None:
        self._entry(name, 0o100755 if executable else 0o100644, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def to_bytes(self) -> bytes:
        trailer = NewcArchive()
        trailer._entry("TRAILER!!!", 0)
        return b"".join(self._chunks + trailer._chunks)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise LabImageError(
            f"{argv[0]} is not installed: the lab image needs dpkg and apt"
        ) from None
    if done.returncode != 0:
        raise LabImageError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


def kernel_package() -> str:
    """The versioned kernel package the cloud metapackage points at (apt's local lists)."""
    hint = "run `apt-get update` (the image needs Debian's package lists) and try again"
    try:
        depends = _run(["apt-cache", "depends", KERNEL_METAPACKAGE])
    except LabImageError as exc:
        raise LabImageError(f"{exc}: {hint}") from None
    for line in depends.splitlines():
        kind, _, name = line.strip().partition(": ")
        if kind == "Depends" and name.startswith("linux-image-"):
            return name
    raise LabImageError(f"apt-cache names no kernel for {KERNEL_METAPACKAGE}: {hint}")


def _installed(package: str) -> bool:
    try:
        status = _run(["dpkg-query", "-W", "-f", "${Status}", package])
    except LabImageError:  # not installed, or dpkg-query unknown: download it instead
        return False
    return status.endswith(" installed")


def package_root(package: str, work_dir: Path, progress: Progress) -> Path:
    """A directory holding the package's files: `/` if installed, else a cached extract."""
    if _installed(package):
        return Path("/")
    debs = work_dir / "debs"
    cached = sorted(debs.glob(f"{package}_*.deb"))
    if not cached:
        progress(f"downloading {package}")
        debs.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=debs) as partial:
            _run(["apt-get", "download", package], cwd=Path(partial))
            for deb in Path(partial).glob("*.deb"):
                deb.rename(debs / deb.name)
        cached = sorted(debs.glob(f"{package}_*.deb"))
        if not cached:
            raise LabImageError(f"apt-get download {package} wrote no .deb into {debs}")
    deb = cached[-1]
    root = work_dir / "roots" / deb.stem
    stamp = root / ".extracted"
    if not stamp.exists():
        progress(f"unpacking {deb.name}")
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(root)])
        stamp.touch()
    return root


def find_module(modules_dir: Path, name: str) -> Path | None:
    for suffix in (".ko", ".ko.xz"):
        found = sorted(modules_dir.rglob(name + suffix))
        if found:
            return found[0]
    return None


def module_bytes(path: Path) -> bytes:
    """busybox insmod reads plain ELF only: unpack `.ko.xz` here, at build time."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def busybox_applets(busybox: Path) -> list[str]:
    applets = _run([str(busybox), "--list"]).split()
    if "sh" not in applets:
        raise LabImageError(f"{busybox} has no sh applet: is it Debian's {BUSYBOX_PACKAGE}?")
    return sorted(a for a in applets if a != "busybox")


def initramfs(busybox: Path, modules: dict[str, Path]) -> bytes:
    """The initrd's cpio: /init, busybox and its applets, the modules and their load order."""
    archive = NewcArchive()
    for directory in (
        "bin",
        "dev",
        "etc",
        "etc/udhcpc",
        "lib",
        "lib/modules",
        "proc",
        "sys",
        "tmp",
    ):
        archive.add_dir(directory)
    # The kernel opens /dev/console for init before init can mount devtmpfs.
    archive.add_char_device("dev/console", 5, 1)
    archive.add_file("init", (INITRAMFS_SOURCES / "init.sh").read_bytes(), executable=True)
    script = (INITRAMFS_SOURCES / "udhcpc.script").read_bytes()
    archive.add_file("etc/udhcpc/default.script", script, executable=True)
    exchange = (INITRAMFS_SOURCES / "http-exchange.sh").read_bytes()
    archive.add_file("bin/http-exchange", exchange, executable=True)
    archive.add_file("bin/busybox", busybox.read_bytes(), executable=True)
    for applet in busybox_applets(busybox):
        archive.add_symlink(f"bin/{applet}", "busybox")
    for name, path in modules.items():
        archive.add_file(f"lib/modules/{name}.ko", module_bytes(path))
    archive.add_file("lib/modules/order", "".join(f"{n}\n" for n in modules).encode())
    return gzip.compress(archive.to_bytes(), compresslevel=9, mtime=0)


def _newer_than_all(outputs: list[Path], inputs: list[Path]) -> bool:
    if not all(p.exists() for p in outputs):
        return False
    oldest_output = min(p.stat().st_mtime for p in outputs)
    return all(p.stat().st_mtime <= oldest_output for p in inputs)


def build_lab_image(
    out_dir: Path, *, work_dir: Path | None = None, progress: Progress | None = None
) -> LabImage:
    """Write `out_dir/lab/vmlinuz` and `out_dir/lab/initrd`, skipping work when up to date."""
    say = progress or (lambda _message: None)
    work = work_dir or DEFAULT_WORK_DIR
    say("resolving the kernel package")
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    kernel_root = package_root(package, work, say)
    vmlinuz = kernel_root / "boot" / f"vmlinuz-{version}"
    modules_dir = kernel_root / "lib" / "modules" / version / "kernel"
    if not vmlinuz.exists() or not modules_dir.is_dir():
        raise LabImageError(f"{package} has no {vmlinuz} or {modules_dir}: is it a kernel image?")
    busybox = package_root(BUSYBOX_PACKAGE, work, say) / "bin" / "busybox"
    if not busybox.exists():
        raise LabImageError(f"{busybox} is missing: reinstall {BUSYBOX_PACKAGE}")
    found = {name: find_module(modules_dir, name) for name in MODULES}
    modules = {name: path for name, path in found.items() if path is not None}
    lab = out_dir / "lab"
    image = LabImage(kernel=lab / "vmlinuz", initrd=lab / "initrd")
    inputs = [vmlinuz, busybox, Path(__file__), *INITRAMFS_SOURCES.iterdir(), *modules.values()]
    if _newer_than_all([image.kernel, image.initrd], inputs):
        say("the lab image is up to date")
        return image
    lab.mkdir(parents=True, exist_ok=True)
    built_in = [name for name, path in found.items() if path is None]
    say(f"building the initrd ({len(modules)} modules; built in: {', '.join(built_in) or 'none'})")
    write_atomic(image.initrd, initramfs(busybox, modules))
    say(f"copying the kernel {vmlinuz.name}")
    write_atomic(image.kernel, vmlinuz.read_bytes())
    return image
