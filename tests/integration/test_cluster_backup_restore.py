"""Runbook 9.3/9.4 against a real 3-member TLS etcd 3.4 cluster (Debian's etcd-server).

The members run from plasmaboot's rendered files (`etcd_support.Cluster`, loopback
127.0.85.x, certificates from plasmaboot.pki). `cluster backup` takes a snapshot through the
gateway into one archive with plasmaboot's own store (SQLite, copied online while another
process keeps writing to it), PKI and inventory; keys written later must be gone after the
cluster is lost (every member stopped, every data directory wiped) and `cluster restore`
rebuilt it with the local runner, each member's files under its own root, and the
provisioning server's state into a new directory. A corrupted archive is refused before
anything is touched; a backup of an unreachable cluster leaves nothing behind. The SSH
runner's quoting and file transfer run against a real sshd on loopback.

The scenarios build on each other and run in file order on one module-scoped cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sqlite3
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from etcd_support import Cluster, missing_peer
from polling import wait_for
from ssh_support import SshHost, missing_sshd, running_sshd
from test_firstboot_etcd import cluster_verify_settled, kv_get, kv_put, wait_healthy
from typer.testing import CliRunner

from plasmaboot.cluster.cli import app as cluster_app
from plasmaboot.cluster.restore import NodePath, RestoreMember, SshRunner, Upload
from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.inventory import parse_inventory
from plasmaboot.store import SqliteStore

pytestmark = pytest.mark.integration

NET = "127.0.85"
NAMES = ("node01", "node02", "node03")
INVENTORY: dict[str, Any] = {
    "cluster": {"name": "bktest", "domain": "backup.test", "store": "etcd"},
    "networks": [{"name": "provisioning", "vlan": 100, "subnet": f"{NET}.0/24"}],
    "server": {"provisioning_ip": f"{NET}.1"},
    "profiles": {
        "control-plane": {"role": "control-plane", "services": ["chainfire"], "image": "x"},
    },
    "images": {"x": {"kernel": "x/vmlinuz", "initrd": "x/initrd"}},
    "nodes": [
        {
            "hostname": f"node0{i}",
            "macs": [f"52:54:00:85:00:0{i}"],
            "profile": "control-plane",
            "provisioning_ip": f"{NET}.1{i}",
            "bootstrap": True,
        }
        for i in (1, 2, 3)
    ],
}
UNREACHABLE = f"https://{NET}.99:2379"  # a loopback address nothing listens on


@dataclass
class Lab:
    cluster: Cluster
    root: Path
    inventory: Path
    config: Path
    backups: Path
    manifest: dict[str, Any] = field(default_factory=dict)


def url(name: str) -> str:
    return f"https://{NET}.1{name[-1]}:2379"


def data_dir(lab: Lab, name: str) -> Path:
    return Path(lab.cluster.members[name].mapped("/var/lib/etcd/bktest"))


def cli(*args: str) -> Any:
    return CliRunner().invoke(cluster_app, list(args), terminal_width=200)


def entries(lab: Lab) -> dict[str, list[str]]:
    """What each member's /var/lib/etcd holds: a restore would add, move or remove here."""
    return {name: sorted(p.name for p in data_dir(lab, name).parent.iterdir()) for name in NAMES}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = missing_peer()
    if reason:
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("etcd-backup")
    cluster = Cluster(root, parse_inventory(INVENTORY))
    inventory = root / "cluster.yaml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    doc = json.loads(cluster.configs["node01/cluster-config.json"])
    doc["tls"] |= {
        "ca_cert_path": str(cluster.pki / "ca.crt"),
        "node_cert_path": str(cluster.pki / "node01.crt"),
        "node_key_path": str(cluster.pki / "node01.key"),
    }
    config = root / "cluster-config.json"
    config.write_text(json.dumps(doc))
    backups = root / "backups"
    backups.mkdir()
    store = SqliteStore.in_dir(root)  # the provisioning server's: its PKI is root/pki
    store.import_inventory(parse_inventory(INVENTORY))
    store.close()
    try:
        yield Lab(cluster, root, inventory, config, backups)
    finally:
        cluster.stop()


def start_all(lab: Lab) -> None:
    for name in NAMES:
        lab.cluster.start(name)
    with http_client(lab.cluster.client_tls("node01")) as client:
        for name in NAMES:
            wait_healthy(client, url(name), timeout=60)


# A second process writing events into the store for as long as it runs, as serve would.
WRITER = """
import sys, time
from pathlib import Path
from plasmaboot.store import SqliteStore
store = SqliteStore.in_dir(Path(sys.argv[1]))
for i in range(100000):
    store.record("node01", "writer-tick", "test", {"i": i})
    if i == 20:
        print("writing", flush=True)
"""


def backup_args(lab: Lab, out: Path) -> list[str]:
    return ["backup", "-c", str(lab.config), "--out", str(out), "--inventory",
            str(lab.inventory), "--state-dir", str(lab.root)]  # fmt: skip


def unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def test_backup_takes_a_verified_snapshot_through_the_api(lab: Lab) -> None:
    start_all(lab)
    with http_client(lab.cluster.client_tls("node01")) as client:
        for i in range(20):
            kv_put(client, url(NAMES[i % 3]), f"before/{i}", f"value {i}")
        status = client.post(f"{url('node01')}/v3/maintenance/status", json={}).json()
        members = client.post(f"{url('node01')}/v3/cluster/member/list", json={}).json()
    leader = next(m["name"] for m in members["members"] if m["ID"] == status["leader"])
    archive = lab.backups / "first.tar"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(lab.root)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        result = cli(*backup_args(lab, archive))
        assert writer.poll() is None, "the writer stopped before the backup ended"
    finally:
        writer.kill()
        writer.wait()
    assert result.exit_code == 0, result.output
    assert f"from {leader} (leader" in result.output
    assert "plasmaboot: its sqlite store" in result.output
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600
    out = unpack(archive, lab.root / "unpacked")

    manifest = json.loads((out / "manifest.json").read_text())
    lab.manifest = manifest
    assert manifest["format"] == "plasmaboot-cluster-backup/2"
    assert manifest["cluster_name"] == "bktest" and manifest["plasmaboot_version"]
    assert manifest["created"].endswith("Z")
    [entry] = manifest["snapshots"]
    snapshot = out / entry["file"]
    assert entry["service"] == "chainfire" and entry["backend"] == "etcd"
    assert entry["member"]["name"] == leader and entry["member"]["role"] == "leader"
    assert entry["cluster_id"] == status["header"]["cluster_id"]
    assert entry["revision"] >= int(status["header"]["revision"])
    assert entry["size"] == snapshot.stat().st_size
    assert entry["sha256"] == hashlib.sha256(snapshot.read_bytes()).hexdigest()
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    assert sorted(p.name for p in lab.backups.iterdir()) == ["first.tar"]  # no staging left
    # the store copied while the writer wrote: whole, consistent, and in the middle of it
    copy = out / manifest["plasmaboot"]["store"]["file"]
    with contextlib.closing(sqlite3.connect(f"file:{copy}?mode=ro", uri=True)) as db:
        ok = db.execute("PRAGMA integrity_check").fetchone()[0]
        ticks = db.execute("SELECT count(*) FROM events WHERE event = 'writer-tick'").fetchone()[0]
    assert ok == "ok" and ticks > 20, (ok, ticks)
    assert (out / "plasmaboot" / "pki" / "ca.crt").read_bytes() == (
        lab.cluster.pki / "ca.crt"
    ).read_bytes()

    checked = subprocess.run(
        ["etcdctl", "snapshot", "status", "-w", "json", str(snapshot)],
        capture_output=True, text=True, check=True, env={"ETCDCTL_API": "3"},
    )  # fmt: skip
    real = json.loads(checked.stdout)
    assert entry["etcdctl_status"]["revision"] == real["revision"] == entry["revision"]
    assert entry["etcdctl_status"]["hash"] == real["hash"]
    assert real["totalKey"] >= 20


def test_backup_of_an_unreachable_cluster_fails_clearly_and_leaves_nothing(lab: Lab) -> None:
    doc = json.loads(lab.config.read_text())
    doc |= {"leader_url": UNREACHABLE, "member_urls": [UNREACHABLE], "raft_addr": f"{NET}.99:2380"}
    config = lab.root / "unreachable.json"
    config.write_text(json.dumps(doc))
    out = lab.backups / "never.tar"
    result = cli(*backup_args(lab, out)[:2], str(config), *backup_args(lab, out)[3:])
    assert result.exit_code == 1
    assert UNREACHABLE in result.output
    assert "leader_url" in result.output and "member_urls" in result.output
    assert not out.exists()
    assert sorted(p.name for p in lab.backups.iterdir()) == ["first.tar"]


def test_restore_refuses_a_corrupted_backup_before_touching_anything(lab: Lab) -> None:
    with http_client(lab.cluster.client_tls("node01")) as client:
        for i in range(5):
            kv_put(client, url("node02"), f"after/{i}", "written after the backup")
    damaged = lab.backups / "damaged.tar"
    data = bytearray((lab.backups / "first.tar").read_bytes())
    with tarfile.open(lab.backups / "first.tar") as tar:
        member = tar.getmember("chainfire.db")
        data[member.offset_data + member.size // 2] ^= 0xFF  # one flipped bit in the snapshot
    damaged.write_bytes(bytes(data))
    before = entries(lab)
    args = ["--runner", "local", "--local-root", str(lab.root), "--yes"]
    result = cli("restore", "--backup", str(damaged), "-c", str(lab.inventory), *args)
    assert result.exit_code == 1
    assert "chainfire.db does not match its size and sha256" in result.output
    assert "nothing was touched" in result.output
    assert "[check]" not in result.output and "[stop]" not in result.output

    unasked = cli("restore", "--backup", str(lab.backups / "first.tar"))  # its own inventory
    assert unasked.exit_code == 1
    assert "pass --yes" in unasked.output
    assert "[restore] node03: etcdctl snapshot restore" in unasked.output  # the plan, shown

    assert entries(lab) == before == {name: ["bktest"] for name in NAMES}
    with http_client(lab.cluster.client_tls("node01")) as client:
        for name in NAMES:
            wait_healthy(client, url(name), timeout=10)
        assert kv_get(client, url("node01"), "after/4") == "written after the backup"


def test_runbook_9_3_complete_loss_restored_from_the_backup(lab: Lab) -> None:
    lab.cluster.stop()
    for name in NAMES:
        shutil.rmtree(data_dir(lab, name))  # every member's disk is gone
    # The real command line, waiting for a healthy cluster (--verify-config) while the test
    # plays systemd: it starts the members once the restore has put their data in place.
    argv = [
        sys.executable, "-m", "plasmaboot", "cluster", "restore",
        "--backup", str(lab.backups / "first.tar"), "--yes",
        "--runner", "local", "--local-root", str(lab.root),
        "--server-state", str(lab.root / "new-server"),
        "--verify-config", str(lab.config), "--wait-s", "90",
    ]  # fmt: skip
    log = lab.root / "restore.log"
    with log.open("wb") as out:
        restore = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(
            lambda: "restored 3 members" in log.read_text() or restore.poll() is not None,
            timeout=120,
        ), log.read_text()
        output = log.read_text()
        assert "restored 3 members" in output, output
        for name in NAMES:
            assert f"[check] {name} ({NET}.1{name[-1]}): etcdctl is installed" in output
            assert f"[restore] {name} ({NET}.1{name[-1]}): etcdctl snapshot restore" in output
            assert f"[stop] {name} ({NET}.1{name[-1]}): stop etcd.service: skipped" in output
            assert (data_dir(lab, name) / "member" / "wal").is_dir()
            leftovers = [p.name for p in data_dir(lab, name).parent.iterdir()]
            assert leftovers == ["bktest"]  # the uploaded copy and the fresh dir are gone
        start_all(lab)
        assert restore.wait(timeout=120) == 0, log.read_text()
    finally:
        if restore.poll() is None:
            restore.kill()
            restore.wait()
    output = log.read_text()
    assert "every file's sha256 verified" in output
    # the provisioning server's state, rebuilt in a new directory from the archive
    assert f"[server] PKI (the cluster CA and every node's certificate) -> {lab.root}" in output
    new_server = lab.root / "new-server"
    assert (new_server / "pki" / "ca.key").read_bytes() == (lab.cluster.pki / "ca.key").read_bytes()
    assert (new_server / "cluster.yaml").read_text() == lab.inventory.read_text()
    restored = SqliteStore.in_dir(new_server)
    assert sorted(n.hostname for n in restored.list_nodes()) == list(NAMES)
    restored.close()
    assert "verified: 3 healthy members (node01, node02, node03), 1 leader" in output
    code, reports = cluster_verify_settled(
        lab.config, "--expect-members", "3", "--min-cert-days", "1"
    )
    assert code == 0, reports
    assert sorted(m["name"] for m in reports[0]["members"]) == list(NAMES)
    with http_client(lab.cluster.client_tls("node02")) as client:
        for name in NAMES:
            assert kv_get(client, url(name), "before/19") == "value 19"
        assert kv_get(client, url("node03"), "before/0") == "value 0"
        assert kv_get(client, url("node01"), "after/0") == ""  # written after the backup
        kv_put(client, url("node03"), "restored/works", "yes")
        assert kv_get(client, url("node01"), "restored/works") == "yes"
    endpoints = [url(name) for name in NAMES]
    health = lab.cluster.etcdctl("node01", "endpoint", "health", endpoints=endpoints)
    assert health.count("is healthy") == 3, health


SSHD_PORT = 17131


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    """A real sshd on loopback taking root logins with a test key."""
    if (reason := missing_sshd()) is not None:
        pytest.skip(reason)
    with running_sshd(tmp_path_factory.mktemp("restore-sshd"), SSHD_PORT) as host:
        yield host


def test_ssh_runner_runs_steps_and_copies_files_through_real_ssh(
    sshd: SshHost, tmp_path: Path
) -> None:
    """The SSH runner's quoting and scp target, with the real programs (`--ssh-option`)."""
    runner = SshRunner(sshd.options())
    member = RestoreMember("node01", "127.0.0.1", "https://x:2380", "/d", "t", True)
    target = NodePath(str(tmp_path / "a dir" / "chainfire.env"))
    (tmp_path / "a dir").mkdir()
    assert runner.upload(member, Upload(target, data=b"A='1 2'\n", mode=0o640)).ok
    assert Path(target).read_bytes() == b"A='1 2'\n"
    assert stat.S_IMODE(Path(target).stat().st_mode) == 0o640
    done = runner.run(member, ["sh", "-c", 'echo "$1"; exit 3', "sh", "it's $HOME"])
    assert not done.ok and done.output == "it's $HOME"
    nested = NodePath(str(tmp_path / "new" / "dir" / "x"))
    assert runner.upload(member, Upload(nested, data=b"")).ok  # parents made, as locally
    assert stat.S_IMODE(Path(nested).stat().st_mode) == 0o600
    refused = runner.upload(member, Upload(NodePath("/proc/x/y"), data=b""))
    assert not refused.ok and "/proc/x" in refused.output
