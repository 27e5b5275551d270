"""Load a rendered nftables ruleset into a node namespace and probe it from a client.

Two namespaces of this test (pbr-*) joined by a veth pair carry the reference cluster's
production (10.0.200.0/24), management (10.0.10.0/24) and provisioning (10.0.100.0/24)
networks. A port the port matrix
opens for the node's profile and source must connect; a port it does not open, or opens only
to another source network, must be dropped (time out, not be refused). The same probes run
before the ruleset is loaded, to show the listeners are there and the drop is the firewall's.
SSH also admits the provisioning server's own address (10.0.100.10: install, rollout and
rollback), and no other provisioning address.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plasmaboot.inventory import load_inventory
from plasmaboot.render import RenderContext, render, write_files

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NODE_IP, CLUSTER_CLIENT, MANAGEMENT_CLIENT, NODE_MGMT_IP = (
    "10.0.200.10",
    "10.0.200.50",
    "10.0.10.5",
    "10.0.10.60",
)
SERVER, OTHER_PROVISIONING, NODE_PROVISIONING_IP = "10.0.100.10", "10.0.100.20", "10.0.100.50"
CLIENT_IPS = (CLUSTER_CLIENT, MANAGEMENT_CLIENT, SERVER, OTHER_PROVISIONING)
# 2380 Raft (cluster only), 2480 FlareDB Raft (control plane only), 22 SSH (management only),
# 9091 PrismNET API (in no profile but all-in-one).
PORTS = (2380, 2480, 22, 9091)

LISTENER = """
import socket, sys, time
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    socks.append(s)
print("ready", flush=True)
time.sleep(600)
"""

PROBE = """
import socket, sys
target = sys.argv[1]
for pair in sys.argv[2:]:
    source, port = pair.split(":")
    try:
        address = (target, int(port))
        socket.create_connection(address, timeout=1.0, source_address=(source, 0)).close()
        outcome = "open"
    except ConnectionRefusedError:
        outcome = "refused"
    except OSError:
        outcome = "dropped"
    print(f"{source}:{port}={outcome}")
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Topology:
    def __init__(self, suffix: str) -> None:
        self.node = f"pbr-fn{suffix}"
        self.client = f"pbr-fc{suffix}"

    def up(self) -> None:
        ip("netns", "add", self.node)
        ip("netns", "add", self.client)
        ip("-n", self.node, "link", "add", "pbr-n0", "type", "veth", "peer", "name", "pbr-c0")
        ip("-n", self.node, "link", "set", "pbr-c0", "netns", self.client)
        for ns, dev, addresses in (
            (self.node, "pbr-n0", (NODE_IP, NODE_MGMT_IP, NODE_PROVISIONING_IP)),
            (self.client, "pbr-c0", CLIENT_IPS),
        ):
            for address in addresses:
                ip("-n", ns, "addr", "add", f"{address}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in (self.node, self.client):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def probe(self, pairs: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
        argv = [f"{source}:{port}" for source, port in pairs]
        result = subprocess.run(
            ["ip", "netns", "exec", self.client, sys.executable, "-c", PROBE, NODE_IP, *argv],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        outcomes: dict[tuple[str, int], str] = {}
        for line in result.stdout.split():
            key, outcome = line.split("=")
            source, port = key.split(":")
            outcomes[(source, int(port))] = outcome
        return outcomes


@pytest.fixture
def topology() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for binary in ("ip", "nft"):
        if shutil.which(binary) is None:
            print(f"SKIP reason: {binary} is not installed")
            pytest.skip(f"{binary} is not installed")
    topo = Topology(str(os.getpid() % 100000))
    try:
        topo.up()
        listener = subprocess.Popen(
            ["ip", "netns", "exec", topo.node, sys.executable, "-c", LISTENER, *map(str, PORTS)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
            yield topo
        finally:
            listener.kill()
            listener.wait(timeout=10)
    finally:
        topo.down()


PAIRS = [(CLUSTER_CLIENT, port) for port in PORTS] + [(MANAGEMENT_CLIENT, 22)]
SSH_PAIRS = [(SERVER, 22), (OTHER_PROVISIONING, 22), (MANAGEMENT_CLIENT, 22), (CLUSTER_CLIENT, 22)]


def load_profile(topo: Topology, tmp_path: Path, profile: str) -> None:
    inv = load_inventory(EXAMPLES / "plasmacloud" / "cluster.yaml")
    write_files(tmp_path, render("nftables", inv, RenderContext()))
    ruleset = str(tmp_path / f"{profile}.nft")
    subprocess.run(["ip", "netns", "exec", topo.node, "nft", "-f", ruleset], check=True, timeout=30)


def test_without_the_ruleset_every_listener_answers(topology: Topology) -> None:
    assert set(topology.probe(PAIRS + SSH_PAIRS).values()) == {"open"}


@pytest.mark.parametrize("profile", ["control-plane", "worker", "all-in-one"])
def test_ssh_is_open_to_the_provisioning_server_alone_on_that_network(
    topology: Topology, tmp_path: Path, profile: str
) -> None:
    load_profile(topology, tmp_path, profile)
    assert topology.probe(SSH_PAIRS) == {
        (SERVER, 22): "open",  # install, rollout, rollback
        (OTHER_PROVISIONING, 22): "dropped",  # not the whole provisioning network
        (MANAGEMENT_CLIENT, 22): "open",
        (CLUSTER_CLIENT, 22): "dropped",
    }


def test_control_plane_ruleset_admits_the_matrix_and_drops_the_rest(
    topology: Topology, tmp_path: Path
) -> None:
    load_profile(topology, tmp_path, "control-plane")
    assert topology.probe(PAIRS) == {
        (CLUSTER_CLIENT, 2380): "open",  # Chainfire Raft from the cluster network
        (CLUSTER_CLIENT, 2480): "open",  # FlareDB Raft: a control-plane service
        (CLUSTER_CLIENT, 22): "dropped",  # SSH only from management
        (CLUSTER_CLIENT, 9091): "dropped",  # PrismNET is not a control-plane service
        (MANAGEMENT_CLIENT, 22): "open",
    }


def test_worker_ruleset_drops_flaredb_raft(topology: Topology, tmp_path: Path) -> None:
    load_profile(topology, tmp_path, "worker")
    outcomes = topology.probe(PAIRS)
    assert outcomes[(CLUSTER_CLIENT, 2380)] == "open"  # workers run Chainfire
    assert outcomes[(CLUSTER_CLIENT, 2480)] == "dropped"  # but not FlareDB
    assert outcomes[(MANAGEMENT_CLIENT, 22)] == "open"


def test_reloading_the_ruleset_replaces_only_its_own_table(
    topology: Topology, tmp_path: Path
) -> None:
    subprocess.run(
        ["ip", "netns", "exec", topology.node, "nft", "add", "table", "inet", "other"],
        check=True, timeout=30,
    )  # fmt: skip
    load_profile(topology, tmp_path, "worker")
    load_profile(topology, tmp_path, "control-plane")
    tables = subprocess.run(
        ["ip", "netns", "exec", topology.node, "nft", "list", "tables"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert sorted(tables.split("\n")[:-1]) == ["table inet other", "table inet plasmaboot"]
    assert topology.probe(PAIRS)[(CLUSTER_CLIENT, 2480)] == "open"
