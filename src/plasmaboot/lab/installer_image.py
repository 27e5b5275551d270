"""The lab's installer netboot image: a small Debian in an initramfs, reached over SSH.

What it holds (Debian packages, `mmdebstrap --variant=essential` + the list below):
python3 for the installer agent (`plasmaboot.agent`, standard library only: only
`plasmaboot/__init__.py` and `plasmaboot/agent/` are copied in, no third-party
dependencies), OpenSSH's sshd with the lab's public key for root, busybox (udhcpc,
poweroff), and the tools the install command drives (sfdisk, wipefs, e2fsprogs, zstd,
mount). The kernel and its virtio modules are Debian's cloud kernel, as in the miniature
image (`lab/image.py`). PID 1 is `installer/init.sh`.

The image is keyed by its inputs (package list, init script, the agent's source, the lab
public key, the kernel) and rebuilt only when one changes. The lab's SSH key pair
(ed25519) is made once in the image cache; `plasmaboot lab install` uses its private half.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.lab import debian
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
from plasmaboot.lab.image import (
    DEFAULT_WORK_DIR,
    INITRAMFS_SOURCES,
    LabImageError,
    kernel_package,
    package_root,
)
from plasmaboot.lab.os_image import PACKAGE_SOURCE

INSTALLER_PACKAGES = (
    "busybox",
    "python3",
    "openssh-server",
    "e2fsprogs",
    "fdisk",
    "kmod",
    "iproute2",
    "zstd",
    "mount",
)
INIT = Path(__file__).with_name("installer") / "init.sh"
# Loaded by init in this order; modprobe pulls in what each depends on.
MODULES = ("virtio_pci", "virtio_net", "virtio_blk")
# Left out of the initrd: nothing at install time reads them.
EXCLUDES = (
    "usr/share/perl",
    "usr/share/perl5",
    "usr/lib/x86_64-linux-gnu/perl",
    "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/lib/x86_64-linux-gnu/gconv",
    "usr/share/zoneinfo",
    "usr/share/i18n",
    "usr/share/common-licenses",
    "usr/share/python3",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/unittest",
    "usr/lib/python3.11/distutils",
    "var/lib/dpkg",
    "var/cache",
    "var/log",
    "boot",
)
HOST_TOOLS = {"cpio": "cpio", "zstd": "zstd", "ssh-keygen": "openssh-client",
              "depmod": "kmod", "modinfo": "kmod"}  # fmt: skip
SSHD_CONFIG = """\
# plasmaboot lab installer: root by the lab key only
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
HostKey /etc/ssh/ssh_host_ed25519_key
"""


LAB_KEY_NAME = "lab_ed25519"


@dataclass(frozen=True)
class InstallerImage:
    kernel: Path
    initrd: Path


def lab_ssh_key(cache: Path | None = None) -> Path:
    """The lab's SSH private key (ed25519, 0600), made on first use; `.pub` beside it."""
    key = (cache or DEFAULT_WORK_DIR) / "ssh" / LAB_KEY_NAME
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.parent.chmod(0o700)
        partial = key.with_name(key.name + ".new")
        for leftover in (partial, partial.with_suffix(".new.pub")):
            leftover.unlink(missing_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "plasmaboot-lab",
             "-f", str(partial)], what="making the lab SSH key")  # fmt: skip
        partial.chmod(0o600)
        partial.with_name(partial.name + ".pub").rename(key.with_name(key.name + ".pub"))
        partial.rename(key)
    return key


def agent_sources() -> list[Path]:
    """What of plasmaboot goes into the installer: the package marker and the agent."""
    return [PACKAGE_SOURCE / "__init__.py", *tree_files(PACKAGE_SOURCE / "agent", (".py",))]


def build_installer_image(
    out_dir: Path, *, cache: Path | None = None, progress: Progress | None = None
) -> InstallerImage:
    """Write `out_dir/installer/vmlinuz` and `out_dir/installer/initrd` (cached)."""
    say = progress or (lambda _message: None)
    cache = cache or DEFAULT_WORK_DIR
    need_tools(HOST_TOOLS)
    public_key = lab_ssh_key(cache).with_name(LAB_KEY_NAME + ".pub")
    package = kernel_package()
    version = package.removeprefix("linux-image-")
    kernel_root = package_root(package, cache, say)
    vmlinuz = kernel_root / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.is_file():
        raise LabImageError(f"{package} has no {vmlinuz}")
    base_key = inputs_hash("installer-base", INSTALLER_PACKAGES, files=[Path(debian.__file__)])
    sources = agent_sources()
    key = inputs_hash(
        "installer", base_key, version, MODULES, EXCLUDES, SSHD_CONFIG,
        files=[INIT, Path(__file__), INITRAMFS_SOURCES / "udhcpc.script", public_key, *sources],
    )  # fmt: skip
    image = InstallerImage(out_dir / "installer" / "vmlinuz", out_dir / "installer" / "initrd")
    stamp = out_dir / "installer" / "inputs"
    if image.kernel.exists() and image.initrd.exists() and _read(stamp) == key:
        say(f"the installer image is up to date ({image.initrd.parent})")
        return image
    started = time.monotonic()
    base = _base_root(cache, base_key, say)
    staging = cache / "installer-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    root = staging / "root"
    run(["cp", "-a", str(base), str(root)], what="copying the installer root")
    for excluded in EXCLUDES:
        shutil.rmtree(root / excluded, ignore_errors=True)
    _overlay(root, public_key, sources)
    _modules(root, kernel_root, version, say)
    say(f"packing the installer initrd ({tree_bytes(root) >> 20} MiB of files)")
    initrd = staging / "initrd"
    with initrd.open("wb") as out:
        find = subprocess.Popen(["find", ".", "-print0"], cwd=root, stdout=subprocess.PIPE)
        cpio = subprocess.Popen(["cpio", "--null", "-o", "-H", "newc", "-R", "0:0", "--quiet"],
                                cwd=root, stdin=find.stdout, stdout=subprocess.PIPE)  # fmt: skip
        assert find.stdout is not None and cpio.stdout is not None
        find.stdout.close()
        zstd = subprocess.run(["zstd", "-q", "-T0", "-9"], stdin=cpio.stdout, stdout=out,
                              check=False)  # fmt: skip
        cpio.stdout.close()
        if cpio.wait() != 0 or find.wait() != 0 or zstd.returncode != 0:
            raise LabImageError("packing the installer initrd failed (find | cpio | zstd)")
    image.kernel.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vmlinuz, image.kernel)
    initrd.replace(image.initrd)
    stamp.write_text(key + "\n")
    shutil.rmtree(staging)
    size = image.initrd.stat().st_size >> 20
    say(f"installer image built in {time.monotonic() - started:.0f} s (initrd {size} MiB)")
    return image


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _base_root(cache: Path, key: str, say: Progress) -> Path:
    base = cache / "installer-base" / key
    if (base / ".done").exists():
        say(f"installer base root {key} is cached")
        return base / "rootfs"
    remove_tree(cache / "installer-base")
    started = time.monotonic()
    mmdebstrap(base / "rootfs", variant="essential", packages=INSTALLER_PACKAGES,
               archives=cache / "apt-archives", progress=say)  # fmt: skip
    (base / ".done").write_text(f"{time.monotonic() - started:.1f}\n")
    return base / "rootfs"


def _overlay(root: Path, public_key: Path, sources: list[Path]) -> None:
    """The installer's own files: init, DHCP script, sshd config, lab key, the agent."""
    init = root / "init"
    shutil.copyfile(INIT, init)
    init.chmod(0o755)
    udhcpc = root / "etc/udhcpc/default.script"
    udhcpc.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(INITRAMFS_SOURCES / "udhcpc.script", udhcpc)
    udhcpc.chmod(0o755)
    for old_key in (root / "etc/ssh").glob("ssh_host_*"):
        old_key.unlink()  # each boot makes its own
    (root / "etc/ssh/sshd_config.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/ssh/sshd_config.d/plasmaboot-installer.conf").write_text(SSHD_CONFIG)
    ssh_dir = root / "root/.ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    (ssh_dir / "authorized_keys").write_text(public_key.read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    for source in sources:
        dest = root / "opt/plasmaboot/plasmaboot" / source.relative_to(PACKAGE_SOURCE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
    (root / "etc/plasmaboot").mkdir(parents=True, exist_ok=True)
    (root / "etc/plasmaboot/modules").write_text("".join(f"{m}\n" for m in MODULES))


def _modules(root: Path, kernel_root: Path, version: str, say: Progress) -> None:
    """The kernel modules init loads, with everything they depend on, and depmod's index."""
    source = kernel_root / "lib" / "modules" / version
    index = {
        path.name.split(".ko")[0].replace("-", "_"): path
        for path in (source / "kernel").rglob("*.ko*")
    }
    wanted = list(MODULES)
    chosen: dict[str, Path] = {}
    while wanted:
        name = wanted.pop().replace("-", "_")
        path = index.get(name)
        if path is None or name in chosen:
            continue  # built into the kernel, or already chosen
        chosen[name] = path
        depends = run(["modinfo", "-F", "depends", str(path)], what="reading module deps")
        wanted += [d for d in depends.strip().split(",") if d]
    dest = root / "lib" / "modules" / version
    shutil.rmtree(dest, ignore_errors=True)
    for path in chosen.values():
        target = dest / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    for meta in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (source / meta).exists():
            shutil.copyfile(source / meta, dest / meta)
    run(["depmod", "-b", str(root), version], what="indexing the installer's modules")
    say(f"installer modules: {', '.join(sorted(chosen))}")
