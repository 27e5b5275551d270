"""Time from "start joining" to "caught-up voting member" for a 4th etcd node.

Side by side in the same run, on a fresh 3-node TLS etcd cluster on loopback each time:

* ``firstboot``: ``python -m plasmaboot.firstboot`` (learner add, env file, catch-up wait,
  promote; backoff with jitter starting at 0.2 s);
* ``etcdctl``: the real etcd client driven the way a careful shell script would do it
  (``member add --learner``, start etcd, ``member promote`` every 0.2 s until accepted,
  ``endpoint health``).

In both cases this script plays systemd and starts the joining etcd as soon as it may.
Usage: python bench/firstboot/bench_join.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from plasmaboot.pki import init_ca, issue_node_cert

HOST = "127.0.0.1"
BASE_PORT = 17020  # node i: client BASE_PORT + 2i, peer BASE_PORT + 2i + 1


def client_url(i: int) -> str:
    return f"https://{HOST}:{BASE_PORT + 2 * i}"


def peer_url(i: int) -> str:
    return f"https://{HOST}:{BASE_PORT + 2 * i + 1}"


class Cluster:
    def __init__(self, root: Path, pki: Path) -> None:
        self.root, self.pki = root, pki
        self.processes: list[subprocess.Popen[bytes]] = []

    def tls_args(self) -> list[str]:
        cert, key, ca = self.pki / "node.crt", self.pki / "node.key", self.pki / "ca.crt"
        return [
            "--cert-file", str(cert), "--key-file", str(key), "--trusted-ca-file", str(ca),
            "--client-cert-auth", "--peer-cert-file", str(cert), "--peer-key-file", str(key),
            "--peer-trusted-ca-file", str(ca), "--peer-client-cert-auth",
        ]  # fmt: skip

    def start(self, i: int, env: dict[str, str]) -> None:
        argv = [
            "etcd", "--data-dir", str(self.root / f"node{i}.etcd"),
            "--listen-client-urls", client_url(i), "--advertise-client-urls", client_url(i),
            "--listen-peer-urls", peer_url(i), "--log-level", "error", "--logger", "zap",
            *self.tls_args(),
        ]  # fmt: skip
        log = (self.root / f"node{i}.log").open("ab")
        full_env = {"PATH": os.environ["PATH"], **env}
        self.processes.append(subprocess.Popen(argv, stdout=log, stderr=log, env=full_env))

    def bootstrap(self) -> None:
        cluster = ",".join(f"node0{i}={peer_url(i)}" for i in (1, 2, 3))
        for i in (1, 2, 3):
            env = {"ETCD_NAME": f"node0{i}", "ETCD_INITIAL_CLUSTER": cluster}
            env |= {"ETCD_INITIAL_ADVERTISE_PEER_URLS": peer_url(i)}
            env |= {"ETCD_INITIAL_CLUSTER_STATE": "new"}
            self.start(i, env)
        deadline = time.monotonic() + 30
        while self.etcdctl("endpoint", "health", endpoints=client_url(1)).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("bootstrap cluster did not become healthy")
            time.sleep(0.2)
        time.sleep(5.5)  # etcd refuses reconfiguration until peers are connected for 5 s

    def etcdctl(self, *args: str, endpoints: str) -> subprocess.CompletedProcess[str]:
        argv = ["etcdctl", f"--endpoints={endpoints}", f"--cacert={self.pki / 'ca.crt'}"]
        argv += [f"--cert={self.pki / 'node.crt'}", f"--key={self.pki / 'node.key'}", *args]
        env = {"PATH": os.environ["PATH"], "ETCDCTL_API": "3"}
        return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def _existing_learner(cluster: Cluster, endpoints: str) -> tuple[str, dict[str, str]]:
    """An earlier ``member add`` that timed out client-side may still have succeeded."""
    listing = json.loads(
        cluster.etcdctl("member", "list", "-w", "json", endpoints=endpoints).stdout
    )
    mine = next(m for m in listing["members"] if peer_url(4) in m.get("peerURLs", []))
    initial = [
        f"{m.get('name') or 'node04'}={url}"
        for m in listing["members"]
        for url in m.get("peerURLs", [])
    ]
    env = {"ETCD_NAME": "node04", "ETCD_INITIAL_CLUSTER": ",".join(initial)}
    env |= {"ETCD_INITIAL_CLUSTER_STATE": "existing"}
    env |= {"ETCD_INITIAL_ADVERTISE_PEER_URLS": peer_url(4)}
    return format(int(mine["ID"]), "x"), env


def join_with_etcdctl(cluster: Cluster) -> float:
    start = time.monotonic()
    endpoints = ",".join(client_url(i) for i in (1, 2, 3))
    for _ in range(50):  # retried like firstboot: etcd may refuse while peers reconnect
        added = cluster.etcdctl(
            "member", "add", "node04", "--learner", f"--peer-urls={peer_url(4)}",
            endpoints=endpoints,
        )  # fmt: skip
        found = re.search(r"Member ([0-9a-f]+) added", added.stdout)
        if found is not None:
            member_id = found[1]
            env = dict(re.findall(r'^(ETCD_[A-Z_]+)="(.*)"$', added.stdout, re.MULTILINE))
            break
        if "Peer URLs already exists" in added.stderr:
            member_id, env = _existing_learner(cluster, endpoints)
            break
        time.sleep(0.2)
    else:
        raise RuntimeError(f"etcdctl member add failed: {added.stdout} {added.stderr}")
    cluster.start(4, env)
    while cluster.etcdctl("member", "promote", member_id, endpoints=endpoints).returncode:
        time.sleep(0.2)
    while cluster.etcdctl("endpoint", "health", endpoints=client_url(4)).returncode:
        time.sleep(0.2)
    return time.monotonic() - start


def join_with_firstboot(cluster: Cluster, pki: Path) -> tuple[float, float]:
    """Total wall time, and the join stage alone as the agent logs it (``elapsed_s``)."""
    state = cluster.root / "state"
    config = cluster.root / "cluster-config.json"
    config.write_text(
        json.dumps(
            {
                "node_id": "node04", "node_role": "worker", "bootstrap": False,
                "cluster_name": "bench", "cluster_backend": "etcd",
                "leader_url": client_url(1), "member_urls": [client_url(2), client_url(3)],
                "raft_addr": f"{HOST}:{BASE_PORT + 9}", "client_url": client_url(4),
                "flaredb_enabled": False, "retry_base_s": 0.2, "retry_cap_s": 2,
                "tls": {
                    "enabled": True, "ca_cert_path": str(pki / "ca.crt"),
                    "node_cert_path": str(pki / "node.crt"),
                    "node_key_path": str(pki / "node.key"),
                },
            }
        )
    )  # fmt: skip
    start = time.monotonic()
    argv = [sys.executable, "-m", "plasmaboot.firstboot", "--config", str(config)]
    agent = subprocess.Popen([*argv, "--state-dir", str(state)], stdout=subprocess.PIPE)
    env_file, started = state / "chainfire.env", False
    while agent.poll() is None:
        if not started and env_file.exists():
            lines = env_file.read_text().splitlines()
            cluster.start(4, dict(line.split("=", 1) for line in lines if line))
            started = True
        time.sleep(0.02)
    total = time.monotonic() - start
    if agent.returncode != 0:
        raise RuntimeError(f"firstboot exited {agent.returncode}")
    records = [json.loads(line) for line in agent.communicate()[0].splitlines()]
    stage = next(r["elapsed_s"] for r in records if r.get("status") == "joined")
    return total, float(stage)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory(prefix="pbf-bench-") as tmp:
        pki = Path(tmp) / "pki"
        init_ca(pki, "bench")
        issue_node_cert(pki, "node", None, [HOST])
        times: dict[str, list[float]] = {"firstboot": [], "etcdctl": [], "firstboot_stage": []}
        for n in range(rounds):
            order = ["firstboot", "etcdctl"] if n % 2 == 0 else ["etcdctl", "firstboot"]
            for method in order:
                cluster = Cluster(Path(tempfile.mkdtemp(dir=tmp)), pki)
                try:
                    cluster.bootstrap()
                    if method == "firstboot":
                        seconds, stage = join_with_firstboot(cluster, pki)
                        times["firstboot_stage"].append(stage)
                    else:
                        seconds = join_with_etcdctl(cluster)
                finally:
                    cluster.stop()
                times[method].append(seconds)
                print(f"round {n + 1} {method}: {seconds:.3f}s", flush=True)
    medians = {method: statistics.median(values) for method, values in times.items()}
    print(json.dumps({"rounds": rounds, "median_s": medians}, indent=2))
    print(f"ratio firstboot/etcdctl: {medians['firstboot'] / medians['etcdctl']:.2f}")
    print(
        f"ratio firstboot join stage/etcdctl: {medians['firstboot_stage'] / medians['etcdctl']:.2f}"
    )


if __name__ == "__main__":
    main()
