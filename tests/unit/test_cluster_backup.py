"""``cluster backup`` and ``cluster restore`` without a real cluster store: the snapshot
stream of a fake etcd gateway (the format checked against etcd 3.4 in
tests/integration/test_cluster_backup_restore.py), the archive (with a real SQLite store
and PKI), its verification, and the restore plan and its runners."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from plasmaboot.cluster import backup as backup_module
from plasmaboot.cluster import cli as cluster_cli
from plasmaboot.cluster.archive import ServerSources, restore_server_state
from plasmaboot.cluster.backup import BackupError, check_snapshot_file, take_backup
from plasmaboot.cluster.restore import (
    LocalRunner,
    NodePath,
    RestoreError,
    Run,
    SshRunner,
    Upload,
    plan_restore,
    restore_members,
    run_plan,
    verify_backup,
)
from plasmaboot.firstboot.config import build_config
from plasmaboot.inventory import parse_inventory
from plasmaboot.pki.authority import init_ca
from plasmaboot.render.etcd import JOIN_ENV
from plasmaboot.store import SqliteStore

DB = bytes(range(256)) * 300  # stands in for etcd's bbolt file
SNAPSHOT = DB + hashlib.sha256(DB).digest()
URLS = {"node01": "http://10.0.0.11:2379", "node02": "http://10.0.0.12:2379"}


def stream(data: bytes, chunk: int = 32768) -> bytes:
    """The gateway's newline-separated messages, as etcd 3.4 sends them."""
    lines = []
    for start in range(0, len(data), chunk):
        blob = data[start : start + chunk]
        result: dict[str, Any] = {"blob": base64.b64encode(blob).decode()}
        remaining = len(data) - start - len(blob)
        if remaining:
            result["remaining_bytes"] = str(remaining)
        lines.append(json.dumps({"result": result}))
    return ("\n".join(lines) + "\n").encode()


class FakeGateway:
    """node01 leads; `snapshots` maps a member's host to the body its snapshot call returns."""

    def __init__(self, snapshots: dict[str, bytes] | None = None) -> None:
        self.snapshots = snapshots or {}
        self.snapshot_calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, host = request.url.path, request.url.host
        header = {"cluster_id": "42", "member_id": "1", "revision": "17", "raft_term": "3"}
        if path == "/v3/cluster/member/list":
            members = [
                {"ID": str(i), "name": name, "peerURLs": [url.replace("2379", "2380")],
                 "clientURLs": [url]}
                for i, (name, url) in enumerate(URLS.items(), start=1)
            ]  # fmt: skip
            return httpx.Response(200, json={"header": header, "members": members})
        if path == "/v3/maintenance/status":
            return httpx.Response(200, json={"header": header, "leader": "1", "version": "3.4"})
        if path == "/health":
            return httpx.Response(200, json={"health": "true"})
        if path == "/v3/maintenance/snapshot":
            self.snapshot_calls.append(host)
            return httpx.Response(200, content=self.snapshots.get(host, stream(SNAPSHOT)))
        return httpx.Response(404)


def plan_for(backend: str = "etcd") -> Any:
    return build_config(
        {
            "node_id": "node01",
            "bootstrap": False,
            "cluster_name": "prod",
            "cluster_backend": backend,
            "leader_url": URLS["node01"],
            "member_urls": list(URLS.values()),
            "raft_addr": "10.0.0.11:2380",
            "flaredb_enabled": False,
        }
    )


@pytest.fixture(autouse=True)
def no_etcdctl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backup_module, "etcdctl_status", lambda path: None)


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> ServerSources:
    """A provisioning server's state: a SQLite store with the inventory, a CA."""
    root = tmp_path_factory.mktemp("server")
    inventory = root / "cluster.yaml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    store = SqliteStore.in_dir(root / "state")
    store.import_inventory(parse_inventory(INVENTORY))
    store.close()
    init_ca(root / "state" / "pki", "prod")
    return ServerSources(inventory, root / "state", root / "state")


def backup(
    tmp_path: Path, gateway: FakeGateway, server: ServerSources, backend: str = "etcd"
) -> Path:
    out = tmp_path / "backup.tar"
    with httpx.Client(transport=httpx.MockTransport(gateway)) as client:
        take_backup(plan_for(backend), client, out, server)
    return out


def unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def test_snapshot_trailer_is_the_sha256_of_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "snap.db"
    path.write_bytes(SNAPSHOT)
    check = check_snapshot_file(path)
    assert check.trailer_ok and check.size == len(SNAPSHOT)
    assert check.sha256 == hashlib.sha256(SNAPSHOT).hexdigest()
    path.write_bytes(SNAPSHOT[:-1] + b"\x00")
    assert not check_snapshot_file(path).trailer_ok
    path.write_bytes(b"short")
    assert not check_snapshot_file(path).trailer_ok


INVENTORY: dict[str, Any] = {
    "cluster": {"name": "prod", "domain": "example.test", "store": "etcd"},
    "networks": [{"name": "provisioning", "vlan": 100, "subnet": "10.0.0.0/24"}],
    "server": {"provisioning_ip": "10.0.0.1"},
    "profiles": {
        "control-plane": {"role": "control-plane", "services": ["chainfire"], "image": "x"},
        "worker": {"role": "worker", "services": ["chainfire"], "image": "x"},
    },
    "images": {"x": {"kernel": "x/vmlinuz", "initrd": "x/initrd"}},
    "nodes": [
        {
            "hostname": f"node0{i}",
            "macs": [f"52:54:00:00:00:0{i}"],
            "profile": "control-plane" if i < 4 else "worker",
            "provisioning_ip": f"10.0.0.1{i}",
            "bootstrap": i < 4,
        }
        for i in (1, 2, 3, 4)
    ],
}


def test_backup_is_one_0600_archive_of_the_leader_snapshot_and_the_server_state(
    tmp_path: Path, server: ServerSources
) -> None:
    gateway = FakeGateway()
    out = backup(tmp_path, gateway, server)
    assert gateway.snapshot_calls == ["10.0.0.11"]
    assert out.stat().st_mode & 0o777 == 0o600
    files = unpack(out, tmp_path / "x")
    assert (files / "chainfire.db").read_bytes() == SNAPSHOT
    manifest = json.loads((files / "manifest.json").read_text())
    [entry] = manifest["snapshots"]
    assert entry["member"] == {
        "name": "node01", "id": "1", "client_url": URLS["node01"], "role": "leader"
    }  # fmt: skip
    assert (entry["cluster_id"], entry["revision"], entry["raft_term"]) == ("42", 17, 3)
    assert entry["sha256"] == hashlib.sha256(SNAPSHOT).hexdigest()
    assert manifest["cluster_name"] == "prod" and manifest["taken_with"] == "node01"
    # plasmaboot's own state: an online copy of its store, the PKI, the inventory
    assert (files / "plasmaboot/pki/ca.key").stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load((files / "plasmaboot/cluster.yaml").read_text()) == INVENTORY
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    assert set(listed) >= {"chainfire.db", "plasmaboot/store.sqlite", "plasmaboot/pki/ca.crt",
                           "plasmaboot/pki/ca.key", "plasmaboot/cluster.yaml"}  # fmt: skip
    for name, digest in listed.items():
        assert hashlib.sha256((files / name).read_bytes()).hexdigest() == digest, name
    assert manifest["plasmaboot"]["store"]["kind"] == "sqlite"
    copy = SqliteStore(files / manifest["plasmaboot"]["store"]["file"])
    assert [n.hostname for n in copy.list_nodes()] == ["node01", "node02", "node03", "node04"]
    copy.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.tar", "x"]


def test_a_snapshot_aborted_by_the_leader_is_taken_from_a_follower(
    tmp_path: Path, server: ServerSources
) -> None:
    aborted = stream(SNAPSHOT)[:40000] + b'\n{"error":{"grpc_code":14,"message":"closing"}}\n'
    gateway = FakeGateway({"10.0.0.11": aborted})
    files = unpack(backup(tmp_path, gateway, server), tmp_path / "x")
    assert gateway.snapshot_calls == ["10.0.0.11", "10.0.0.12"]
    entry = json.loads((files / "manifest.json").read_text())["snapshots"][0]
    assert entry["member"]["name"] == "node02" and entry["member"]["role"] == "follower"
    assert (files / "chainfire.db").read_bytes() == SNAPSHOT


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (stream(SNAPSHOT)[:50000], "the stream broke off mid-message"),
        (b"\n".join(stream(SNAPSHOT).split(b"\n")[:2]), "bytes still due"),
        (stream(DB + bytes(32)), "does not match its own sha256 trailer"),
        (b'{"error":{"grpc_code":14,"message":"etcdserver: stopped"}}\n', "etcdserver: stopped"),
    ],
)
def test_no_complete_snapshot_fails_naming_every_member_and_leaves_nothing(
    tmp_path: Path, server: ServerSources, body: bytes, why: str
) -> None:
    gateway = FakeGateway({"10.0.0.11": body, "10.0.0.12": body})
    with pytest.raises(BackupError) as error:
        backup(tmp_path, gateway, server)
    assert why in str(error.value)
    assert "node01 (http://10.0.0.11:2379)" in str(error.value)
    assert "node02 (http://10.0.0.12:2379)" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_backup_never_overwrites_and_needs_the_server_state(
    tmp_path: Path, server: ServerSources
) -> None:
    (tmp_path / "backup.tar").write_text("x")
    with pytest.raises(BackupError, match="exists; backups never overwrite"):
        backup(tmp_path, FakeGateway(), server)
    (tmp_path / "backup.tar").unlink()
    elsewhere = ServerSources(server.inventory, tmp_path / "nothing", tmp_path / "nothing")
    with pytest.raises(BackupError, match=r"no cluster CA in .*--state-dir"):
        backup(tmp_path, FakeGateway(), elsewhere)
    assert list(tmp_path.iterdir()) == []


def test_chainfire_backend_is_refused_by_name(tmp_path: Path, server: ServerSources) -> None:
    with pytest.raises(BackupError, match="chainfire backend offers no snapshot API"):
        backup(tmp_path, FakeGateway(), server, backend="chainfire")
    assert list(tmp_path.iterdir()) == []


def damaged_copy(archive: Path, tmp_path: Path, damage: Any) -> Path:
    """The archive, repacked after `damage(files)` changed what was in it."""
    files = unpack(archive, tmp_path / "damaged")
    damage(files)
    copy = tmp_path / "damaged.tar"
    with tarfile.open(copy, "w") as tar:
        for path in sorted(files.rglob("*")):
            tar.add(path, arcname=path.relative_to(files).as_posix(), recursive=False)
    return copy


def test_verify_backup_refuses_damage_before_anything_is_touched(
    tmp_path: Path, server: ServerSources
) -> None:
    out = backup(tmp_path, FakeGateway(), server)
    verified = verify_backup(out, tmp_path / "ok")
    assert verified.snapshot == tmp_path / "ok" / "chainfire.db"
    assert verified.inventory == tmp_path / "ok" / "plasmaboot" / "cluster.yaml"

    def flip(name: str) -> Any:
        def damage(files: Path) -> None:
            data = bytearray((files / name).read_bytes())
            data[100] ^= 0xFF
            (files / name).write_bytes(bytes(data))

        return damage

    def resigned(files: Path) -> None:  # a snapshot damaged before the manifest was made
        flip("chainfire.db")(files)
        manifest = json.loads((files / "manifest.json").read_text())
        for entry in manifest["files"]:
            if entry["path"] == "chainfire.db":
                entry["sha256"] = hashlib.sha256((files / "chainfire.db").read_bytes()).hexdigest()
        (files / "manifest.json").write_text(json.dumps(manifest))

    cases = [
        (flip("chainfire.db"), "chainfire.db does not match its size and sha256"),
        (flip("plasmaboot/store.sqlite"), "store.sqlite does not match its size and sha256"),
        (lambda f: (f / "plasmaboot/pki/ca.key").unlink(), r"missing \['plasmaboot/pki/ca.key'\]"),
        (resigned, "trailer does not match"),
    ]
    for i, (damage, why) in enumerate(cases):
        copy = damaged_copy(out, tmp_path / f"case{i}", damage)
        with pytest.raises(RestoreError, match=why):
            verify_backup(copy, tmp_path / f"case{i}" / "into")
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(out.read_bytes()[:5000])
    with pytest.raises(RestoreError, match="the backup is damaged"):
        verify_backup(truncated, tmp_path / "t")
    with pytest.raises(RestoreError, match="no such file"):
        verify_backup(tmp_path / "none.tar", tmp_path / "n")


def test_server_state_comes_back_only_into_a_new_state_directory(
    tmp_path: Path, server: ServerSources
) -> None:
    verified = verify_backup(backup(tmp_path, FakeGateway(), server), tmp_path / "x")
    fresh = tmp_path / "new-server"
    lines = restore_server_state(verified.directory, verified.manifest, fresh, None)
    assert [line.split(" ")[0] for line in lines] == ["plasmaboot", "PKI", "inventory"]
    store = SqliteStore.in_dir(fresh)
    assert len(store.list_nodes()) == 4
    store.close()
    ca = server.state_dir / "pki" / "ca.crt"
    assert (fresh / "pki" / "ca.crt").read_bytes() == ca.read_bytes()
    assert (fresh / "pki" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (fresh / "cluster.yaml").read_text() == server.inventory.read_text()
    (fresh / "cluster.yaml").write_text("another inventory\n")
    with pytest.raises(Exception, match="is not empty: a restore never overwrites"):
        restore_server_state(verified.directory, verified.manifest, fresh, None)
    with pytest.raises(Exception, match="holds a SQLite store"):
        restore_server_state(verified.directory, verified.manifest, tmp_path / "pg",
                             "postgresql://u@127.0.0.1/db")  # fmt: skip


def test_restore_plan_checks_and_stops_everything_before_it_restores_anything() -> None:
    members = restore_members(parse_inventory(INVENTORY))
    assert [m.name for m in members] == ["node01", "node02", "node03", "node04"]
    steps = plan_restore(members, Path("/b/chainfire.db"), "STAMP")
    phases = [s.phase for s in steps]
    assert phases == sorted(phases, key=["check", "stop", "restore", "start"].index)
    restore = next(
        s.action.argv
        for s in steps
        if s.member.name == "node02" and isinstance(s.action, Run) and "restore" in s.action.argv
    )
    cluster = ",".join(f"node0{i}=https://10.0.0.1{i}:2380" for i in (1, 2, 3, 4))
    assert restore == (
        "env", "ETCDCTL_API=3", "etcdctl", "snapshot", "restore",
        "/var/lib/etcd/prod.restore-STAMP.db", "--name", "node02", "--initial-cluster", cluster,
        "--initial-cluster-token", "prod", "--initial-advertise-peer-urls",
        "https://10.0.0.12:2380", "--data-dir", "/var/lib/etcd/prod.restore-STAMP",
    )  # fmt: skip
    assert isinstance(restore[5], NodePath) and isinstance(restore[-1], NodePath)
    env_files = [s for s in steps if isinstance(s.action, Upload) and s.action.data is not None]
    assert [s.member.name for s in env_files] == ["node04"]  # the joiner's unit needs it
    assert env_files[0].action.target == JOIN_ENV
    starts = [s.action.argv for s in steps if s.phase == "start"]
    assert starts == [("systemctl", "start", "--no-block", "etcd.service")] * 4


def test_restore_refuses_a_chainfire_inventory() -> None:
    doc = {**INVENTORY, "cluster": {**INVENTORY["cluster"], "store": "chainfire"}}
    with pytest.raises(RestoreError, match="only the etcd store"):
        restore_members(parse_inventory(doc))


def test_ssh_runner_runs_each_step_as_root_in_batch_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    member = restore_members(parse_inventory(INVENTORY))[0]
    runner = SshRunner(["IdentityFile=/k"])
    assert runner.run(member, ["rm", "-f", NodePath("/var/lib/etcd/a b")]).ok
    options = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "IdentityFile=/k"]
    assert calls[-1] == ["ssh", *options, "root@10.0.0.11", "rm -f '/var/lib/etcd/a b'"]
    assert runner.upload(member, Upload(NodePath("/etc/x.env"), data=b"A=1\n", mode=0o644)).ok
    assert calls[-1][:-1] == ["ssh", *options, "root@10.0.0.11"]
    assert calls[-1][-1].startswith("sh -c 'umask 077 && mkdir -p -- ")
    assert calls[-1][-1].endswith(" sh /etc/x.env 644")


def test_local_swap_keeps_the_previous_data_dir(tmp_path: Path) -> None:
    member = restore_members(parse_inventory(INVENTORY))[0]
    steps = [s for s in plan_restore([member], tmp_path / "x.db", "S") if "swap" in s.what]
    base = tmp_path / "node01" / "var" / "lib" / "etcd"
    (base / "prod" / "member").mkdir(parents=True)
    (base / "prod.restore-S" / "member").mkdir(parents=True)
    (base / "prod.restore-S" / "member" / "new").touch()
    lines: list[str] = []
    run_plan(steps, LocalRunner(tmp_path), lines.append)
    assert (base / "prod" / "member" / "new").exists()
    assert (base / "prod.before-restore-S" / "member").is_dir()
    assert lines == [f"[restore] node01 (10.0.0.11): {steps[0].what}"]


def test_failed_step_stops_the_restore_naming_member_and_output(tmp_path: Path) -> None:
    member = restore_members(parse_inventory(INVENTORY))[1]
    steps = [s for s in plan_restore([member], tmp_path / "x.db", "S") if "swap" in s.what]
    with pytest.raises(RestoreError) as error:
        run_plan(steps, LocalRunner(tmp_path), lambda line: None)
    assert "node02 (10.0.0.12): restore step 'swap" in str(error.value)
    assert "No such file or directory" in str(error.value)


def test_restore_without_yes_prints_the_plan_and_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: ServerSources
) -> None:
    out = backup(tmp_path, FakeGateway(), server)
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(yaml.safe_dump(INVENTORY))

    def never(*args: Any) -> None:
        raise AssertionError("a step ran without --yes")

    monkeypatch.setattr(cluster_cli, "run_plan", never)
    args = ["restore", "--backup", str(out), "-c", str(inventory)]
    result = CliRunner().invoke(cluster_cli.app, args)
    assert result.exit_code == 1
    assert "[stop] node04: stop etcd.service" in result.output
    assert "pass --yes" in result.output
    other = {**INVENTORY, "cluster": {**INVENTORY["cluster"], "name": "staging"}}
    inventory.write_text(yaml.safe_dump(other))
    result = CliRunner().invoke(cluster_cli.app, [*args, "--yes"])
    assert result.exit_code == 1
    assert "backup of cluster prod" in result.output


def test_a_backup_that_fails_while_sealing_leaves_nothing(
    tmp_path: Path, server: ServerSources, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive holds the CA key: not even a partial one may stay behind."""

    def full_disk(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "add", full_disk)  # a fault no peer gives on demand
    with pytest.raises(OSError, match="No space left"):
        backup(tmp_path, FakeGateway(), server)
    assert list(tmp_path.iterdir()) == []


def test_a_restore_run_again_keeps_the_server_state_it_already_restored(
    tmp_path: Path, server: ServerSources
) -> None:
    verified = verify_backup(backup(tmp_path, FakeGateway(), server), tmp_path / "x")
    fresh = tmp_path / "new-server"
    restore_server_state(verified.directory, verified.manifest, fresh, None)
    again = restore_server_state(verified.directory, verified.manifest, fresh, None)
    assert again == [f"{fresh} already holds this backup's CA and inventory: kept as it is"]
    assert stat.S_IMODE((fresh / "pki").stat().st_mode) == 0o700
    assert [p.name for p in tmp_path.iterdir() if ".restoring-" in p.name] == []
