"""DORA/s with the PostgreSQL store, one and two servers, against Kea's PostgreSQL lease
backend, with SQLite and Kea memfile beside them: one run, side by side, same load.

Systems (each round, each on a fresh database or state directory):
- `plasmaboot-sqlite`: one `plasmaboot serve` on its embedded SQLite store;
- `plasmaboot-pg`: one `plasmaboot serve --store postgresql://...`;
- `plasmaboot-pg-2`: two `serve` processes on that one database, on the same segment,
  each with its own address, both answering every client;
- `kea-pg`, `kea-pg-mt`: kea-dhcp4 with `lease-database: {type: postgresql}` on a schema
  made by `kea-admin db-init pgsql`, single-threaded (Kea 2.2's default) and with its
  multi-threading on (4 threads, as ISC measures it);
- `kea-memfile`: kea-dhcp4 with memfile (persist), as in run.py.

PostgreSQL 15 is the integration tests' server (initdb + pg_ctl in a temporary directory,
a plain login role), started with fsync and full page writes on; servers reach it by its
Unix socket. Topology: a switch namespace with a bridge, two server namespaces and one
client namespace plugged into it. perfdhcp (run.py's ladder: offered rates climb until 1%
of exchanges or more fail, then the gap is halved twice) plays one relay agent sending to
the first server's address, the same command for every system. For `plasmaboot-pg-2` an
nftables `dup` rule copies each of its packets to the second server, as a relay with two
helper addresses forwards every client packet to both (perfdhcp cannot broadcast: its
socket lacks SO_BROADCAST). Both OFFER; perfdhcp takes the first OFFER of a transaction
(a later one is an orphan, not a reply), REQUESTs it naming that server, and the other
server drops the REQUEST and its offer (RFC 2131 4.3.2); one ACK per client. So the
figure is what clients get from two servers answering together, not two halves of the
load added up; each server's ACK count is printed.

    sudo .venv/bin/python bench/dhcp/postgres.py --rounds 3 --seconds 4
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests/integration"), str(ROOT / "bench/dhcp")]
from dhcp_support import Namespaces  # noqa: E402
from run import Client, Step, climb, cluster_yaml, in_ns, kea_cmd, report  # noqa: E402
from test_fleet_two_servers import store_url  # noqa: E402
from test_store_postgres import Server as PgServer  # noqa: E402
from test_store_postgres import pg_server  # noqa: E402

SERVER_IPS = ("10.232.0.1", "10.232.0.3")
CLIENT_IP = "10.232.0.2"
PEERS = ("kea-pg", "kea-pg-mt")
READY_S = 60
HTTP_PORT = 8080  # serve's default boot port, where /metrics is


@dataclass
class Segment:
    """The switch's bridge with the client namespace and two server namespaces on it."""

    nets: Namespaces
    client: Client
    servers: list[tuple[str, str, str]]  # (namespace, interface, address)


@contextlib.contextmanager
def segment() -> Iterator[Segment]:
    nets = Namespaces()
    try:
        switch = nets.ns("w")
        bridge = nets.bridge(switch)
        client_ns = nets.ns("c")
        nets.link(switch, "pbdpc", client_ns, "pbdc")
        nets.plug(switch, bridge, "pbdpc")
        nets.exec(client_ns, "ip", "addr", "add", f"{CLIENT_IP}/16", "dev", nets.ifname("pbdc"))
        servers = []
        for i, address in enumerate(SERVER_IPS):
            ns = nets.ns(f"s{i}")
            nets.link(switch, f"pbdp{i}", ns, f"pbds{i}")
            nets.plug(switch, bridge, f"pbdp{i}")
            nets.exec(ns, "ip", "addr", "add", f"{address}/16", "dev", nets.ifname(f"pbds{i}"))
            servers.append((ns, nets.ifname(f"pbds{i}"), address))
        # The second server takes packets sent to the first (the relay's copies, below)
        # without claiming its address: it is on its loopback, and ARP answers only for
        # addresses on the interface asked.
        second = servers[1][0]
        nets.exec(second, "ip", "addr", "add", f"{SERVER_IPS[0]}/32", "dev", "lo")
        nets.exec(second, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
        yield Segment(nets, Client(client_ns, CLIENT_IP, SERVER_IPS[0]), servers)
    finally:
        nets.close()  # kills whatever still runs in the namespaces


@contextlib.contextmanager
def relayed(seg: Segment, servers: int) -> Iterator[None]:
    """With two servers, every packet perfdhcp (the relay) sends to the first goes to the
    second too, as a relay with two helper addresses sends each client packet to both."""
    if servers == 1:
        yield
        return
    rule = (
        "table ip pbdbench {\n chain out {\n  type filter hook output priority 0;\n"
        f"  ip daddr {SERVER_IPS[0]} udp dport 67 dup to {SERVER_IPS[1]}\n }}\n}}\n"
    )
    subprocess.run(in_ns(seg.client.ns, "nft", "-f", "-"), input=rule, text=True, check=True)
    try:
        yield
    finally:
        subprocess.run(in_ns(seg.client.ns, "nft", "delete", "table", "ip", "pbdbench"), check=True)


@dataclass
class Launch:
    """One server process to start: its namespace, argv and environment."""

    ns: str
    argv: list[str]
    env: dict[str, str]


def serve(seg: Segment, work: Path, store: str | None, count: int) -> list[Launch]:
    """`count` `plasmaboot serve` processes, each on its own server namespace."""
    launches = []
    for i, (ns, interface, address) in enumerate(seg.servers[:count]):
        (work / f"cluster-{i}.yaml").write_text(cluster_yaml(address, interface))
        argv = [
            sys.executable, "-m", "plasmaboot", "serve", "-c", str(work / f"cluster-{i}.yaml"),
            "--state-dir", str(work / f"state-{i}"), "--assets", str(work),
            "--interface", interface,
        ]  # fmt: skip
        # per-packet lines off, as for Kea; the store's password by the environment only
        env = {**os.environ, "PLASMABOOT_LOG_LEVEL": "WARNING"}
        if store:
            env["PLASMABOOT_STORE"] = store
        launches.append(Launch(ns, argv, env))
    return launches


def kea(seg: Segment, work: Path, store: str | None, threads: int = 0) -> list[Launch]:
    """kea-dhcp4 on the first server namespace; on PostgreSQL when `store` is given."""
    ns, interface, _ = seg.servers[0]
    database = None
    env = {**os.environ, "KEA_PIDFILE_DIR": str(work), "KEA_LOCKFILE_DIR": str(work)}
    if store:
        params = conninfo_to_dict(store)
        admin_env = {**env, "KEA_ADMIN_DB_PASSWORD": str(params["password"])}
        subprocess.run(
            ["kea-admin", "db-init", "pgsql", "-u", str(params["user"]), "-n",
             str(params["dbname"]), "-h", str(params["host"]), "-P", str(params["port"])],
            check=True, capture_output=True, env=admin_env, timeout=60,
        )  # fmt: skip
        database = {"type": "postgresql", **{k: str(params[k]) for k in ("host", "user")},
                    "name": str(params["dbname"]), "port": int(str(params["port"])),
                    "password": str(params["password"])}  # fmt: skip
    threading = {"enable-multi-threading": True, "thread-pool-size": threads,
                 "packet-queue-size": 64}  # fmt: skip
    settings: dict[str, object] | None = {"multi-threading": threading} if threads else None
    return [Launch(ns, kea_cmd(work, interface, database, settings), env)]


@dataclass(frozen=True)
class System:
    postgres: bool  # on a fresh database (else a fresh state directory)
    servers: int
    launches: Callable[[Segment, Path, str | None], list[Launch]]


SYSTEMS = {
    "plasmaboot-sqlite": System(False, 1, lambda seg, work, db: serve(seg, work, db, 1)),
    "plasmaboot-pg": System(True, 1, lambda seg, work, db: serve(seg, work, db, 1)),
    "plasmaboot-pg-2": System(True, 2, lambda seg, work, db: serve(seg, work, db, 2)),
    "kea-pg": System(True, 1, lambda seg, work, db: kea(seg, work, db)),
    "kea-pg-mt": System(True, 1, lambda seg, work, db: kea(seg, work, db, threads=4)),
    "kea-memfile": System(False, 1, lambda seg, work, db: kea(seg, work, db)),
}


@contextlib.contextmanager
def running(launches: list[Launch], work: Path) -> Iterator[None]:
    """Start the processes, wait until each has its DHCP port bound; stop them by PID."""
    procs = []
    try:
        for n, launch in enumerate(launches):
            with (work / f"server-{n}.log").open("w") as log:
                argv = in_ns(launch.ns, *launch.argv)
                procs.append(
                    subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=launch.env)
                )
        deadline = time.monotonic() + READY_S
        for n, (launch, proc) in enumerate(zip(launches, procs, strict=True)):
            while not subprocess.run(in_ns(launch.ns, "ss", "-Hlun", "sport", "=", ":67"),
                                     capture_output=True, text=True).stdout.strip():  # fmt: skip
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (work / f"server-{n}.log").read_text()
                    raise RuntimeError(f"{launch.argv[0]} in {launch.ns} not up: {log_text}")
                time.sleep(0.2)
        time.sleep(1.0)  # let start-up work (migrations, inventory import) settle
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# The fleet test's database: fresh, by its Unix socket (reachable from every namespace),
# dropped afterwards.
fresh_database = contextlib.contextmanager(store_url.__wrapped__)


def measure(name: str, seg: Segment, pg: PgServer, seconds: int, tmp: Path) -> Step:
    system = SYSTEMS[name]
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp))
    database = fresh_database(pg) if system.postgres else contextlib.nullcontext(None)
    with (
        database as db,
        running(system.launches(seg, work, db), work),
        relayed(seg, system.servers),
    ):
        best = climb(name, seconds, seg.client, refine=2)
        if system.servers > 1:
            print(f"  {name}: ACKs sent per server {acks_per_server(seg, system.servers)}")
        return best


def acks_per_server(seg: Segment, servers: int) -> list[int]:
    """Each server's ACK count from its /metrics: proof that both answered, and how often."""
    counts = []
    for ns, _, _ in seg.servers[:servers]:
        metrics = subprocess.run(
            in_ns(ns, "curl", "-sf", f"http://127.0.0.1:{HTTP_PORT}/metrics"),
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        found = re.search(r'^plasmaboot_dhcp_events_total\{event="sent_ack"\} ([\d.]+)$',
                          metrics, re.M)  # fmt: skip
        counts.append(int(float(found.group(1))) if found else 0)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    load_before = os.getloadavg()
    results: dict[str, list[Step]] = {name: [] for name in args.systems}
    durable = contextlib.contextmanager(pg_server.__wrapped__)(durable=True)
    with durable as pg, segment() as seg, tempfile.TemporaryDirectory(prefix="pb-dhcp-pg-") as tmp:
        for round_no in range(1, args.rounds + 1):
            print(f"round {round_no}", flush=True)
            order = args.systems if round_no % 2 else args.systems[::-1]
            for name in order:
                results[name].append(measure(name, seg, pg, args.seconds, Path(tmp)))
    report(results, PEERS)
    print(f"load average before {load_before}, after {os.getloadavg()}, cpus {os.cpu_count()}")


if __name__ == "__main__":
    main()
