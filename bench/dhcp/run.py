"""DORA throughput and latency: plasmaboot vs kea-dhcp4 (memfile) vs dnsmasq, one run, side by side.

`plasmaboot` is the server as shipped (SQLite synchronous=FULL: every lease commit fsyncs
before its ACK); `plasmaboot-normal` is the same server with synchronous=NORMAL, the
setting before leases were made durable against power loss, to show what the fsync costs.

perfdhcp (Debian kea-admin) runs in its own network namespace and talks to each server over a
veth pair as a relay agent would (from its address, port 67, giaddr set). For every server
and every round, offered rates climb a ladder until more than 1% of exchanges fail; the best
rate under 1% drops and the latency percentiles at that rate are kept. Medians over rounds
and ratios to Kea and dnsmasq are printed as a Markdown table.

    sudo .venv/bin/python bench/dhcp/run.py --rounds 3 --seconds 4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TAG = f"{os.getpid() % 10000:04d}"
SERVER_NS, CLIENT_NS = f"pbdbs{TAG}", f"pbdbc{TAG}"
SERVER_IF, CLIENT_IF = f"pbdbsv{TAG}", f"pbdbcv{TAG}"
SERVER_IP, CLIENT_IP = "10.232.0.1", "10.232.0.2"
POOL = ("10.232.1.0", "10.232.255.254")
CLIENTS = 60000
LADDER = (  # up to 20,000/s: on a quiet machine Kea passes 10,000
    100, 250, 500, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000, 6000, 7000, 8000, 9000,
    10000, 11000, 12000, 14000, 16000, 18000, 20000,
)  # fmt: skip


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True).stdout


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


@contextmanager
def veth_pair() -> Iterator[None]:
    try:
        for ns in (SERVER_NS, CLIENT_NS):
            sh("ip", "netns", "add", ns)
            sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
        sh("ip", "link", "add", SERVER_IF, "type", "veth", "peer", "name", CLIENT_IF)
        for ns, ifname, address in (
            (SERVER_NS, SERVER_IF, SERVER_IP),
            (CLIENT_NS, CLIENT_IF, CLIENT_IP),
        ):
            sh("ip", "link", "set", ifname, "netns", ns)
            sh(*in_ns(ns, "ip", "addr", "add", f"{address}/16", "dev", ifname))
            sh(*in_ns(ns, "ip", "link", "set", ifname, "up"))
        yield
    finally:
        for ns in (SERVER_NS, CLIENT_NS):
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)


def cluster_yaml(server_ip: str, interface: str) -> str:
    """The bench's inventory: the /16 with the pool, three bootstrap nodes (never DHCP here)."""
    nodes = "".join(
        f"  - {{hostname: cp{i}, macs: ['52:54:00:cc:00:0{i}'], profile: cp, "
        f"provisioning_ip: 10.232.0.1{i}, bootstrap: true}}\n"
        for i in (1, 2, 3)
    )
    return (
        "cluster: {name: bench, domain: bench.internal}\n"
        "networks:\n"
        "  - name: provisioning\n    vlan: 100\n    subnet: 10.232.0.0/16\n"
        f"    dhcp: {{mode: full, lease_time: 3600, interface: {interface},\n"
        f"           pool: {{start: {POOL[0]}, end: {POOL[1]}}}}}\n"
        f"server: {{provisioning_ip: {server_ip}}}\n"
        "profiles: {cp: {role: control-plane, services: [chainfire], image: img}}\n"
        "images: {img: {kernel: k, initrd: i}}\n"
        f"nodes:\n{nodes}"
    )


def plasmaboot_cmd(work: Path) -> list[str]:
    (work / "cluster.yaml").write_text(cluster_yaml(SERVER_IP, SERVER_IF))
    return [
        sys.executable, "-m", "plasmaboot.dhcp", "-c", str(work / "cluster.yaml"),
        "--state-dir", str(work / "state"), "--interface", SERVER_IF, "--log-level", "WARNING",
    ]  # fmt: skip


def plasmaboot_normal_cmd(work: Path) -> list[str]:
    """The same server with SQLite synchronous=NORMAL (no fsync per commit)."""
    argv = plasmaboot_cmd(work)
    run_with_normal = (
        "import sys, runpy, plasmaboot.store.sqlite as s; s.SYNCHRONOUS = 'NORMAL'; "
        "sys.argv[0] = 'plasmaboot.dhcp'; runpy.run_module('plasmaboot.dhcp', run_name='__main__')"
    )
    return [argv[0], "-c", run_with_normal, *argv[3:]]


def kea_cmd(
    work: Path,
    interface: str = SERVER_IF,
    lease_database: dict[str, object] | None = None,
    settings: dict[str, object] | None = None,
) -> list[str]:
    """kea-dhcp4 on the bench's pool; memfile (persist) unless another lease database is
    given; `settings` go into Dhcp4 as they are (multi-threading, for one)."""
    memfile = {"type": "memfile", "persist": True, "name": str(work / "kea-leases4.csv"),
               "lfc-interval": 0}  # fmt: skip
    config = {
        "Dhcp4": {
            "interfaces-config": {"interfaces": [interface], "dhcp-socket-type": "udp"},
            "lease-database": lease_database or memfile,
            "valid-lifetime": 3600,
            "subnet4": [
                {"id": 1, "subnet": "10.232.0.0/16", "pools": [{"pool": f"{POOL[0]} - {POOL[1]}"}]}
            ],
            "loggers": [
                {"name": "kea-dhcp4", "severity": "WARN", "output_options": [{"output": "stdout"}]}
            ],
        }
    }
    config["Dhcp4"].update(settings or {})
    (work / "kea.json").write_text(json.dumps(config))
    (work / "kea.json").chmod(0o600)  # a database password may be in it
    return ["kea-dhcp4", "-c", str(work / "kea.json")]


def dnsmasq_cmd(work: Path) -> list[str]:
    return [
        "dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null", "--user=root",
        f"--interface={SERVER_IF}", "--bind-interfaces", "--no-ping", "--quiet-dhcp",
        f"--dhcp-range={POOL[0]},{POOL[1]},255.255.0.0,1h", "--dhcp-lease-max=70000",
        f"--dhcp-leasefile={work / 'dnsmasq.leases'}", f"--pid-file={work / 'dnsmasq.pid'}",
    ]  # fmt: skip


SERVERS: dict[str, Callable[[Path], list[str]]] = {
    "plasmaboot": plasmaboot_cmd,
    "plasmaboot-normal": plasmaboot_normal_cmd,
    "kea": kea_cmd,
    "dnsmasq": dnsmasq_cmd,
}


@dataclass
class Step:
    rate: float  # completed DORA exchanges per second
    drops: float  # fraction of exchanges that failed
    offer_p50_ms: float  # DISCOVER -> OFFER
    offer_p99_ms: float
    ack_p50_ms: float  # REQUEST -> ACK (includes the durable lease write)
    ack_p99_ms: float


FAILED = Step(0.0, 1.0, 0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class Client:
    """Where perfdhcp runs (namespace, its address: the giaddr) and where it sends."""

    ns: str = CLIENT_NS
    address: str = CLIENT_IP
    target: str = SERVER_IP


def perfdhcp(offered: int, seconds: int, client: Client) -> Step:
    out = subprocess.run(
        in_ns(
            client.ns, "perfdhcp", "-4", "-g", "single", "-l", client.address, "-r", str(offered),
            "-R", str(CLIENTS), "-p", str(seconds), "-x", "t", client.target,
        ),
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout  # fmt: skip
    sent = [int(n) for n in re.findall(r"sent packets: (\d+)", out)]
    received = [int(n) for n in re.findall(r"received packets: (\d+)", out)]
    if len(sent) < 2 or not sent[0]:
        return FAILED
    offer, ack = _delays_ms(out)
    return Step(
        rate=received[1] / seconds,
        drops=1 - received[1] / sent[0],
        offer_p50_ms=_percentile(offer, 50),
        offer_p99_ms=_percentile(offer, 99),
        ack_p50_ms=_percentile(ack, 50),
        ack_p99_ms=_percentile(ack, 99),
    )


def _percentile(values: list[float], pct: int) -> float:
    if len(values) < 2:
        return 0.0
    return statistics.quantiles(values, n=100)[pct - 1] if pct < 100 else max(values)


def _delays_ms(out: str) -> tuple[list[float], list[float]]:
    """Per-packet round trips from `-x t`: the DISCOVER-OFFER then the REQUEST-ACK section."""
    sections = re.split(r"\*\*\*Timestamps for packets: ", out)[1:]
    pairs = [re.findall(r"sent / received: ([\d.]+) / ([\d.]+)", sec) for sec in sections]
    delays = [[(float(rx) - float(tx)) * 1000 for tx, rx in found] for found in pairs]
    while len(delays) < 2:
        delays.append([])
    return delays[0], delays[1]


def climb(name: str, seconds: int, client: Client, refine: int = 0) -> Step:
    """Offered rates up the ladder until 1% or more fail; the best step under 1% drops.
    `refine`: that many halvings of the gap between the last rate passed and the first
    failed (the ladder's rungs are 250-1,000/s apart)."""
    best, passed, failed = FAILED, 0, 0
    for offered in LADDER:
        step = _step(name, offered, seconds, client)
        if step.drops >= 0.01:
            failed = offered
            break
        best, passed = step, offered
    for _ in range(refine if failed else 0):
        time.sleep(seconds)  # the failed step's backlog drains first
        offered = (passed + failed) // 2
        step = _step(name, offered, seconds, client)
        if step.drops >= 0.01:
            failed = offered
        else:
            best, passed = step, offered
    return best


def _step(name: str, offered: int, seconds: int, client: Client) -> Step:
    step = perfdhcp(offered, seconds, client)
    print(
        f"  {name:17s} offered {offered:6d}/s -> {step.rate:8.0f} DORA/s, "
        f"drops {step.drops:6.2%}, offer p50/p99 {step.offer_p50_ms:.2f}/"
        f"{step.offer_p99_ms:.2f} ms, ack p50/p99 {step.ack_p50_ms:.2f}/"
        f"{step.ack_p99_ms:.2f} ms",
        flush=True,
    )
    return step


def measure(name: str, seconds: int) -> Step:
    work = Path(tempfile.mkdtemp(prefix=f"pbd-bench-{name}-"))
    env = {**os.environ, "KEA_PIDFILE_DIR": str(work), "KEA_LOCKFILE_DIR": str(work)}
    log = (work / "server.log").open("w")
    proc = subprocess.Popen(
        in_ns(SERVER_NS, *SERVERS[name](work)), stdout=log, stderr=subprocess.STDOUT, env=env
    )
    try:
        time.sleep(2.0)
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {(work / 'server.log').read_text()}")
        return climb(name, seconds, Client())
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--servers", nargs="+", default=list(SERVERS), choices=list(SERVERS))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    results: dict[str, list[Step]] = {name: [] for name in args.servers}
    with veth_pair():
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}", flush=True)
            for name in args.servers:
                results[name].append(measure(name, args.seconds))
    medians = report(results, ("kea", "dnsmasq"))
    durable, normal = medians.get("plasmaboot"), medians.get("plasmaboot-normal")
    if durable and normal and normal.rate:
        print(f"\nfsync per commit: plasmaboot at {durable.rate / normal.rate:.2f}x of NORMAL")


def report(results: dict[str, list[Step]], peers: tuple[str, ...]) -> dict[str, Step]:
    """Print the medians over rounds as a Markdown table with ratios to `peers`; return them."""
    medians = {
        name: Step(*(statistics.median(getattr(s, f) for s in steps) for f in Step.__annotations__))
        for name, steps in results.items()
    }
    versus = "".join(f" vs {peer} |" for peer in peers)
    print(
        f"\n| server | DORA/s (<1% drops) |{versus} DISCOVER-OFFER p50 / p99 ms "
        "| REQUEST-ACK p50 / p99 ms |"
    )
    print("|---|---|" + "---|" * len(peers) + "---|---|")
    for name, m in medians.items():
        ratios = [
            f"{m.rate / medians[peer].rate:.2f}x" if peer in medians and medians[peer].rate else "-"
            for peer in peers
        ]
        print(
            f"| {name} | {m.rate:.0f} | {' | '.join(ratios)} | {m.offer_p50_ms:.2f} / "
            f"{m.offer_p99_ms:.2f} | {m.ack_p50_ms:.2f} / {m.ack_p99_ms:.2f} |"
        )
    print("per round:", {name: [round(s.rate) for s in steps] for name, steps in results.items()})
    return medians


if __name__ == "__main__":
    main()
