"""Write rendered files: atomically, secrets 0600, unchanged files left untouched.

Each file goes to a temp file in its own directory, is fsynced, then renamed over the old
one, so a reader (dhcpd, nginx, named) sees the old file or the new one, never half of one.
An unchanged file is not rewritten, so its mtime tells when it last really changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from plasmaboot.files import write_atomic
from plasmaboot.render.common import Files

SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
_SECRET_SUFFIXES = (".key", "-key.pem")
_SECRET_NAMES = frozenset({"cluster-config.json"})


def is_secret(relative: str) -> bool:
    """Keys and cluster-config.json (topology and, later, the agent token) are 0600."""
    path = PurePosixPath(relative)
    return (
        path.name.endswith(_SECRET_SUFFIXES)
        or path.name in _SECRET_NAMES
        or "secrets" in path.parts[:-1]
    )


@dataclass
class WriteReport:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def _safe_target(out_dir: Path, relative: str) -> Path:
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise ValueError(f"refusing to write {relative!r} outside the output directory")
    return out_dir.joinpath(*path.parts)


def _unchanged(path: Path, data: bytes, mode: int) -> bool:
    try:
        return (path.stat().st_mode & 0o777) == mode and path.read_bytes() == data
    except FileNotFoundError:
        return False


def write_files(out_dir: Path, files: Files) -> WriteReport:
    """Write every file under `out_dir` (paths are checked first, so a bad one writes none)."""
    targets = {relative: _safe_target(out_dir, relative) for relative in sorted(files)}
    report = WriteReport()
    for relative, path in targets.items():
        content = files[relative]
        data = content.encode("utf-8") if isinstance(content, str) else content
        mode = SECRET_MODE if is_secret(relative) else PUBLIC_MODE
        if _unchanged(path, data, mode):
            report.unchanged.append(relative)
            continue
        write_atomic(path, data, mode)
        report.written.append(relative)
    return report
