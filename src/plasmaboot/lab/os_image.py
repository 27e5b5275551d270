"""The lab's installed OS: Debian 12 with systemd, built from Debian packages.

NixOS cannot be built offline on the lab's machines, so the lab installs Debian in its
place, and Debian's etcd 3.4 stands in for Chainfire. Two cached layers:

1. base (keyed by the package list and `osimage/customize.sh`): `mmdebstrap` minbase
   + the packages below, made generic and trimmed by the customize script.
2. image (keyed by the base, plasmaboot's source and its dependencies): plasmaboot under
   `/opt/plasmaboot` (its dependencies as manylinux wheels for CPython 3.11) with a
   `/usr/local/bin/plasmaboot` wrapper, checked by running it in the root; then the root
   as an ext4 image (`mkfs.ext4 -d`, no mount) and a FAT EFI system partition image
   holding the kernel, the initrd, systemd-boot (UEFI) and SYSLINUX (BIOS).

The installer writes both partition images with `dd` (see `lab/install.py`): a stream of
big sequential writes is far cheaper under TCG than creating thousands of files. Both are
zstd-compressed for the trip. `manifest.json` records each file's sha256; `load_os_image`
checks them before any use and names the fix when one is missing or damaged.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import tomllib
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plasmaboot
from plasmaboot.files import sha256_file
from plasmaboot.lab import debian, disk_layout
from plasmaboot.lab.debian import (
    Progress,
    inputs_hash,
    mmdebstrap,
    need_tools,
    remove_tree,
    run,
    tree_bytes,
    tree_files,
)
from plasmaboot.lab.image import DEFAULT_WORK_DIR, LabImageError

OS_PACKAGES = (
    "systemd-sysv",
    "udev",
    "etcd-server",
    "etcd-client",  # etcdctl: `cluster restore` runs `etcdctl snapshot restore` on each member
    "python3",
    "openssh-server",
    "iproute2",
    "e2fsprogs",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "zstd",
    "systemd-boot-efi",
)
CUSTOMIZE = Path(__file__).with_name("osimage") / "customize.sh"
PACKAGE_SOURCE = Path(plasmaboot.__file__).resolve().parent
PYPROJECT = PACKAGE_SOURCE.parents[1] / "pyproject.toml"
WHEEL_PLATFORMS = (
    "manylinux2014_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_34_x86_64",
)
SYSTEMD_BOOT = Path("usr/lib/systemd/boot/efi/systemd-bootx64.efi")
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
MANIFEST = "manifest.json"
HOST_TOOLS = {
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "syslinux": "syslinux",
    "zstd": "zstd",
    "chroot": "coreutils",
}
WRAPPER = """#!/bin/sh
# plasmaboot, installed by the lab image (its dependencies live beside it).
PYTHONPATH=/opt/plasmaboot${PYTHONPATH:+:$PYTHONPATH} exec /usr/bin/python3 -m plasmaboot "$@"
"""


@dataclass(frozen=True)
class OsImage:
    directory: Path
    root: Path  # zstd'd ext4 image of the root filesystem
    esp: Path  # zstd'd FAT image of the EFI system partition
    mbr: Path  # SYSLINUX's mbr.bin (440 bytes of boot code)
    root_uuid: str
    manifest: dict[str, Any]


def os_image_dir(cache: Path | None = None) -> Path:
    return (cache or DEFAULT_WORK_DIR) / "os"


def dependencies() -> list[str]:
    """plasmaboot's runtime dependencies, from its pyproject.toml (or installed metadata)."""
    if PYPROJECT.is_file():
        project = tomllib.loads(PYPROJECT.read_text())["project"]
        return list(project["dependencies"])
    from importlib.metadata import requires

    return [r for r in requires("plasmaboot") or [] if "extra ==" not in r]


def load_os_image(directory: Path) -> OsImage:
    """The built image in `directory`, every file checked against the manifest's sha256."""
    fix = "build it with `plasmaboot lab image`"
    manifest_path = directory / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise LabImageError(f"no lab OS image: {manifest_path} is missing; {fix}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LabImageError(f"{manifest_path} is unreadable ({exc}); rebuild: {fix}") from None
    paths: dict[str, Path] = {}
    for role in ("root", "esp", "mbr"):
        entry = files.get(role) if isinstance(files, dict) else None
        if not isinstance(entry, dict) or "name" not in entry or "sha256" not in entry:
            raise LabImageError(f"{manifest_path} names no {role} image; rebuild: {fix}")
        path = directory / str(entry["name"])
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise LabImageError(
                f"{path} is missing or unreadable ({exc.strerror}); {fix}"
            ) from None
        if actual != entry["sha256"]:
            raise LabImageError(
                f"{path} is damaged: sha256 {actual}, the manifest says {entry['sha256']}; "
                f"rebuild it with `plasmaboot lab image`"
            )
        paths[role] = path
    return OsImage(
        directory, paths["root"], paths["esp"], paths["mbr"], str(manifest["root_uuid"]), manifest
    )


def build_os_image(cache: Path | None = None, progress: Progress | None = None) -> OsImage:
    """Build (or find up to date) the installed OS image under `cache/os`."""
    say = progress or (lambda _message: None)
    cache = cache or DEFAULT_WORK_DIR
    need_tools(HOST_TOOLS)
    if not SYSLINUX_MBR.is_file():
        raise LabImageError(f"{SYSLINUX_MBR} is missing: `apt-get install syslinux-common`")
    base_key = inputs_hash("os-base", OS_PACKAGES, files=[CUSTOMIZE, Path(debian.__file__)])
    deps = dependencies()
    key = inputs_hash(
        "os-image",
        base_key,
        deps,
        disk_layout.ESP_MIB,
        files=[Path(__file__), Path(disk_layout.__file__), *tree_files(PACKAGE_SOURCE)],
    )
    out = os_image_dir(cache)
    try:
        current = load_os_image(out)
    except LabImageError:
        current = None
    if current is not None and current.manifest.get("inputs") == key:
        say(f"the lab OS image is up to date ({out})")
        return current
    started = time.monotonic()
    base = _base_root(cache, base_key, say)
    staging = cache / "os-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    root = staging / "root"
    say("copying the base root")
    run(["cp", "-a", str(base), str(root)], what="copying the base root")
    _install_plasmaboot(root, _wheels(cache, deps, say), say)
    root_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"plasmaboot-lab-root:{key}"))
    (root / "etc/fstab").write_text(disk_layout.fstab(root_uuid))
    esp = _esp_image(root, staging, root_uuid, say)
    root_img = _root_image(root, staging, root_uuid, say)
    root_fs_bytes = root_img.stat().st_size
    say("compressing the partition images (zstd)")
    for image in (root_img, esp):
        run(["zstd", "-q", "-T0", "-6", "--rm", "-f", str(image)], what="compressing")
    shutil.copyfile(SYSLINUX_MBR, staging / "mbr.bin")
    names = {"root": root_img.name + ".zst", "esp": esp.name + ".zst", "mbr": "mbr.bin"}
    manifest = {
        "inputs": key,
        "suite": "bookworm",
        "root_uuid": root_uuid,
        "root_tree_bytes": tree_bytes(root),
        "root_fs_bytes": root_fs_bytes,
        "build_seconds": round(time.monotonic() - started, 1),
        "files": {
            role: {
                "name": name,
                "sha256": sha256_file(staging / name),
                "bytes": (staging / name).stat().st_size,
            }
            for role, name in names.items()
        },
    }
    shutil.rmtree(root)
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    say(f"lab OS image built in {manifest['build_seconds']} s: {out}")
    return load_os_image(out)


def _base_root(cache: Path, key: str, say: Progress) -> Path:
    base = cache / "os-base" / key
    if (base / ".done").exists():
        say(f"base root {key} is cached")
        return base / "rootfs"
    remove_tree(cache / "os-base")  # older bases are never used again
    started = time.monotonic()
    mmdebstrap(
        base / "rootfs",
        variant="minbase",
        packages=OS_PACKAGES,
        archives=cache / "apt-archives",
        hooks=[f'sh {CUSTOMIZE} "$1"'],
        progress=say,
    )
    (base / ".done").write_text(f"{time.monotonic() - started:.1f}\n")
    size = tree_bytes(base / "rootfs") >> 20
    say(f"base root built in {time.monotonic() - started:.0f} s ({size} MiB)")
    return base / "rootfs"


def _wheels(cache: Path, deps: list[str], say: Progress) -> Path:
    """plasmaboot's dependencies as CPython 3.11 manylinux wheels, installed into a dir."""
    key = inputs_hash("wheels", deps, WHEEL_PLATFORMS)
    target = cache / "wheels" / key
    if (target / ".done").exists():
        return target
    shutil.rmtree(cache / "wheels", ignore_errors=True)
    say(f"installing {len(deps)} dependencies for CPython 3.11 (pip, binary wheels only)")
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-compile", "--target", str(target), "--only-binary=:all:",
            "--python-version", "3.11", "--implementation", "cp",
            *(arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)),
            *deps]  # fmt: skip
    run(argv, what="pip download of plasmaboot's dependencies")
    (target / ".done").touch()
    return target


def _install_plasmaboot(root: Path, wheels: Path, say: Progress) -> None:
    say("installing plasmaboot into /opt/plasmaboot")
    opt = root / "opt" / "plasmaboot"
    shutil.copytree(wheels, opt, ignore=shutil.ignore_patterns(".done", "bin"))
    shutil.copytree(
        PACKAGE_SOURCE, opt / "plasmaboot", ignore=shutil.ignore_patterns("__pycache__")
    )
    wrapper = root / "usr/local/bin/plasmaboot"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    run(["chroot", str(root), "python3", "-m", "compileall", "-q", "/opt/plasmaboot"],
        what="compiling plasmaboot in the image")  # fmt: skip
    for args in (["--help"], ["firstboot", "--help"]):
        out = run(["chroot", str(root), "/usr/local/bin/plasmaboot", *args],
                  what=f"checking `plasmaboot {' '.join(args)}` inside the image")  # fmt: skip
        if "Usage" not in out:
            raise LabImageError(f"`plasmaboot {' '.join(args)}` in the image printed no usage")
    say("checked `plasmaboot --help` and `plasmaboot firstboot --help` inside the image")


def _esp_image(root: Path, staging: Path, root_uuid: str, say: Progress) -> Path:
    """The FAT EFI system partition: kernel + initrd, systemd-boot, SYSLINUX."""
    boot = root / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    initrds = sorted(boot.glob("initrd.img-*"))
    if not kernels or not initrds:
        raise LabImageError(f"the base root has no kernel or initrd in {boot}")
    esp = staging / "esp.img"
    files = staging / "esp-files"
    files.mkdir()
    (files / "loader.conf").write_text(disk_layout.loader_conf())
    (files / "entry.conf").write_text(disk_layout.loader_entry(root_uuid))
    (files / "syslinux.cfg").write_text(disk_layout.syslinux_cfg(root_uuid))
    say(f"making the EFI system partition ({disk_layout.ESP_MIB} MiB FAT32)")
    start = disk_layout.FIRST_SECTOR
    run(["mkfs.vfat", "-C", "-F", "32", "-h", str(start), "-n", disk_layout.ESP_LABEL,
         str(esp), str(disk_layout.ESP_MIB * 1024)], what="making the ESP")  # fmt: skip
    img = ["-i", str(esp)]
    run(["mmd", *img, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries", "::/syslinux"],
        what="making ESP directories")  # fmt: skip
    copies = {
        kernels[-1]: f"::/{disk_layout.KERNEL}",
        initrds[-1]: f"::/{disk_layout.INITRD}",
        root / SYSTEMD_BOOT: "::/EFI/BOOT/BOOTX64.EFI",
        files / "loader.conf": "::/loader/loader.conf",
        files / "entry.conf": f"::/loader/entries/{disk_layout.LOADER_ENTRY}",
        files / "syslinux.cfg": "::/syslinux/syslinux.cfg",
    }
    for source, dest in copies.items():
        run(["mcopy", *img, str(source), dest], what=f"copying {source.name} to the ESP")
    run(["syslinux", "--install", "--directory", "/syslinux", str(esp)],
        what="installing SYSLINUX on the ESP")  # fmt: skip
    for path in [*kernels, *initrds]:
        path.unlink()  # they live on the ESP; the root does not need a second copy
    return esp


def _root_image(root: Path, staging: Path, root_uuid: str, say: Progress) -> Path:
    """The root as an ext4 image just big enough; the installer grows it to its partition."""
    used = tree_bytes(root)
    inodes = sum(1 for _ in root.rglob("*"))
    size_mib = (used * 5 // 4 >> 20) + 96
    image = staging / "root.ext4"
    say(f"making the root filesystem: {used >> 20} MiB of files in a {size_mib} MiB ext4")
    argv = ["mkfs.ext4", "-q", "-F", "-L", disk_layout.ROOT_LABEL, "-U", root_uuid,
            "-N", str(inodes + inodes // 2 + 4096),
            "-E", "lazy_itable_init=0,lazy_journal_init=0",
            "-d", str(root), str(image), f"{size_mib}M"]  # fmt: skip
    run(argv, what="making the root ext4 image")
    return image
