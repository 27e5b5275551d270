"""Marker files that make first boot idempotent (the seeds' ``.chainfire-joined`` etc.).

Each marker holds the ISO 8601 time it was written, as the seeds specify.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from plasmaboot.files import write_atomic

DEFAULT_STATE_DIR = Path("/var/lib/first-boot-automation")


def write_text_atomic(path: Path, text: str) -> None:
    """A power cut never leaves a half-written marker or env file."""
    write_atomic(path, text.encode(), 0o644)


def env_file_path(state_dir: Path, service: str) -> Path:
    """The EnvironmentFile an etcd joiner writes after member add; the rendered units start
    the local etcd from it (a .path unit), so both sides take the name from here."""
    return state_dir / f"{service}.env"


def marker_path(state_dir: Path, service: str, bootstrap: bool) -> Path:
    return state_dir / f".{service}-{'initialized' if bootstrap else 'joined'}"


def existing_marker(state_dir: Path, service: str) -> Path | None:
    """Either marker counts: a bootstrapped node that is later re-run in join mode is done."""
    for bootstrap in (True, False):
        path = marker_path(state_dir, service, bootstrap)
        if path.exists():
            return path
    return None


def write_marker(state_dir: Path, service: str, bootstrap: bool) -> Path:
    path = marker_path(state_dir, service, bootstrap)
    write_text_atomic(path, dt.datetime.now(dt.UTC).isoformat(timespec="seconds") + "\n")
    return path
