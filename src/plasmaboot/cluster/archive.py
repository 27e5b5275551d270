"""The backup archive: one tar file, a manifest, and a checksum for every file in it.

    manifest.json                  what is inside, and the sha256 and size of every file
    <service>.db                   the cluster store's snapshot (cluster/backup.py)
    plasmaboot/store.sqlite|.pgdump  plasmaboot's own store, copied online (store/dump.py)
    plasmaboot/pki/...             the cluster CA and every certificate and key issued
    plasmaboot/cluster.yaml        the inventory

It holds the CA's private key: it is written 0600 and must be kept like that key.
Everything is staged in a hidden directory next to the archive and the archive is renamed
into place only when complete, so a failure leaves nothing. Reading it back extracts into
a scratch directory (tarfile's `data` filter: no links out, no devices, no absolute paths)
and checks every file against the manifest before anything else looks at it, so a damaged
archive is refused before any node or directory is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
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
    partial = staging.with_name(staging.name + ".tar")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w") as tar:
            tar.add(staging / MANIFEST, arcname=MANIFEST)
            for path in files:
                tar.add(path, arcname=path.relative_to(staging).as_posix())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, out)
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
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"{archive}: not a readable backup archive ({exc}); {damaged}") from None
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
    """Put plasmaboot's store, PKI and inventory back for a new provisioning server, into a
    state directory that holds none of them yet. Returns one line per thing restored."""
    section = manifest.get("plasmaboot")
    if not section:
        raise ArchiveError("the backup holds no plasmaboot state")
    pki = pki_dir(state_dir)
    if pki.exists() and any(pki.iterdir()):
        raise ArchiveError(
            f"{pki} is not empty: a restore never overwrites a CA; choose a new --server-state "
            "directory, or move the old one aside first"
        )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    inventory = state_dir / INVENTORY_FILE
    if inventory.exists():
        raise ArchiveError(f"{inventory} exists: a restore never overwrites an inventory")
    kept = section["store"]
    name = PurePosixPath(kept["file"]).name
    dump = StoreDump(str(kept["kind"]), name, int(kept["schema_version"]))
    where = load_store(dump, directory / PurePosixPath(kept["file"]), store or state_dir)
    shutil.copytree(directory / PurePosixPath(section["pki"]), pki, dirs_exist_ok=True)
    shutil.copyfile(directory / PurePosixPath(section["inventory"]), inventory)
    return [
        f"plasmaboot store ({dump.kind}, schema {dump.schema_version}) -> {where}",
        f"PKI (the cluster CA and every node's certificate) -> {pki}",
        f"inventory -> {inventory}",
    ]
