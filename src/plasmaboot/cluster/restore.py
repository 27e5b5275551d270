"""``cluster restore`` (runbook 9.3, complete cluster loss; 9.4): rebuild etcd from a backup.

The runbook stops the store everywhere, untars the data directory and restarts. With a
snapshot the right way is etcd's own: ``etcdctl snapshot restore`` on every member, into a
fresh directory, with that member's name and peer URL and the whole new initial cluster
(membership is rewritten, so the snapshot's old member IDs cannot come back), then the
fresh directory takes the place of the data directory and etcd starts.

Everything comes from the inventory: the members are the nodes that run the store
(`render.etcd.runs_etcd`), their names, peer URLs, data directory and cluster token are
`render.etcd.etcd_settings`, the settings the nodes' own etcd runs with. The restore is a
plan of steps per member, run in phases (check every member, stop every member, restore
every member, start every member), so nothing is stopped before every node has shown it can
restore, and no member starts before all of them hold the snapshot. A runner executes each
step: `SshRunner` on the nodes as root (the way rollout reaches nodes, to the provisioning
address), `LocalRunner` on this machine, each member's files under its own root directory
(tests, or a rehearsal). Paths on the node are `NodePath`s so a local runner can map them;
steps that only make sense on a node (systemctl, chown) are marked and skipped locally.

Members start with ``systemctl start --no-block``: etcd reports ready only once it has a
quorum, so a blocking start of the first member would wait for the others forever. The
previous data directory, if any, is kept as ``<data dir>.before-restore-<stamp>``. The
restored member IDs depend only on names, peer URLs and token, so running the restore again
after a failure halfway gives the same cluster.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from plasmaboot.cluster.archive import ArchiveError, open_archive
from plasmaboot.cluster.backup import check_snapshot_file
from plasmaboot.inventory.models import Inventory
from plasmaboot.render.etcd import ETCD_UNIT, JOIN_ENV, STORE_SERVICE, etcd_settings, runs_etcd

ETCDCTL = ("env", "ETCDCTL_API=3", "etcdctl")


class RestoreError(Exception):
    """The backup or the plan is unusable, or a step failed; the message names the fix."""


class NodePath(str):
    """A path on a member's filesystem (a local runner maps it under the member's root)."""

    __slots__ = ()


@dataclass(frozen=True)
class VerifiedBackup:
    directory: Path  # where the archive was extracted and checked
    manifest: dict[str, Any]
    snapshot: Path
    entry: dict[str, Any]

    @property
    def cluster_name(self) -> str:
        return str(self.manifest.get("cluster_name", ""))

    @property
    def created(self) -> str:
        return str(self.manifest.get("created", ""))

    @property
    def inventory(self) -> Path:
        return self.directory / PurePosixPath(self.manifest["plasmaboot"]["inventory"])


def verify_backup(archive: Path, into: Path, service: str = STORE_SERVICE) -> VerifiedBackup:
    """Extract the archive into the empty directory `into`; check every file against the
    manifest and the snapshot against etcd's own trailer, before anything is touched."""
    try:
        manifest = open_archive(archive, into)
    except ArchiveError as error:
        raise RestoreError(str(error)) from None
    entries = [e for e in manifest.get("snapshots", []) if e.get("service") == service]
    if not entries:
        found = [e.get("service") for e in manifest.get("snapshots", [])]
        raise RestoreError(f"{archive}: no {service} snapshot in it (has {found})")
    entry = entries[0]
    if entry.get("backend") != "etcd":
        raise RestoreError(
            f"{archive}: {service} is a {entry.get('backend')} snapshot; only etcd "
            "snapshots can be restored"
        )
    snapshot = into / PurePosixPath(str(entry.get("file", ""))).name
    if not check_snapshot_file(snapshot).trailer_ok:
        raise RestoreError(
            f"{archive}: {snapshot.name}: etcd's sha256 trailer does not match; the backup is "
            "damaged; use another copy or take a new backup"
        )
    return VerifiedBackup(into, manifest, snapshot, entry)


@dataclass(frozen=True)
class RestoreMember:
    name: str
    address: str  # where a runner reaches the node (its provisioning address)
    peer_url: str
    data_dir: str
    token: str
    bootstrap: bool


def restore_members(inv: Inventory) -> list[RestoreMember]:
    """Every node that runs the store, with the settings its etcd runs with."""
    if inv.cluster.store != "etcd":
        raise RestoreError(
            f"cluster.store is {inv.cluster.store}: only the etcd store can be restored "
            "from a snapshot; the Chainfire API offers no snapshot restore"
        )
    members = []
    for node in inv.nodes:
        if runs_etcd(inv, node):
            settings = etcd_settings(inv, node)
            members.append(
                RestoreMember(
                    name=settings["ETCD_NAME"],
                    address=str(node.provisioning_ip),
                    peer_url=settings["ETCD_INITIAL_ADVERTISE_PEER_URLS"],
                    data_dir=settings["ETCD_DATA_DIR"],
                    token=settings["ETCD_INITIAL_CLUSTER_TOKEN"],
                    bootstrap=node.bootstrap,
                )
            )
    if not members:
        raise RestoreError("no node of the inventory runs the store (a `chainfire` service)")
    return members


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    node_only: bool = False  # service control and ownership: skipped by a local runner


@dataclass(frozen=True)
class Upload:
    target: NodePath
    source: Path | None = None
    data: bytes | None = None
    mode: int = 0o600


@dataclass(frozen=True)
class Step:
    phase: str
    member: RestoreMember
    what: str
    action: Run | Upload


def plan_restore(members: list[RestoreMember], snapshot: Path, stamp: str) -> list[Step]:
    """The steps of a restore, phase by phase (check, stop, restore, start)."""
    cluster = ",".join(f"{m.name}={m.peer_url}" for m in members)
    steps = [Step("check", m, "etcdctl is installed", Run((*ETCDCTL, "version"))) for m in members]
    steps += [
        Step("stop", m, f"stop {ETCD_UNIT}", Run(("systemctl", "stop", ETCD_UNIT), True))
        for m in members
    ]
    for m in members:
        copy = NodePath(f"{m.data_dir}.restore-{stamp}.db")
        fresh = NodePath(f"{m.data_dir}.restore-{stamp}")
        data = NodePath(m.data_dir)
        restore = (
            *ETCDCTL, "snapshot", "restore", copy, "--name", m.name,
            "--initial-cluster", cluster, "--initial-cluster-token", m.token,
            "--initial-advertise-peer-urls", m.peer_url, "--data-dir", fresh,
        )  # fmt: skip
        swap = ("mv", "-T", "--backup=simple", f"--suffix=.before-restore-{stamp}", fresh, data)
        chown = Run(("chown", "-R", "etcd:", data), node_only=True)
        steps += [
            Step("restore", m, f"copy the snapshot to {copy}", Upload(copy, source=snapshot)),
            Step("restore", m, f"etcdctl snapshot restore into {fresh}", Run(restore)),
            Step("restore", m, f"swap {fresh} in as {data}", Run(swap)),
            Step("restore", m, f"give {data} to user etcd", chown),
            Step("restore", m, f"remove {copy}", Run(("rm", "-f", copy))),
        ]
        if not m.bootstrap:
            steps.append(Step("restore", m, f"write {JOIN_ENV}", _join_env(m, cluster)))
    start = Run(("systemctl", "start", "--no-block", ETCD_UNIT), node_only=True)
    what = f"start {ETCD_UNIT} (no wait: etcd is ready only with a quorum)"
    return steps + [Step("start", m, what, start) for m in members]


def _join_env(member: RestoreMember, cluster: str) -> Upload:
    """A joiner's etcd unit starts only once this file exists (`render.etcd`); a node that
    was reinstalled has lost it. The restored data directory wins over its values."""
    lines = [
        f"ETCD_NAME={member.name}",
        f"ETCD_INITIAL_CLUSTER={cluster}",
        "ETCD_INITIAL_CLUSTER_STATE=existing",
        f"ETCD_INITIAL_ADVERTISE_PEER_URLS={member.peer_url}",
    ]
    return Upload(NodePath(JOIN_ENV), data=("\n".join(lines) + "\n").encode(), mode=0o644)


@dataclass(frozen=True)
class StepResult:
    ok: bool
    output: str


class NodeRunner(Protocol):
    local: bool

    def run(self, member: RestoreMember, argv: Sequence[str]) -> StepResult: ...

    def upload(self, member: RestoreMember, action: Upload) -> StepResult: ...


def _completed(done: subprocess.CompletedProcess[str]) -> StepResult:
    return StepResult(done.returncode == 0, (done.stdout + done.stderr).strip())


class SshRunner:
    """Each step as root on the node over ssh, batch mode (no prompts). Files go through the
    same ssh connection's stdin (no scp: it needs the node's sftp subsystem), into a
    ``.part`` file that is renamed into place once complete."""

    local = False
    #: stdin -> "$1.part" (umask 077, mode "$2", parents made), then renamed to "$1"
    RECEIVE = (
        'umask 077 && mkdir -p -- "${1%/*}" && cat > "$1.part" && chmod "$2" "$1.part" '
        '&& mv -f -- "$1.part" "$1"'
    )

    def __init__(self, options: Sequence[str] = (), timeout_s: float = 600.0) -> None:
        """``options`` are ssh ``-o`` options (``IdentityFile=...``, ``Port=...``)."""
        settings = ("BatchMode=yes", "ConnectTimeout=10", *options)
        self.options = tuple(arg for setting in settings for arg in ("-o", setting))
        self.timeout_s = timeout_s

    def _ssh(self, member: RestoreMember, argv: Sequence[str], stdin: int | None) -> StepResult:
        command = ["ssh", *self.options, f"root@{member.address}", shlex.join(argv)]
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            return StepResult(False, str(error))
        return _completed(done)

    def run(self, member: RestoreMember, argv: Sequence[str]) -> StepResult:
        return self._ssh(member, argv, None)

    def upload(self, member: RestoreMember, action: Upload) -> StepResult:
        receive = ["sh", "-c", self.RECEIVE, "sh", action.target, f"{action.mode:o}"]
        with tempfile.TemporaryFile() as scratch:
            if action.source is None:
                scratch.write(action.data or b"")
                scratch.seek(0)
                return self._ssh(member, receive, scratch.fileno())
        with action.source.open("rb") as source:
            return self._ssh(member, receive, source.fileno())


class LocalRunner:
    """Each step on this machine; member paths live under ``root/<member name>/``."""

    local = True

    def __init__(self, root: Path, timeout_s: float = 600.0) -> None:
        self.root = root
        self.timeout_s = timeout_s

    def path(self, member: RestoreMember, value: str) -> str:
        if isinstance(value, NodePath):
            return str(self.root / member.name / value.lstrip("/"))
        return value

    def run(self, member: RestoreMember, argv: Sequence[str]) -> StepResult:
        local = [self.path(member, arg) for arg in argv]
        try:
            done = subprocess.run(local, capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as error:
            return StepResult(False, str(error))
        return _completed(done)

    def upload(self, member: RestoreMember, action: Upload) -> StepResult:
        target = Path(self.path(member, action.target))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if action.source is not None:
                shutil.copyfile(action.source, target)
            else:
                target.write_bytes(action.data or b"")
            os.chmod(target, action.mode)
        except OSError as error:
            return StepResult(False, str(error))
        return StepResult(True, "")


def run_plan(steps: list[Step], runner: NodeRunner, echo: Callable[[str], None]) -> None:
    """Run the steps in order, printing each; the first failure stops the restore."""
    for step in steps:
        who = f"{step.member.name} ({step.member.address})"
        action = step.action
        if isinstance(action, Run) and action.node_only and runner.local:
            echo(f"[{step.phase}] {who}: {step.what}: skipped (local run)")
            continue
        echo(f"[{step.phase}] {who}: {step.what}")
        if isinstance(action, Upload):
            result = runner.upload(step.member, action)
        else:
            result = runner.run(step.member, action.argv)
        if not result.ok:
            tail = " | ".join(result.output.splitlines()[-5:]) or "no output"
            raise RestoreError(
                f"{who}: {step.phase} step '{step.what}' failed: {tail}; fix it on the node "
                "and run the restore again (it starts over from the same snapshot)"
            )
