"""Load a rendered firewall (nftables, iptables-restore + ip6tables-restore) into a node
namespace and probe it from a client.

Two namespaces of this test (pbr-*) joined by a veth pair carry the reference cluster's
production (10.0.200.0/24), management (10.0.10.0/24) and provisioning (10.0.100.0/24)
networks. A port the port matrix
opens for the node's profile and source must connect; a port it does not open, or opens only
to another source network, must be dropped (time out, not be refused). The same probes run
before the ruleset is loaded, to show the listeners are there and the drop is the firewall's.
SSH and the cluster store's client APIs also admit the provisioning server's own address
(10.0.100.10: install, rollout, rollback, cluster verify), and no other provisioning address;
the client APIs are otherwise open to the cluster network only (not the whole site). IPv6,
for which the inventory names no network, is dropped but for what is open to any source.
Every flavour that can be loaded runs every probe. The provisioning server's own ruleset is
probed the same way, with a real TFTP transfer through it (its data comes back to an
ephemeral port, which only conntrack admits).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from polling import wait_for

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
NODE6, CLIENT6 = "fd00:7062::10", "fd00:7062::50"
CLIENT_IPS = (CLUSTER_CLIENT, MANAGEMENT_CLIENT, SERVER, OTHER_PROVISIONING)
# 2380 Raft (cluster only), 2480 FlareDB Raft (control plane only), 22 SSH (management only),
# 9091 PrismNET API (in no profile but all-in-one), 2379 Chainfire client API (cluster and
# the provisioning server), 8080 the provisioning server's HTTP boot port.
PORTS = (2380, 2480, 22, 9091, 2379, 8080)
FLAVOURS = ("nftables", "iptables")

LISTENER = """
import socket, sys, time
socks = []
for port in map(int, sys.argv[1:]):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 and IPv6
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(16)
    socks.append(s)
print("ready", flush=True)
time.sleep(600)
"""

PROBE = """
import socket, sys
target4, target6 = sys.argv[1:3]
for pair in sys.argv[3:]:
    source, port = pair.rsplit("/", 1)
    target = target6 if ":" in source else target4
    try:
        address = (target, int(port))
        socket.create_connection(address, timeout=1.0, source_address=(source, 0)).close()
        outcome = "open"
    except ConnectionRefusedError:
        outcome = "refused"
    except OSError:
        outcome = "dropped"
    print(f"{source}/{port}={outcome}")
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
            address6 = NODE6 if ns == self.node else CLIENT6
            ip("-n", ns, "addr", "add", f"{address6}/64", "dev", dev, "nodad")
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in (self.node, self.client):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def probe(self, pairs: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
        argv = [f"{source}/{port}" for source, port in pairs]
        result = subprocess.run(
            ["ip", "netns", "exec", self.client, sys.executable, "-c", PROBE, NODE_IP, NODE6,
             *argv],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        outcomes: dict[tuple[str, int], str] = {}
        for line in result.stdout.split():
            key, outcome = line.split("=")
            source, port = key.rsplit("/", 1)
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
CLIENT_API_PAIRS = [(source, 2379) for source in CLIENT_IPS]
IPV6_PAIRS = [(CLIENT6, port) for port in PORTS]


def load(topo: Topology, tmp_path: Path, stem: str, flavour: str = "nftables") -> None:
    """Render `flavour` from the reference inventory and load the ruleset `stem` (a
    profile, or server/provisioning-server) into the node namespace."""
    inv = load_inventory(EXAMPLES / "plasmacloud" / "cluster.yaml")
    write_files(tmp_path, render(flavour, inv, RenderContext()))
    if flavour == "nftables":
        loads = [("nft", "-f", f"{stem}.nft")]
    else:
        for tool in ("iptables-restore", "ip6tables-restore"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} is not installed (Debian package iptables)")
        loads = [("iptables-restore", f"{stem}.rules"), ("ip6tables-restore", f"{stem}.rules6")]
    for *tool, name in loads:
        argv = ["ip", "netns", "exec", topo.node, *tool, str(tmp_path / name)]
        subprocess.run(argv, check=True, timeout=30)


def test_without_the_ruleset_every_listener_answers(topology: Topology) -> None:
    pairs = PAIRS + SSH_PAIRS + CLIENT_API_PAIRS + IPV6_PAIRS
    assert set(topology.probe(pairs).values()) == {"open"}


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("profile", ["control-plane", "worker", "all-in-one"])
def test_ssh_and_the_client_api_are_open_to_the_provisioning_server_alone_on_that_network(
    topology: Topology, tmp_path: Path, profile: str, flavour: str
) -> None:
    load(topology, tmp_path, profile, flavour)
    assert topology.probe(SSH_PAIRS + CLIENT_API_PAIRS) == {
        (SERVER, 22): "open",  # install, rollout, rollback
        (OTHER_PROVISIONING, 22): "dropped",  # not the whole provisioning network
        (MANAGEMENT_CLIENT, 22): "open",
        (CLUSTER_CLIENT, 22): "dropped",
        (SERVER, 2379): "open",  # cluster verify, backup, membership
        (OTHER_PROVISIONING, 2379): "dropped",
        (MANAGEMENT_CLIENT, 2379): "dropped",  # in the site (10.0.0.0/8), not the cluster
        (CLUSTER_CLIENT, 2379): "open",
    }


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_control_plane_ruleset_admits_the_matrix_and_drops_the_rest(
    topology: Topology, tmp_path: Path, flavour: str
) -> None:
    load(topology, tmp_path, "control-plane", flavour)
    assert topology.probe(PAIRS + IPV6_PAIRS) == {
        (CLUSTER_CLIENT, 2380): "open",  # Chainfire Raft from the cluster network
        (CLUSTER_CLIENT, 2480): "open",  # FlareDB Raft: a control-plane service
        (CLUSTER_CLIENT, 22): "dropped",  # SSH only from management
        (CLUSTER_CLIENT, 9091): "dropped",  # PrismNET is not a control-plane service
        (CLUSTER_CLIENT, 2379): "open",
        (CLUSTER_CLIENT, 8080): "open",  # IAM (HTTP), from the whole site
        (MANAGEMENT_CLIENT, 22): "open",
        # IPv6: the inventory names no IPv6 network, so none of these is open over it
        **{(CLIENT6, port): "dropped" for port in PORTS},
    }


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_worker_ruleset_drops_flaredb_raft(
    topology: Topology, tmp_path: Path, flavour: str
) -> None:
    load(topology, tmp_path, "worker", flavour)
    outcomes = topology.probe(PAIRS)
    assert outcomes[(CLUSTER_CLIENT, 2380)] == "open"  # workers run Chainfire
    assert outcomes[(CLUSTER_CLIENT, 2480)] == "dropped"  # but not FlareDB
    assert outcomes[(MANAGEMENT_CLIENT, 22)] == "open"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_provisioning_server_ruleset(topology: Topology, tmp_path: Path, flavour: str) -> None:
    """The HTTP boot port from the provisioning network (machines, agents) and management
    (scrapers), SSH from management, nothing over IPv6; TFTP through it for real."""
    load(topology, tmp_path, "server/provisioning-server", flavour)
    pairs = [(OTHER_PROVISIONING, 8080), (MANAGEMENT_CLIENT, 8080), (CLUSTER_CLIENT, 8080)]
    pairs += [(MANAGEMENT_CLIENT, 22), (OTHER_PROVISIONING, 22), (CLIENT6, 8080), (CLIENT6, 22)]
    assert topology.probe(pairs) == {
        (OTHER_PROVISIONING, 8080): "open",
        (MANAGEMENT_CLIENT, 8080): "open",
        (CLUSTER_CLIENT, 8080): "dropped",
        (MANAGEMENT_CLIENT, 22): "open",
        (OTHER_PROVISIONING, 22): "dropped",
        (CLIENT6, 8080): "dropped",
        (CLIENT6, 22): "dropped",
    }
    # from the provisioning network (source 10.0.100.x): every block arrives
    assert tftp_get(topology, tmp_path, NODE_PROVISIONING_IP) == TFTP_FILE_BYTES
    # from the cluster network (source 10.0.200.50): dropped
    assert tftp_get(topology, tmp_path, NODE_IP) is None


TFTP_FILE_BYTES = bytes(range(256)) * 40  # 10 KiB: 20 blocks, each ACKed to an ephemeral port


def tftp_get(topo: Topology, tmp_path: Path, target: str) -> bytes | None:
    """A real tftp-hpa client fetches a file from plasmaboot's TFTP server in the node
    namespace at `target` (the client's source is its address on that subnet); None when
    nothing came back."""
    if shutil.which("tftp") is None:
        pytest.skip("tftp is not installed (Debian package tftp-hpa)")
    root = tmp_path / "tftp-root"
    root.mkdir(exist_ok=True)
    (root / "ipxe.efi").write_bytes(TFTP_FILE_BYTES)
    server = subprocess.Popen(
        ["ip", "netns", "exec", topo.node, sys.executable, "-m", "plasmaboot.tftp",
         "--root", str(root), "--port", "69", "--log-level", "WARNING"],
    )  # fmt: skip
    got = tmp_path / f"got-{target}"
    try:
        assert wait_for(lambda: ":69 " in ns_exec(topo.node, "ss", "-Hnlu"), timeout=20)
        subprocess.run(
            ["ip", "netns", "exec", topo.client, "timeout", "8", "tftp", "-4", "-m", "binary",
             target, "-c", "get", "ipxe.efi", str(got)],
            capture_output=True, timeout=20, check=False,
        )  # fmt: skip
    finally:
        server.kill()
        server.wait(timeout=10)
    return got.read_bytes() if got.exists() and got.stat().st_size else None


def ns_exec(ns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def test_reloading_the_ruleset_replaces_only_its_own_table(
    topology: Topology, tmp_path: Path
) -> None:
    subprocess.run(
        ["ip", "netns", "exec", topology.node, "nft", "add", "table", "inet", "other"],
        check=True, timeout=30,
    )  # fmt: skip
    load(topology, tmp_path, "worker")
    load(topology, tmp_path, "control-plane")
    tables = subprocess.run(
        ["ip", "netns", "exec", topology.node, "nft", "list", "tables"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    assert sorted(tables.split("\n")[:-1]) == ["table inet other", "table inet plasmaboot"]
    assert topology.probe(PAIRS)[(CLUSTER_CLIENT, 2480)] == "open"
