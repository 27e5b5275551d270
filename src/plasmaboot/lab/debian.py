"""Shared by the lab's Debian-built images: mmdebstrap runs, input hashes, checksums.

Both real lab images (the installer netboot image and the installed OS) are Debian 12
root filesystems made by `mmdebstrap` from Debian packages, with the machine's own apt
sources. Downloaded packages are kept in one archive directory shared by every build
(mmdebstrap's sync-in/sync-out hooks), so a rebuild after an input changed downloads
nothing it already has. Each build is keyed by a hash of its inputs: the same inputs
give the same key and the build is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from plasmaboot.lab.image import LabImageError

SUITE = "bookworm"
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the plasmaboot package directory
MMDEBSTRAP_PACKAGE = "mmdebstrap"
# Sets merged-/usr up itself and installs usr-is-merged, so apt does not pick `usrmerge`
# (init-system-helpers' first alternative), which would pull in all of perl.
MERGED_USR_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")
# Dropped at unpack time from every image: the lab reads none of it.
DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/linda/*",
    "/usr/share/bash-completion/*",
    "/usr/share/zsh/*",
)

Progress = Callable[[str], None]


def run(argv: Sequence[str], *, cwd: Path | None = None, what: str = "") -> str:
    """Run a build command; a failure names the command, what it was for and its stderr."""
    try:
        done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise LabImageError(
            f"{argv[0]} is not installed{f' (needed for {what})' if what else ''}"
        ) from None
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise LabImageError(f"`{' '.join(argv)}` failed ({what or 'lab image'}):\n{tail}")
    return done.stdout


def need_tools(tools: dict[str, str]) -> None:
    """Every command the build runs on this machine, with the Debian package that has it."""
    missing = {tool: pkg for tool, pkg in tools.items() if shutil.which(tool) is None}
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        raise LabImageError(
            f"missing {', '.join(sorted(missing))}: install them with "
            f"`apt-get install {packages}` (or `make deps`)"
        )


def apt_sources() -> list[str]:
    """This machine's apt source files, passed to mmdebstrap as its mirrors."""
    etc = Path("/etc/apt")
    files = [etc / "sources.list"] if (etc / "sources.list").is_file() else []
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    usable = [str(p) for p in files if _has_entries(p)]
    if not usable:
        raise LabImageError("no apt sources on this machine: configure apt (Debian 12) first")
    return usable


def _has_entries(path: Path) -> bool:
    lines = path.read_text(errors="replace").splitlines()
    return any(line.strip() and not line.lstrip().startswith("#") for line in lines)


def inputs_hash(*parts: object, files: Iterable[Path] = ()) -> str:
    """A key for a build: its recipe (JSON-able parts) and the bytes of its input files.

    plasmaboot's own files are named relative to the package, so two checkouts of one
    commit (a work tree and CI's clone) share the cached images instead of rebuilding
    (and evicting) each other's."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in sorted(files):
        digest.update(_input_name(path).encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()[:16]


def _input_name(path: Path) -> str:
    resolved = path.resolve()
    return (
        str(resolved.relative_to(PACKAGE_ROOT.parent))
        if resolved.is_relative_to(PACKAGE_ROOT.parent)
        else str(path)
    )


def tree_files(
    root: Path, suffixes: tuple[str, ...] = (".py", ".json", ".yaml", ".sh")
) -> list[Path]:
    """The source files of a tree (no caches), for `inputs_hash`."""
    if not root.exists():
        return []
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in suffixes
    )


def mmdebstrap(
    target: Path,
    *,
    variant: str,
    packages: Sequence[str],
    archives: Path,
    hooks: Sequence[str] = (),
    progress: Progress,
) -> None:
    """A root filesystem directory `target` (made fresh) from Debian packages.

    `hooks` are mmdebstrap `--customize-hook` shell commands (`$1` is the root); they run
    with /proc, /sys and /dev mounted in the chroot.
    """
    need_tools({"mmdebstrap": MMDEBSTRAP_PACKAGE})
    if os.geteuid() != 0:
        raise LabImageError("building the lab's Debian images needs root (mmdebstrap root mode)")
    remove_tree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    archives.mkdir(parents=True, exist_ok=True)
    argv = [
        "mmdebstrap",
        "--mode=root",
        f"--variant={variant}",
        "--format=directory",
        "--skip=essential/unlink",
        f"--hook-dir={MERGED_USR_HOOKS}",
        f"--include={','.join(packages)}",
        '--aptopt=Acquire::Retries "3"',
        *(f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES),
        "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives',
        f"--setup-hook=sync-in {archives} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {archives}",
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        *(f"--customize-hook={hook}" for hook in hooks),
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
        ' "$1"/var/log/apt "$1"/var/log/dpkg.log "$1"/var/log/alternatives.log',
        SUITE,
        str(target),
        *apt_sources(),
    ]
    progress(f"mmdebstrap {variant} {SUITE} ({len(packages)} packages asked) into {target}")
    run(argv, what="mmdebstrap")


def remove_tree(path: Path) -> None:
    """rm -rf, after unmounting whatever an interrupted mmdebstrap left mounted below it."""
    below = str(path.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(below)), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    shutil.rmtree(path, ignore_errors=True)


def tree_bytes(root: Path) -> int:
    """Bytes of regular files under root (not following links), for size reports."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.lstat(path).st_size
    return total
