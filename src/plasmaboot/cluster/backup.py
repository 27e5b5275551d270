"""``cluster backup`` (runbook 9.4): a consistent snapshot of the store, taken through its API.

The runbook tars the store's data directory on live nodes. A member keeps writing its Raft
log and database while tar reads them, so the archive can hold a log and a database from
different moments (a torn WAL, a half-written page): a restore that will not start, or one
that silently lost writes. etcd's maintenance API instead streams a copy of its backend
read in one transaction, plus a sha256 of that copy as the last 32 bytes. The snapshot goes
into one archive with plasmaboot's own store, PKI and inventory (cluster/archive.py).

The gateway answers ``POST /v3/maintenance/snapshot`` (etcd 3.4) with newline-separated
JSON messages ``{"result": {"blob": BASE64, "remaining_bytes": "N"}}``, 32 KiB per blob,
``remaining_bytes`` left out once it is zero; the last blob is the 32-byte sha256 trailer.
A failure mid-stream comes as ``{"error": {...}}``.

The snapshot comes from the leader when it is healthy (it holds every committed entry),
else from the first healthy voting member; the manifest says which. It is written into a
hidden staging directory next to ``--out`` (0700; the snapshot 0600, fsynced) and checked
again from disk; the archive appears at ``--out`` only when complete.
The Chainfire flavour has no snapshot API (its admin API knows membership and health only),
so it is refused by name.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

import plasmaboot
from plasmaboot.cluster.archive import ArchiveError, ServerSources, copy_server_state, seal
from plasmaboot.firstboot.backends import ClusterUnreachable, Member, MembershipError, make_backend
from plasmaboot.firstboot.config import FirstBootConfig, ServicePlan
from plasmaboot.store.dump import DumpError

SHA256_SIZE = 32
READ_TIMEOUT_S = 60.0
#: (bytes received, bytes expected in all) for a progress display
ProgressCallback = Callable[[int, int], None]


class BackupError(Exception):
    """A backup could not be taken or did not verify; the message names what and the fix."""


@dataclass(frozen=True)
class SnapshotCheck:
    """What a snapshot file on disk holds: its sha256, size, and whether the trailer matches."""

    sha256: str
    size: int
    trailer_ok: bool


def check_snapshot_file(path: Path) -> SnapshotCheck:
    """Hash the whole file and check etcd's trailer: the last 32 bytes are the sha256 of the
    rest (what ``etcdctl snapshot restore`` checks; ``snapshot status`` does not)."""
    whole, body = hashlib.sha256(), hashlib.sha256()
    tail, size = b"", 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            whole.update(chunk)
            size += len(chunk)
            data = tail + chunk
            body.update(data[:-SHA256_SIZE])
            tail = data[-SHA256_SIZE:]
    trailer_ok = size > SHA256_SIZE and body.digest() == tail
    return SnapshotCheck(whole.hexdigest(), size, trailer_ok)


def etcdctl_status(path: Path) -> dict[str, Any] | None:
    """``etcdctl snapshot status -w json`` (revision, keys, hash) when etcdctl is installed;
    None when it is not. Raises BackupError when etcdctl cannot read the file."""
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        return None
    done = subprocess.run(
        [etcdctl, "snapshot", "status", "-w", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "")},
    )
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BackupError(f"{path}: etcdctl snapshot status cannot read it: {why[0]}")
    raw: dict[str, Any] = json.loads(done.stdout)
    return {
        "revision": raw.get("revision"),
        "total_keys": raw.get("totalKey"),
        "total_size": raw.get("totalSize"),
        "hash": raw.get("hash"),
    }


def _sources(plan: ServicePlan, client: httpx.Client) -> list[Member]:
    """Healthy voting members, the leader first."""
    backend = make_backend(plan, client)
    urls = [plan.client_url, *plan.candidate_urls()]
    members = backend.members(urls)
    healthy = [m for m in members if m.healthy and not m.is_learner and m.client_urls]
    return sorted(healthy, key=lambda m: not m.is_leader)


def _status(client: httpx.Client, url: str) -> dict[str, Any]:
    response = client.post(f"{url.rstrip('/')}/v3/maintenance/status", json={})
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def stream_snapshot(
    client: httpx.Client, url: str, target: Path, progress: ProgressCallback | None = None
) -> int:
    """Write the member's snapshot stream to ``target`` (0600, fsynced); returns its size."""
    size, remaining = 0, 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        timeout = httpx.Timeout(10.0, read=READ_TIMEOUT_S)
        endpoint = f"{url.rstrip('/')}/v3/maintenance/snapshot"
        with client.stream("POST", endpoint, json={}, timeout=timeout) as response:
            if response.status_code != 200:
                response.read()
                raise BackupError(f"{endpoint}: HTTP {response.status_code} {response.text[:200]}")
            for line in response.iter_lines():
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as error:
                    raise BackupError(f"{endpoint}: the stream broke off mid-message") from error
                if "error" in message:
                    failure = message["error"]
                    text = failure.get("message", failure) if isinstance(failure, dict) else failure
                    raise BackupError(f"{endpoint}: the member aborted the snapshot: {text}")
                result = message.get("result") or {}
                blob = base64.b64decode(result.get("blob", ""))
                handle.write(blob)
                size += len(blob)
                remaining = int(result.get("remaining_bytes", 0))
                if progress is not None:
                    progress(size, size + remaining)
        if remaining:
            raise BackupError(f"{endpoint}: the stream ended with {remaining} bytes still due")
        handle.flush()
        os.fsync(handle.fileno())
    return size


def _snapshot_service(
    plan: ServicePlan,
    client: httpx.Client,
    staging: Path,
    progress: ProgressCallback | None,
) -> dict[str, Any]:
    """Snapshot one service into ``staging``; returns its manifest entry."""
    if plan.backend != "etcd":
        raise BackupError(
            f"{plan.service}: the {plan.backend} backend offers no snapshot API (its admin API "
            "knows membership and health only); back it up with the store's own tools, "
            "never by copying the data directory of a running member"
        )
    try:
        sources = _sources(plan, client)
    except (ClusterUnreachable, MembershipError) as error:
        raise BackupError(
            f"{plan.service}: {error}; start the store on a member, or fix leader_url / "
            "member_urls in the cluster config (-c) so they name running members"
        ) from error
    if not sources:
        raise BackupError(
            f"{plan.service}: no healthy voting member to take the snapshot from; "
            "check `plasmaboot cluster verify` and the members' logs"
        )
    target = staging / f"{plan.service}.db"
    failures: dict[str, str] = {}
    for member in sources:
        url = member.client_urls[0]
        try:
            status = _status(client, url)
            started = time.monotonic()
            stream_snapshot(client, url, target, progress)
            seconds = time.monotonic() - started
            check = check_snapshot_file(target)
            if not check.trailer_ok:
                raise BackupError(
                    "the snapshot does not match its own sha256 trailer (damaged in transit)"
                )
        except (httpx.HTTPError, BackupError, ValueError) as error:
            failures[f"{member.name} ({url})"] = str(error)
            target.unlink(missing_ok=True)
            continue
        return _entry(plan, member, url, status, target, check, seconds)
    raise BackupError(
        f"{plan.service}: no member gave a complete snapshot; tried: "
        + "; ".join(f"{who}: {why}" for who, why in failures.items())
    )


def _entry(
    plan: ServicePlan,
    member: Member,
    url: str,
    status: dict[str, Any],
    target: Path,
    check: SnapshotCheck,
    seconds: float,
) -> dict[str, Any]:
    """Describe a snapshot verified from disk for the manifest."""
    header = status.get("header", {})
    return {
        "service": plan.service,
        "backend": plan.backend,
        "file": target.name,
        "size": check.size,
        "sha256": check.sha256,
        "member": {
            "name": member.name,
            "id": member.id,
            "client_url": url,
            "role": "leader" if member.is_leader else "follower",
        },
        "cluster_id": header.get("cluster_id"),
        "revision": int(header.get("revision", 0)),
        "raft_term": int(header.get("raft_term", 0)),
        "store_version": status.get("version"),
        "transfer_s": round(seconds, 3),
        "etcdctl_status": etcdctl_status(target),
    }


@dataclass(frozen=True)
class BackupResult:
    archive: Path
    manifest: dict[str, Any]


def _check_out(out: Path) -> None:
    if out.exists():
        raise BackupError(f"{out} exists; backups never overwrite: choose a new --out")
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent} does not exist; create it or choose another --out")


def take_backup(
    plan: FirstBootConfig,
    client: httpx.Client,
    out: Path,
    server: ServerSources,
    services: list[str] | None = None,
    progress: Callable[[str], ProgressCallback | None] | None = None,
    now: dt.datetime | None = None,
) -> BackupResult:
    """Snapshot every configured (or named) service and copy plasmaboot's own state into
    the archive `out` (cluster/archive.py): all of it or nothing."""
    out = out.absolute()
    _check_out(out)
    chosen = [s for s in plan.services if not services or s.service in services]
    if not chosen:
        names = [s.service for s in plan.services]
        raise BackupError(f"--service {services}: not in this cluster config; choose from {names}")
    created = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        entries = [
            _snapshot_service(svc, client, staging, progress(svc.service) if progress else None)
            for svc in chosen
        ]
        try:
            state = copy_server_state(server, staging)
        except (ArchiveError, DumpError, OSError) as error:
            raise BackupError(f"plasmaboot's own state: {error}") from error
        manifest = seal(staging, {
            "cluster_name": plan.cluster_name,
            "created": created.isoformat().replace("+00:00", "Z"),
            "plasmaboot_version": plasmaboot.__version__,
            "taken_with": plan.node_id,
            "snapshots": entries,
            "plasmaboot": state,
        }, out)  # fmt: skip
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BackupResult(out, manifest)
