"""The backup archive: one tar file, a manifest, and a checksum for every file in it.

    manifest.json                  what is inside, and the sha256 and size of every file
    <service>.db                   the cluster store's snapshot (cluster/backup.py)
    plasmaboot/store.sqlite|.pgdump  plasmaboot's own store, copied online (store/dump.py)
    plasmaboot/pki/...             the cluster CA and every certificate and key issued
    plasmaboot/cluster.yaml        the inventory

It holds the CA's private key: it is written 0600 and must be kept like that key.
Everything is staged in a hidden directory next to the archive, the archive is written in
it and linked into place only when complete (a link never replaces a file), so a failure
leaves nothing. Reading it back extracts into
a scratch directory (tarfile's `data` filter: no links out, no devices, no absolute paths)
and checks every file against the manifest before anything else looks at it, so a damaged
archive is refused before any node or directory is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from plasmaboot.files import fsync_dir, sha256_file
from plasmaboot.provision.nodefiles import pki_dir
from plasmaboot.store.dump import StoreDump, dump_store, load_store

MANIFEST = "manifest.json"
FORMAT = "plasmaboot-cluster-backup/2"
SERVER_DIR = "plasmaboot"
INVENTORY_FILE = "cluster.yaml"


class ArchiveError(Exception):
    """The archive cannot be written or read back whole; the message names the fix."""


@dataclass(frozen=True)
class ServerSources:
    """Where the provisioning server keeps what the archive copies besides the snapshot."""

    inventory: Path
    state_dir: Path
    store: str | Path  # the state directory (SQLite) or a PostgreSQL URL


def copy_server_state(sources: ServerSources, staging: Path) -> dict[str, Any]:
    """plasmaboot's own store (online), PKI and inventory into `staging`; the manifest's
    `plasmaboot` section."""
    server = staging / SERVER_DIR
    server.mkdir(mode=0o700)
    pki = pki_dir(sources.state_dir)
    if not (pki / "ca.crt").is_file():
        raise ArchiveError(f"no cluster CA in {pki}; pass the provisioning server's --state-dir")
    shutil.copytree(pki, server / "pki", symlinks=False)
    shutil.copyfile(sources.inventory, server / INVENTORY_FILE)
    dump = dump_store(sources.store, server)
    return {
        "store": {"kind": dump.kind, "file": f"{SERVER_DIR}/{dump.file}",
                  "schema_version": dump.schema_version},
        "pki": f"{SERVER_DIR}/pki",
        "inventory": f"{SERVER_DIR}/{INVENTORY_FILE}",
    }  # fmt: skip


def _file_entry(staging: Path, path: Path) -> dict[str, Any]:
    return {
        "path": path.relative_to(staging).as_posix(),
        "size": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def seal(staging: Path, manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    """List every staged file in the manifest, write it, tar it all into `out` (0600)."""
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    manifest = {
        **manifest,
        "format": FORMAT,
        "files": [_file_entry(staging, p) for p in files],
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    partial = staging / ".archive.tar"  # inside staging: removed with it on any failure
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w") as tar:
            tar.add(staging / MANIFEST, arcname=MANIFEST)
            for path in files:
                tar.add(path, arcname=path.relative_to(staging).as_posix())
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(partial, out)  # unlike a rename, never replaces an --out made meanwhile
    except FileExistsError:
        raise ArchiveError(f"{out} appeared while the backup ran; choose a new --out") from None
    fsync_dir(out.parent)
    return manifest


def open_archive(archive: Path, into: Path) -> dict[str, Any]:
    """Extract `archive` into the empty directory `into` and check every file against the
    manifest; returns the manifest. ArchiveError names what is wrong."""
    damaged = "the backup is damaged; use another copy or take a new backup"
    try:
        with tarfile.open(archive, mode="r:") as tar:
            tar.extractall(into, filter="data")
    except FileNotFoundError:
        raise ArchiveError(f"{archive}: no such file") from None
    except (tarfile.TarError, EOFError) as exc:
        raise ArchiveError(f"{archive}: not a readable backup archive ({exc}); {damaged}") from None
    except OSError as exc:  # here, not in the archive: a full or read-only scratch disk
        raise ArchiveError(
            f"cannot unpack {archive} into {into}: {exc}; free space there, or point TMPDIR "
            "at a disk with room for the backup"
        ) from None
    try:
        manifest: dict[str, Any] = json.loads((into / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArchiveError(
            f"{archive}: no {MANIFEST} in it; --backup takes a file `plasmaboot cluster "
            "backup --out` wrote"
        ) from None
    except ValueError as exc:
        raise ArchiveError(f"{archive}: {MANIFEST} is unreadable ({exc}); {damaged}") from None
    if manifest.get("format") != FORMAT:
        raise ArchiveError(
            f"{archive}: format {manifest.get('format')!r}, this plasmaboot reads {FORMAT}"
        )
    listed = {str(f.get("path")): f for f in manifest.get("files", [])}
    found = {p.relative_to(into).as_posix() for p in into.rglob("*") if p.is_file()} - {MANIFEST}
    if found != set(listed):
        missing, extra = sorted(set(listed) - found), sorted(found - set(listed))
        raise ArchiveError(f"{archive}: missing {missing}, unlisted {extra}; {damaged}")
    for name, entry in sorted(listed.items()):
        path = into / PurePosixPath(name)
        size = path.stat().st_size
        if size != entry.get("size") or sha256_file(path) != entry.get("sha256"):
            raise ArchiveError(
                f"{archive}: {name} does not match its size and sha256 in the manifest; {damaged}"
            )
    return manifest


def restore_server_state(
    directory: Path, manifest: dict[str, Any], state_dir: Path, store: str | Path | None
) -> list[str]:
    """Put plasmaboot's store, PKI and inventory back for a new provisioning server.

    Built in a sibling directory and renamed to `state_dir` only when whole, so a failure
    leaves nothing to block the next try; a `state_dir` that already holds this archive's
    CA and inventory (an earlier run got this far) is kept and said so; any other
    non-empty one is refused. A PostgreSQL store goes in by one transaction."""
    section = manifest.get("plasmaboot")
    if not section:
        raise ArchiveError("the backup holds no plasmaboot state")
    pki, inventory = directory / PurePosixPath(section["pki"]), directory / section["inventory"]
    if state_dir.exists() and any(state_dir.iterdir()):
        if _holds(state_dir, pki, inventory):
            return [f"{state_dir} already holds this backup's CA and inventory: kept as it is"]
        raise ArchiveError(
            f"{state_dir} is not empty: a restore never overwrites a provisioning server's "
            "state; choose a new --server-state directory, or move the old one aside"
        )
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=state_dir.parent, prefix=f".{state_dir.name}.restoring-"))
    try:
        kept = section["store"]
        dump = StoreDump(str(kept["kind"]), PurePosixPath(kept["file"]).name,
                         int(kept["schema_version"]))  # fmt: skip
        target = store if store is not None else staging
        where = load_store(dump, directory / PurePosixPath(kept["file"]), target)
        shutil.copytree(pki, pki_dir(staging))
        os.chmod(pki_dir(staging), 0o700)
        shutil.copyfile(inventory, staging / INVENTORY_FILE)
        if state_dir.exists():
            state_dir.rmdir()  # empty, checked above
        os.rename(staging, state_dir)
        fsync_dir(state_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dump.kind == "sqlite":
        where = str(state_dir / PurePosixPath(where).name)
    return [
        f"plasmaboot store ({dump.kind}, schema {dump.schema_version}) -> {where}",
        f"PKI (the cluster CA and every node's certificate) -> {pki_dir(state_dir)}",
        f"inventory -> {state_dir / INVENTORY_FILE}",
    ]


def _holds(state_dir: Path, pki: Path, inventory: Path) -> bool:
    """Whether `state_dir` has the archive's CA certificate, CA key and inventory."""
    pairs = [(pki_dir(state_dir) / name, pki / name) for name in ("ca.crt", "ca.key")]
    pairs.append((state_dir / INVENTORY_FILE, inventory))
    return all(mine.is_file() and sha256_file(mine) == sha256_file(theirs)
               for mine, theirs in pairs)  # fmt: skip
