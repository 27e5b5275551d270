"""First boot against real etcd 3.4 clusters, one network namespace per node, TLS from pki.

The harness plays systemd: it starts each bootstrap node's etcd itself, and for joining
nodes it starts etcd when ``firstboot`` has written the ``<service>.env`` EnvironmentFile
(etcd must be added as a member before it starts). "chainfire" is an etcd on 2379/2380,
"flaredb" a second etcd on 2479/2480, so the chained order is exercised for real.

The scenarios build on each other and run in file order on one module-scoped lab.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from plasmaboot.cluster.cli import app as cluster_app
from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.firstboot.config import TLSFiles
from plasmaboot.pki import init_ca, issue_node_cert

pytestmark = pytest.mark.integration

BRIDGE = "pbf-br0"
SUBNET = "172.31.171"
HOST_IP = f"{SUBNET}.1"
PORTS = {"chainfire": (2379, 2380), "flaredb": (2479, 2480)}
UNREACHABLE_URL = f"https://{HOST_IP}:17001"  # the harness host, nothing listens there


def _missing_peer() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for binary in ("etcd", "ip", "openssl"):
        if shutil.which(binary) is None:
            return f"{binary} not installed (Debian packages etcd-server, iproute2, openssl)"
    return None


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class Node:
    name: str
    index: int
    workdir: Path
    etcd: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    unit_env: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def netns(self) -> str:
        return f"pbf-n{self.index}"

    @property
    def ip(self) -> str:
        return f"{SUBNET}.{10 + self.index}"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def url(self, service: str = "chainfire") -> str:
        return f"https://{self.ip}:{PORTS[service][0]}"

    def peer_url(self, service: str = "chainfire") -> str:
        return f"https://{self.ip}:{PORTS[service][1]}"


class Lab:
    """Bridge + namespaces + CA; every etcd and namespace it made is torn down by PID/name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = root / "pki"
        self.nodes: dict[str, Node] = {}
        init_ca(self.pki, "pbf-test")
        self.remove_leftovers()
        _sh("ip", "link", "add", BRIDGE, "type", "bridge")
        _sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", BRIDGE)
        _sh("ip", "link", "set", BRIDGE, "up")

    def add_node(self, index: int) -> Node:
        node = Node(f"node{index:02d}", index, self.root / f"node{index:02d}")
        node.workdir.mkdir(parents=True, exist_ok=True)
        ns, host_end, ns_end = node.netns, f"pbf-v{index}", f"pbf-p{index}"
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _sh("ip", "link", "set", ns_end, "netns", ns)
        _sh("ip", "link", "set", host_end, "master", BRIDGE, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{node.ip}/24", "dev", ns_end)
        _sh("ip", "-n", ns, "link", "set", ns_end, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        issue_node_cert(self.pki, node.name, f"{node.name}.pbf.test", [node.ip], days=90)
        self.nodes[node.name] = node
        return node

    def tls(self, node: Node) -> dict[str, Any]:
        return {
            "enabled": True,
            "ca_cert_path": str(self.pki / "ca.crt"),
            "node_cert_path": str(self.pki / f"{node.name}.crt"),
            "node_key_path": str(self.pki / f"{node.name}.key"),
        }

    def client(self) -> httpx.Client:
        files = TLSFiles(self.pki / "ca.crt", self.pki / "node01.crt", self.pki / "node01.key")
        return http_client(files)

    def start_etcd(self, node: Node, service: str, env: dict[str, str] | None = None) -> None:
        data_dir = node.workdir / f"{service}.etcd"
        cert, key, ca = (
            self.pki / f"{node.name}.crt",
            self.pki / f"{node.name}.key",
            self.pki / "ca.crt",
        )
        argv = [
            "ip", "netns", "exec", node.netns, "etcd",
            "--data-dir", str(data_dir),
            "--listen-client-urls", node.url(service),
            "--advertise-client-urls", node.url(service),
            "--listen-peer-urls", node.peer_url(service),
            "--initial-cluster-token", f"pbf-{service}",
            "--cert-file", str(cert), "--key-file", str(key), "--trusted-ca-file", str(ca),
            "--client-cert-auth",
            "--peer-cert-file", str(cert), "--peer-key-file", str(key),
            "--peer-trusted-ca-file", str(ca), "--peer-client-cert-auth",
            "--log-level", "warn", "--logger", "zap",
        ]  # fmt: skip
        log = (node.workdir / f"{service}-etcd.log").open("ab")
        if env is not None:
            node.unit_env[service] = env  # a restart reuses the unit's environment
        process_env = {"PATH": os.environ["PATH"], **node.unit_env.get(service, {})}
        node.etcd[service] = subprocess.Popen(argv, stdout=log, stderr=log, env=process_env)

    def start_bootstrap_etcd(self, members: list[Node], service: str) -> None:
        cluster = ",".join(f"{n.name}={n.peer_url(service)}" for n in members)
        for node in members:
            self.start_etcd(
                node,
                service,
                {
                    "ETCD_NAME": node.name,
                    "ETCD_INITIAL_CLUSTER": cluster,
                    "ETCD_INITIAL_CLUSTER_STATE": "new",
                    "ETCD_INITIAL_ADVERTISE_PEER_URLS": node.peer_url(service),
                },
            )

    def stop_etcd(self, node: Node, service: str, sig: int = signal.SIGTERM) -> None:
        process = node.etcd.pop(service, None)
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout=20)

    @staticmethod
    def remove_leftovers() -> None:
        """What a killed earlier run left behind (names are fixed) would fail every setup."""
        for index in range(1, 10):
            ns = f"pbf-n{index}"
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["ip", "link", "del", f"pbf-v{index}"], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)

    def close(self) -> None:
        for node in self.nodes.values():
            for service in list(node.etcd):
                self.stop_etcd(node, service, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", node.netns], capture_output=True)
            subprocess.run(["ip", "link", "del", f"pbf-v{node.index}"], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def write_config(lab: Lab, node: Node, **overrides: Any) -> Path:
    bootstrap_urls = [lab.nodes[f"node0{i}"].url() for i in (1, 2, 3)]
    doc: dict[str, Any] = {
        "node_id": node.name,
        "node_role": "control-plane",
        "bootstrap": False,
        "cluster_name": "pbf-test",
        "cluster_backend": "etcd",
        "leader_url": lab.nodes["node01"].url(),
        "raft_addr": f"{node.ip}:2380",
        "member_urls": bootstrap_urls,
        "flaredb_member_urls": [u.replace(":2379", ":2479") for u in bootstrap_urls],
        "tls": lab.tls(node),
        "health_timeout_s": 30,
        "catch_up_timeout_s": 40,
        "join_max_attempts": 8,
        "retry_base_s": 0.5,
        "retry_cap_s": 4,
    }
    doc.update(overrides)
    path = node.workdir / "cluster-config.json"
    path.write_text(json.dumps(doc, indent=2))
    return path


@dataclass
class FirstBootRun:
    code: int
    lines: list[dict[str, Any]]
    seconds: float

    def messages(self) -> str:
        return "\n".join(str(line.get("message")) for line in self.lines)


class FirstBoot:
    """``firstboot`` in the node's namespace; starts etcd when the env file appears."""

    def __init__(
        self,
        lab: Lab,
        node: Node,
        config: Path,
        before_unit_start: Callable[[str], None] | None = None,
    ) -> None:
        self.lab, self.node, self.start = lab, node, time.monotonic()
        self.before_unit_start = before_unit_start
        argv = [sys.executable, "-m", "plasmaboot.firstboot", "--config", str(config)]
        argv += ["--state-dir", str(node.state_dir)]
        self.log_path = node.workdir / f"firstboot-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:  # a file, not a pipe: long runs never block
            self.process = subprocess.Popen(["ip", "netns", "exec", node.netns, *argv], stdout=log)

    def _start_units(self) -> None:
        for service in PORTS:
            env_file = self.node.state_dir / f"{service}.env"
            if env_file.exists() and service not in self.node.etcd:
                env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line)
                if self.before_unit_start:
                    self.before_unit_start(service)
                self.lab.start_etcd(self.node, service, env)

    def finished(self) -> FirstBootRun | None:
        self._start_units()
        if self.process.poll() is None:
            return None
        text = self.log_path.read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        return FirstBootRun(self.process.returncode, lines, time.monotonic() - self.start)

    def wait(self, timeout: float = 90) -> FirstBootRun:
        return wait_all([self], timeout)[0]


def wait_all(runs: list[FirstBoot], timeout: float = 90) -> list[FirstBootRun]:
    """Play systemd for every node at once: one node's join may wait on another's etcd.

    `runs` may grow while this waits (a hook can start a run at a chosen moment).
    """
    deadline = time.monotonic() + timeout
    results: dict[int, FirstBootRun] = {}
    while len(results) < len(runs):
        for index, run in enumerate(runs):
            if index not in results and (result := run.finished()) is not None:
                results[index] = result
        if time.monotonic() > deadline:
            for run in runs:
                run.process.kill()
            pytest.fail(f"firstboot did not finish in {timeout}s")
        time.sleep(0.1)
    return [results[index] for index in range(len(runs))]


def gateway(client: httpx.Client, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"{url}{path}", json=body)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def voting_names(client: httpx.Client, url: str) -> set[str]:
    members = gateway(client, url, "/v3/cluster/member/list", {})["members"]
    return {m["name"] for m in members if not m.get("isLearner")}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _missing_peer()
    if reason:
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    lab = Lab(tmp_path_factory.mktemp("pbf-lab"))
    try:
        for index in range(1, 8):
            lab.add_node(index)
        yield lab
    finally:
        lab.close()


BOOT_TIMES: dict[str, float] = {}


def test_three_bootstrap_nodes_form_one_cluster_concurrently(lab: Lab) -> None:
    first_three = [lab.nodes[f"node0{i}"] for i in (1, 2, 3)]
    peers = [f"{n.ip}:2380" for n in first_three]
    flaredb_peers = [f"{n.ip}:2480" for n in first_three]
    runs = []
    for node in first_three:
        config = write_config(
            lab, node, bootstrap=True, initial_peers=peers, flaredb_peers=flaredb_peers
        )
        runs.append(FirstBoot(lab, node, config))
    lab.start_bootstrap_etcd(first_three, "chainfire")
    lab.start_bootstrap_etcd(first_three, "flaredb")
    results = wait_all(runs)
    for node, result in zip(first_three, results, strict=True):
        assert result.code == 0, result.messages()
        for service in PORTS:
            assert (node.state_dir / f".{service}-initialized").exists()
    with lab.client() as client:
        assert voting_names(client, lab.nodes["node01"].url()) == {"node01", "node02", "node03"}
        assert voting_names(client, lab.nodes["node03"].url("flaredb")) == {
            "node01",
            "node02",
            "node03",
        }
    again = FirstBoot(lab, first_three[0], first_three[0].workdir / "cluster-config.json").wait()
    assert again.code == 0
    assert "nothing to do" in again.messages()
    assert not any(line["level"] == "ERROR" for line in again.lines)


def cluster_verify(config: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    result = CliRunner().invoke(cluster_app, ["verify", "--config", str(config), "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def cluster_verify_settled(config: Path, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Right after a membership change etcd's /health can time out on a busy 2-core box;
    an operator re-runs verify, so the test allows it 15 s to pass."""
    deadline = time.monotonic() + 15
    code, reports = cluster_verify(config, *args)
    while code != 0 and time.monotonic() < deadline:
        time.sleep(1)
        code, reports = cluster_verify(config, *args)
    return code, reports


def kv_put(client: httpx.Client, url: str, key: str, value: str) -> None:
    body = {"key": _b64(key), "value": _b64(value)}
    gateway(client, url, "/v3/kv/put", body)


def kv_get(client: httpx.Client, url: str, key: str) -> str:
    kvs = gateway(client, url, "/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else ""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_node04_joins_both_clusters_in_order_and_verify_shows_four_healthy(lab: Lab) -> None:
    node = lab.nodes["node04"]
    config = write_config(lab, node, node_role="worker")
    run = FirstBoot(lab, node, config).wait()
    assert run.code == 0, run.messages()
    BOOT_TIMES["node04 (chainfire + flaredb)"] = run.seconds
    joined = [line["service"] for line in run.lines if line.get("status") == "joined"]
    assert joined == ["chainfire", "flaredb"], run.messages()
    assert (node.state_dir / ".chainfire-joined").exists()
    assert (node.state_dir / ".flaredb-joined").exists()
    code, reports = cluster_verify_settled(config, "--expect-members", "4")
    assert code == 0, reports
    table = CliRunner().invoke(cluster_app, ["verify", "-c", str(config)], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "leader" in table.output and "node04" in table.output and "expires" in table.output
    code, expiring = cluster_verify(config, "--min-cert-days", "120")
    assert code == 1
    assert any("node04.crt expires in" in p for p in expiring[0]["problems"])
    for report in reports:
        members = report["members"]
        assert sorted(m["name"] for m in members) == ["node01", "node02", "node03", "node04"]
        assert all(m["healthy"] for m in members)
        assert sum(m["is_leader"] for m in members) == 1
    with lab.client() as client:
        kv_put(client, lab.nodes["node02"].url(), "pbf/written-on", "node02")
        assert kv_get(client, node.url(), "pbf/written-on") == "node02"


def _leader(client: httpx.Client, lab: Lab) -> Node:
    """The chainfire leader, asked of any member whose etcd is running."""
    url = next(n.url() for n in lab.nodes.values() if "chainfire" in n.etcd)
    status = gateway(client, url, "/v3/maintenance/status", {})
    members = gateway(client, url, "/v3/cluster/member/list", {})
    name = next(m["name"] for m in members["members"] if m["ID"] == status["leader"])
    return lab.nodes[name]


def wait_healthy(client: httpx.Client, url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get(f"{url}/health").json().get("health") == "true":
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not healthy within {timeout}s")


def test_join_completes_through_another_member_when_the_leader_is_killed(lab: Lab) -> None:
    """The leader dies after the learner was added, before it is promoted."""
    node = lab.nodes["node05"]
    with lab.client() as client:
        leader = _leader(client, lab)
    others = [lab.nodes[f"node0{i}"].url() for i in (1, 2, 3, 4)]
    config = write_config(
        lab, node, node_role="worker", flaredb_enabled=False,
        leader_url=leader.url(), member_urls=[u for u in others if u != leader.url()],
    )  # fmt: skip

    def kill_leader(service: str) -> None:
        lab.stop_etcd(leader, service, signal.SIGKILL)

    result = FirstBoot(lab, node, config, before_unit_start=kill_leader).wait(timeout=60)
    assert result.code == 0, result.messages()
    assert result.seconds < 60
    BOOT_TIMES["node05 (leader killed mid-join)"] = result.seconds
    with lab.client() as client:
        assert "node05" in voting_names(client, lab.nodes["node04"].url())
        assert _leader(client, lab) is not leader
    failed_at_leader = [
        line for line in result.lines if leader.url() in line.get("unreachable", {})
    ]
    assert failed_at_leader, "the dead leader was never tried: " + result.messages()
    lab.start_etcd(leader, "chainfire")  # "systemd" restarts the killed leader
    with lab.client() as client:
        wait_healthy(client, leader.url())
        assert kv_get(client, leader.url(), "pbf/written-on") == "node02"


def test_runbook_7_2_node02_removed_and_replacement_with_same_name_joins(lab: Lab) -> None:
    node = lab.nodes["node02"]
    operator_config = lab.nodes["node01"].workdir / "cluster-config.json"
    removed = CliRunner().invoke(
        cluster_app, ["remove", "--config", str(operator_config), "node02"]
    )
    assert removed.exit_code == 0, removed.output
    for service in PORTS:
        lab.stop_etcd(node, service)
        shutil.rmtree(node.workdir / f"{service}.etcd")
    shutil.rmtree(node.state_dir)  # the replacement machine has a fresh disk
    with lab.client() as client:
        assert "node02" not in voting_names(client, lab.nodes["node01"].url())
    config = write_config(lab, node)
    run = FirstBoot(lab, node, config).wait()
    assert run.code == 0, run.messages()
    BOOT_TIMES["node02 replacement (chainfire + flaredb)"] = run.seconds
    code, reports = cluster_verify_settled(config)
    assert code == 0, reports
    names = sorted(m["name"] for m in reports[0]["members"])
    assert names == ["node01", "node02", "node03", "node04", "node05"]


def test_two_nodes_joining_at_once_take_turns_as_the_single_learner(lab: Lab) -> None:
    nodes = [lab.nodes["node06"], lab.nodes["node07"]]
    configs = [write_config(lab, n, flaredb_enabled=False, join_max_attempts=12) for n in nodes]
    runs: list[FirstBoot] = []

    def start_node07(service: str) -> None:
        """node06 is a learner now and its etcd not even started: node07 must wait its turn."""
        if len(runs) == 1:
            runs.append(FirstBoot(lab, nodes[1], configs[1]))

    runs.append(FirstBoot(lab, nodes[0], configs[0], before_unit_start=start_node07))
    results = wait_all(runs, timeout=120)
    for result in results:
        assert result.code == 0, result.messages()
    BOOT_TIMES["node06 + node07 (node07 starts while node06 is a learner)"] = max(
        r.seconds for r in results
    )
    retried = [r for r in results if "join attempt failed" in r.messages()]
    assert retried, "one joiner should have backed off while the other was reconfiguring"
    with lab.client() as client:
        assert {"node06", "node07"} <= voting_names(client, lab.nodes["node01"].url())
    for node in nodes:
        lab.stop_etcd(node, "chainfire")  # keep node06 free for the failure scenarios
    operator_config = lab.nodes["node01"].workdir / "cluster-config.json"
    for name in ("node06", "node07"):
        args = ["remove", "-c", str(operator_config), "--service", "chainfire", name]
        removed = CliRunner().invoke(cluster_app, args)
        assert removed.exit_code == 0, removed.output
    shutil.rmtree(nodes[0].state_dir)


def test_join_with_unreachable_cluster_exits_1_naming_what_was_tried(lab: Lab) -> None:
    node = lab.nodes["node06"]
    config = write_config(
        lab, node, leader_url=UNREACHABLE_URL, member_urls=[UNREACHABLE_URL],
        join_max_attempts=3,
    )  # fmt: skip
    result = FirstBoot(lab, node, config).wait(timeout=30)
    assert result.code == 1
    errors = [line for line in result.lines if line["level"] == "ERROR"]
    assert errors and "after 3 attempts" in errors[-1]["message"]
    assert UNREACHABLE_URL in errors[-1]["message"]
    assert not (node.state_dir / ".chainfire-joined").exists()


def test_invalid_config_exits_3_naming_every_field(lab: Lab) -> None:
    node = lab.nodes["node06"]
    config = write_config(lab, node, raft_addr="node06:2380", leader_ulr="https://x:2379")
    result = FirstBoot(lab, node, config).wait(timeout=30)
    assert result.code == 3
    text = result.messages()
    assert "$.raft_addr" in text and "leader_ulr" in text


def test_already_a_member_exits_2_and_writes_the_marker(lab: Lab) -> None:
    node = lab.nodes["node04"]
    for service in PORTS:
        (node.state_dir / f".{service}-joined").unlink()
    result = FirstBoot(lab, node, node.workdir / "cluster-config.json").wait()
    assert result.code == 2, result.messages()
    assert (node.state_dir / ".chainfire-joined").exists()
    assert (node.state_dir / ".flaredb-joined").exists()


def test_report_join_times(lab: Lab) -> None:
    print("first boot to caught-up member:", json.dumps(BOOT_TIMES))
    assert BOOT_TIMES
