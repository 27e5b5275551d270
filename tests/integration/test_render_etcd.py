"""The rendered etcd flavour, run for real by Debian's etcd-server (/usr/bin/etcd, 3.4).

Each member is started the way its Debian etcd.service starts it: the environment is only
what the unit gives (this machine's /lib/systemd/system/etcd.service: its Environment=
lines, then its EnvironmentFile /etc/default/etcd, then the rendered drop-in's), nothing
inherited (env -i). The TLS files sit where the drop-in's LoadCredential= puts them, so
paths point into a temp dir: /run/credentials/etcd.service, /var/lib/etcd and the agent's
state dir are mapped there, nothing else is changed.

Three bootstrap members form a cluster from their files alone (`etcdctl endpoint health`
over TLS with client certificates). Then node04's first boot runs the real agent with its
rendered cluster-config.json: it adds the member and writes the file the drop-in names, and
the test plays etcd-join.path by starting node04's etcd once that file exists. Everything
listens on 127.0.83.x (loopback), with certificates from plasmaboot.pki.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from polling import wait_for
from test_firstboot_etcd import voting_names, wait_healthy

from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.firstboot.config import TLSFiles
from plasmaboot.inventory import Inventory, parse_inventory
from plasmaboot.pki import init_ca, issue_node_cert
from plasmaboot.render import RenderContext, render
from plasmaboot.render.common import SECRETS_DIR
from plasmaboot.render.etcd import CREDENTIALS_DIR, JOIN_ENV

pytestmark = pytest.mark.integration

DEBIAN_UNIT = Path("/lib/systemd/system/etcd.service")
NET = "127.0.83"
INVENTORY = {
    "cluster": {"name": "rtest", "domain": "etcd.test", "store": "etcd"},
    "networks": [{"name": "provisioning", "vlan": 100, "subnet": f"{NET}.0/24"}],
    "server": {"provisioning_ip": f"{NET}.1"},
    "profiles": {
        "control-plane": {"role": "control-plane", "services": ["chainfire"], "image": "x"},
        "worker": {"role": "worker", "services": ["chainfire"], "image": "x"},
    },
    "images": {"x": {"kernel": "x/vmlinuz", "initrd": "x/initrd"}},
    "nodes": [
        {
            "hostname": f"node0{i}",
            "macs": [f"52:54:00:83:00:0{i}"],
            "profile": "control-plane" if i < 4 else "worker",
            "provisioning_ip": f"{NET}.1{i}",
            "bootstrap": i < 4,
        }
        for i in (1, 2, 3, 4)
    ],
}


def _missing_peer() -> str | None:
    for binary in ("etcd", "etcdctl"):
        if shutil.which(binary) is None:
            return f"{binary} not installed (Debian packages etcd-server, etcd-client)"
    if not DEBIAN_UNIT.exists():
        return f"{DEBIAN_UNIT} missing (Debian package etcd-server)"
    return None


def env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as systemd's EnvironmentFile= reads these files (comments skipped)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def directives(text: str, key: str) -> list[str]:
    return re.findall(rf"^{key}=(.*)$", text, re.MULTILINE)


@dataclass
class Member:
    """One node: its rendered files, and a temp dir standing in for its root."""

    hostname: str
    ip: str
    files: dict[str, str]
    root: Path

    @property
    def log(self) -> Path:
        return self.root / "etcd.log"

    def file(self, absolute: str) -> str:
        return self.files[f"nodes/{self.hostname}{absolute}"]

    @property
    def drop_in(self) -> str:
        return self.file("/etc/systemd/system/etcd.service.d/plasmaboot.conf")

    def mapped(self, path: str) -> str:
        """A node path as this test's stand-in root has it."""
        return str(self.root / path.lstrip("/"))

    def install_credentials(self, pki: Path) -> None:
        """What LoadCredential= does: the cluster-config TLS files, under the unit's name."""
        for line in directives(self.drop_in, "LoadCredential"):
            name, source = line.split(":", 1)
            assert source.startswith(f"{SECRETS_DIR}/")
            target = Path(self.mapped(f"{CREDENTIALS_DIR}/{name}"))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pki / source.removeprefix(f"{SECRETS_DIR}/"), target)

    def unit_environment(self) -> dict[str, str]:
        """Debian's etcd.service environment: Environment=, then every EnvironmentFile= in
        order (the unit's, then the drop-in's); a later file wins, a missing `-` one is
        skipped. Paths in the values are mapped into this member's root."""
        unit = DEBIAN_UNIT.read_text()
        env: dict[str, str] = {}
        for assignment in directives(unit, "Environment"):
            name, value = assignment.split("=", 1)
            env[name] = value.replace("%H", self.hostname)
        for spec in directives(unit, "EnvironmentFile") + directives(
            self.drop_in, "EnvironmentFile"
        ):
            path = spec.removeprefix("-").replace("%p", "etcd")
            rendered = self.files.get(f"nodes/{self.hostname}{path}")
            on_disk = Path(self.mapped(path))
            if rendered is not None:
                env |= env_file(rendered)
            elif on_disk.exists():
                env |= env_file(on_disk.read_text())
            else:
                assert spec.startswith("-"), f"{self.hostname}: {path} is required and missing"
        return {name: self._map_value(value) for name, value in env.items()}

    def _map_value(self, value: str) -> str:
        for prefix in (CREDENTIALS_DIR, "/var/lib/etcd"):
            if value.startswith(prefix):
                return self.mapped(value)
        return value


class Cluster:
    def __init__(self, root: Path, inv: Inventory) -> None:
        self.pki = root / "pki"
        init_ca(self.pki, inv.cluster.name)
        self.files = {
            path: content
            for path, content in render("systemd", inv, RenderContext()).items()
            if isinstance(content, str)
        }
        self.configs = render("cluster-config", inv, RenderContext())
        self.members: dict[str, Member] = {}
        self.etcdctl_binary = shutil.which("etcdctl") or "etcdctl"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        for node in inv.nodes:
            ip = str(node.provisioning_ip)
            # etcd checks a peer's client certificate against the connection's source
            # address. On a network that is the node's own address; on loopback every
            # connection comes from 127.0.0.1, so the test certificates carry it too.
            sans = [ip, "127.0.0.1"]
            issue_node_cert(self.pki, node.hostname, inv.fqdn(node), sans, days=30)
            member = Member(node.hostname, ip, self.files, root / node.hostname)
            member.install_credentials(self.pki)
            self.members[node.hostname] = member

    def start(self, hostname: str) -> None:
        """ExecStart=/usr/bin/etcd $DAEMON_ARGS with only the unit's environment."""
        member = self.members[hostname]
        env = member.unit_environment()
        assert directives(DEBIAN_UNIT.read_text(), "ExecStart") == ["/usr/bin/etcd $DAEMON_ARGS"]
        assert env.pop("DAEMON_ARGS") == ""
        with member.log.open("ab") as log:
            self.processes[hostname] = subprocess.Popen(
                ["/usr/bin/etcd"], env=env, stdout=log, stderr=log
            )

    def etcdctl(self, as_node: str, *args: str, endpoints: list[str]) -> str:
        argv = [
            self.etcdctl_binary, "--endpoints", ",".join(endpoints),
            "--cacert", str(self.pki / "ca.crt"),
            "--cert", str(self.pki / f"{as_node}.crt"),
            "--key", str(self.pki / f"{as_node}.key"),
            *args,
        ]  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, env={"ETCDCTL_API": "3"}
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    def client_tls(self, hostname: str) -> TLSFiles:
        return TLSFiles(
            self.pki / "ca.crt", self.pki / f"{hostname}.crt", self.pki / f"{hostname}.key"
        )

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = _missing_peer()
    if reason:
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    lab = Cluster(tmp_path_factory.mktemp("etcd-render"), parse_inventory(INVENTORY))
    try:
        yield lab
    finally:
        lab.stop()


def url(member: Member) -> str:
    return f"https://{member.ip}:2379"


def test_bootstrap_members_form_a_cluster_from_their_rendered_files(cluster: Cluster) -> None:
    bootstrap = [cluster.members[f"node0{i}"] for i in (1, 2, 3)]
    for member in bootstrap:
        cluster.start(member.hostname)
    endpoints = [url(m) for m in bootstrap]
    for member in bootstrap:
        with http_client(cluster.client_tls("node01")) as client:
            wait_healthy(client, url(member), timeout=60)
    health = cluster.etcdctl("node01", "endpoint", "health", endpoints=endpoints)
    assert health.count("is healthy") == 3, health
    members = cluster.etcdctl("node02", "member", "list", "-w", "json", endpoints=endpoints)
    names = sorted(m["name"] for m in json.loads(members)["members"])
    assert names == ["node01", "node02", "node03"]
    data_dir = Path(bootstrap[0].mapped("/var/lib/etcd/rtest"))
    assert (data_dir / "member").is_dir()  # the rendered data dir, not Debian's default


def test_joiner_first_boot_adds_the_member_and_its_etcd_starts_from_the_agent_file(
    cluster: Cluster,
) -> None:
    joiner = cluster.members["node04"]
    state_dir = Path(joiner.mapped(str(Path(JOIN_ENV).parent)))
    agent_file = Path(joiner.mapped(JOIN_ENV))
    # Until the agent wrote its file, systemd skips etcd.service: it cannot start yet.
    assert directives(joiner.drop_in, "ConditionPathExists") == [JOIN_ENV]
    assert directives(joiner.drop_in, "EnvironmentFile") == [JOIN_ENV]
    path_unit = joiner.file("/etc/systemd/system/etcd-join.path")
    assert directives(path_unit, "PathExists") == [JOIN_ENV]
    assert not agent_file.exists()

    doc = json.loads(cluster.configs["node04/cluster-config.json"])
    doc["tls"] |= {
        "ca_cert_path": str(cluster.pki / "ca.crt"),
        "node_cert_path": str(cluster.pki / "node04.crt"),
        "node_key_path": str(cluster.pki / "node04.key"),
    }
    config = joiner.root / "cluster-config.json"
    config.write_text(json.dumps(doc))
    argv = [sys.executable, "-m", "plasmaboot.firstboot", "--config", str(config)]
    argv += ["--stage", "chainfire", "--state-dir", str(state_dir)]
    log = joiner.root / "firstboot.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: agent_file.exists() or agent.poll() is not None, timeout=90)
        assert agent_file.exists(), log.read_text()
        cluster.start("node04")  # what etcd-join.path does
        assert agent.wait(timeout=120) == 0, log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert (state_dir / ".chainfire-joined").exists()
    env = joiner.unit_environment()
    assert env["ETCD_INITIAL_CLUSTER_STATE"] == "existing"
    assert "node04=https://127.0.83.14:2380" in env["ETCD_INITIAL_CLUSTER"]
    endpoints = [url(m) for m in cluster.members.values()]
    health = cluster.etcdctl("node04", "endpoint", "health", endpoints=endpoints)
    assert health.count("is healthy") == 4, health
    with http_client(cluster.client_tls("node04")) as client:
        assert voting_names(client, url(joiner)) == {"node01", "node02", "node03", "node04"}
