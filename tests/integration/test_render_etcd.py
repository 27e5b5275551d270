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
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_support import Cluster, Member, directives, missing_peer
from polling import wait_for
from test_firstboot_etcd import voting_names, wait_healthy

from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.inventory import parse_inventory
from plasmaboot.render.etcd import JOIN_ENV

pytestmark = pytest.mark.integration

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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    reason = missing_peer()
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
