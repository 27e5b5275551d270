"""Two real `plasmaboot serve` processes on one real PostgreSQL, one segment: real DHCP
clients (udhcpc, dhclient) hear both servers at once, and no address is ever bound to
two clients, neither in the database nor in the clients' leases; a boot token one server
hands out is exchanged at the other; each server's admin API lists both servers and their
health, a killed one turns stale within the documented time, a stopped one says so.

Topology: a switch namespace with a bridge; each server in a namespace of its own on a
veth plugged into it (its own inventory file: the same fleet, its own server address);
every client a veth with its own MAC in one client namespace. The servers reach
PostgreSQL through its Unix socket (a path, so across network namespaces)."""

# ruff: noqa: F811  (pytest fixtures imported from the support modules)

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import psycopg
import pytest
from dhcp_support import (  # noqa: F401  (fixtures)
    KNOWN_IP,
    KNOWN_MAC,
    Namespaces,
    inventory_yaml,
    namespaces,
    require_root_and,
)
from polling import wait_for
from test_store_postgres import (
    ROLE,
    pg_server,  # noqa: F401  (fixture)
)
from test_store_postgres import Server as PgServer

from plasmaboot.provision.admin_tokens import AdminTokens, Scope
from plasmaboot.provision.servers import HEARTBEAT_S, STALE_AFTER_PERIODS, status_of
from plasmaboot.store.postgres import PostgresStore

pytestmark = pytest.mark.integration

SUBNET = "10.231.0.0/24"
GATEWAY = "10.231.0.254"
POOL = ("10.231.0.100", "10.231.0.125")  # 26 addresses for 20 pool clients: walks cross
SERVER_IPS = ("10.231.0.1", "10.231.0.2")
HTTP_PORT = 17540
UDHCPC_CLIENTS = 14
DHCLIENT_CLIENTS = 6


@pytest.fixture
def store_url(pg_server: PgServer) -> Iterator[str]:
    """A fresh database, by its Unix socket (reachable from every namespace)."""
    with pg_server.database() as url, pg_server.admin() as conn:
        row = conn.execute("SHOW unix_socket_directories").fetchone()
        assert row is not None
        socket_dir = row[0].split(",")[0].strip()
        dbname = url.rsplit("/", 1)[1]
        yield (
            f"postgresql://{ROLE}:{pg_server.role_password}@/{dbname}"
            f"?host={socket_dir}&port={pg_server.port}"
        )


@pytest.fixture
def serve_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=15)


def client_mac(n: int) -> str:
    return f"52:54:00:77:00:{n:02x}"


def start_fleet(
    nets: Namespaces, procs: list[subprocess.Popen[bytes]], tmp: Path, store_url: str
) -> tuple[str, list[Path]]:
    """The switch, both servers and the client namespace; (client ns, the servers' logs)."""
    switch = nets.ns("w")
    bridge = nets.bridge(switch)
    clients = nets.ns("c")
    logs = []
    for i, server_ip in enumerate(SERVER_IPS):
        ns = nets.ns(f"s{i}")
        nets.link(switch, f"pbdp{i}", ns, f"pbds{i}")
        nets.plug(switch, bridge, f"pbdp{i}")
        server_if = nets.ifname(f"pbds{i}")
        nets.exec(ns, "ip", "addr", "add", f"{server_ip}/24", "dev", server_if)
        inventory = tmp / f"cluster-{i}.yaml"
        inventory.write_text(
            inventory_yaml(
                "full", server_if, subnet=SUBNET, pool=POOL, server_ip=server_ip, gateway=GATEWAY
            )
        )
        log = tmp / f"serve-{i}.log"
        argv = [
            "ip", "netns", "exec", ns, sys.executable, "-m", "plasmaboot", "serve",
            "-c", str(inventory), "--state-dir", str(tmp / f"state-{i}"),
            "--assets", str(tmp), "--http-port", str(HTTP_PORT), "--tftp-port", "17541",
        ]  # fmt: skip
        # the password goes by the environment, never on a command line
        env = {**os.environ, "PLASMABOOT_STORE": store_url}
        with log.open("wb") as out:
            procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env))
        logs.append(log)
    for log in logs:
        assert wait_for(lambda log=log: "serving" in log.read_text(), 40), log.read_text()
    return clients, logs


def add_client(
    nets: Namespaces, switch: str, bridge: str, clients: str, name: str, mac: str
) -> str:
    nets.link(switch, f"pbdq{name}", clients, f"pbdc{name}", mac)
    nets.plug(switch, bridge, f"pbdq{name}")
    return nets.ifname(f"pbdc{name}")


def udhcpc(nets: Namespaces, ns: str, ifname: str, tmp: Path) -> subprocess.Popen[bytes]:
    out = tmp / f"{ifname}.udhcpc"
    script = tmp / f"{ifname}.sh"
    script.write_text(
        f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip $router $serverid" >> {out}\nexit 0\n'
    )
    script.chmod(0o755)
    # a NAK (the other server's client took the address) sends udhcpc back to DISCOVER
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "timeout", "-s", "KILL", "60", "udhcpc", "-i", ifname,
         "-n", "-q", "-f", "-t", "8", "-T", "2", "-A", "1", "-s", str(script)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def dhclient(nets: Namespaces, ns: str, ifname: str, tmp: Path) -> subprocess.Popen[bytes]:
    conf = tmp / f"{ifname}.conf"
    conf.write_text("timeout 40;\nretry 1;\n")
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "timeout", "-s", "KILL", "60", "dhclient", "-1", "-cf",
         str(conf), "-sf", "/bin/true", "-lf", str(tmp / f"{ifname}.leases"),
         "-pf", str(tmp / f"{ifname}.pid"), ifname],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def client_address(tmp: Path, ifname: str) -> str | None:
    udhcpc_out = tmp / f"{ifname}.udhcpc"
    if udhcpc_out.exists() and udhcpc_out.read_text().strip():
        return udhcpc_out.read_text().split()[-3]
    leases = tmp / f"{ifname}.leases"
    found = re.findall(r"fixed-address ([\d.]+);", leases.read_text() if leases.exists() else "")
    return found[-1] if found else None


def live_leases(store_url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(store_url) as conn:
        rows = conn.execute(
            "SELECT ip, mac, client_key FROM leases WHERE state = 'bound' "
            "AND expires_at > extract(epoch FROM now()) ORDER BY ip"
        ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def test_two_servers_one_database_never_bind_one_address_twice(
    namespaces: Namespaces,
    serve_procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    store_url: str,
) -> None:
    require_root_and("udhcpc", "dhclient", "curl")
    clients, logs = start_fleet(namespaces, serve_procs, tmp_path, store_url)
    switch = namespaces.names[0]
    bridge = namespaces.ifname("pbdbr")
    macs = {}
    for n in range(UDHCPC_CLIENTS + DHCLIENT_CLIENTS):
        macs[add_client(namespaces, switch, bridge, clients, str(n), client_mac(n))] = client_mac(n)
    runs = [
        (udhcpc if n < UDHCPC_CLIENTS else dhclient)(namespaces, clients, ifname, tmp_path)
        for n, ifname in enumerate(macs)
    ]  # all at once: every DISCOVER is heard (and answered) by both servers
    for proc in runs:
        proc.wait(timeout=90)
    got = {ifname: client_address(tmp_path, ifname) for ifname in macs}
    detail = "\n".join(log.read_text()[-4000:] for log in logs)
    assert None not in got.values(), (got, detail)
    addresses = list(got.values())
    assert len(set(addresses)) == len(addresses), f"one address given to two clients: {got}"
    low, high = (IPv4Address(a) for a in POOL)
    assert all(low <= IPv4Address(a) <= high for a in addresses if a), got
    assert all(IPv4Address(a) in IPv4Network(SUBNET) for a in addresses if a)
    for ifname in got:
        if (tmp_path / f"{ifname}.udhcpc").exists():
            fields = (tmp_path / f"{ifname}.udhcpc").read_text().split()
            assert fields[-2] == GATEWAY and fields[-1] in SERVER_IPS

    # The database agrees: each client's address is its row, one row per client.
    rows = live_leases(store_url)
    by_ip = {ip: mac for ip, mac, _ in rows}
    for ifname, ip in got.items():
        assert by_ip.get(str(ip)) == macs[ifname], (ifname, ip, rows)
    owners = [mac for _, mac, _ in rows]
    assert len(owners) == len(set(owners)), f"a client bound twice: {rows}"

    # A second storm: every client renews from scratch (INIT-REBOOT of its address);
    # whichever server answers, it must be the same address, and nobody else's.
    runs = [
        (udhcpc if n < UDHCPC_CLIENTS else dhclient)(namespaces, clients, ifname, tmp_path)
        for n, ifname in enumerate(macs)
    ]
    for proc in runs:
        proc.wait(timeout=90)
    again = {ifname: client_address(tmp_path, ifname) for ifname in macs}
    assert None not in again.values() and len(set(again.values())) == len(again), again
    rows = live_leases(store_url)
    assert len({mac for _, mac, _ in rows}) == len(rows), rows
    for ifname, ip in again.items():
        assert {ip_ for ip_, mac, _ in rows if mac == macs[ifname]} == {ip}, (ifname, rows)


def curl(nets: Namespaces, ns: str, *args: str) -> tuple[int, str]:
    out = nets.exec(ns, "curl", "-sS", "--max-time", "10", "-w", "\n%{http_code}", *args)
    body, _, status = out.rpartition("\n")
    return int(status), body


def test_a_boot_token_from_one_server_is_exchanged_at_the_other(
    namespaces: Namespaces,
    serve_procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    store_url: str,
) -> None:
    require_root_and("udhcpc", "curl")
    clients, logs = start_fleet(namespaces, serve_procs, tmp_path, store_url)
    switch = namespaces.names[0]
    node_if = add_client(namespaces, switch, namespaces.ifname("pbdbr"), clients, "n", KNOWN_MAC)
    script = tmp_path / "node.sh"
    bound = tmp_path / "node.out"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = bound ] || exit 0\n'
        'ip addr add "$ip/24" dev "$interface"\n'
        f'echo "$ip $serverid" >> {bound}\n'
    )
    script.chmod(0o755)
    namespaces.exec(
        clients, "udhcpc", "-i", node_if, "-n", "-q", "-f", "-t", "5", "-T", "2", "-s",
        str(script), check=False, timeout=30,
    )  # fmt: skip
    assert bound.exists(), "\n".join(log.read_text()[-3000:] for log in logs)
    assert bound.read_text().split()[0] == KNOWN_IP
    one, two = SERVER_IPS
    # Server one gives the token to the leased address, whichever server leased it (the
    # other server's lease reaches its view within a second).
    url = f"http://{one}:{HTTP_PORT}/boot/ipxe/node/{KNOWN_MAC}.ipxe"
    answers: list[tuple[int, str]] = []

    def script_fetched() -> bool:
        answers.append(curl(namespaces, clients, "--interface", KNOWN_IP, url))
        return answers[-1][0] == 200

    assert wait_for(script_fetched, 10, every=0.5), answers[-1]
    token = re.search(r"plasmaboot\.token=(\S+)", answers[-1][1])
    assert token is not None, answers[-1][1]
    # ... and server two, which never saw the token, accepts it: one key, one database.
    lookup = f"http://{two}:{HTTP_PORT}/api/v1/agent/lookup"
    status, body = curl(
        namespaces, clients, "--interface", KNOWN_IP, "-X", "POST",
        "-H", f"Authorization: Bearer {token.group(1)}", "-H", "Content-Type: application/json",
        "--data", json.dumps({"mac": KNOWN_MAC}), lookup,
    )  # fmt: skip
    assert status == 200, body
    assert json.loads(body)["hostname"] == "node01" and json.loads(body)["token"]
    # spent once for the whole fleet: a replay at server one is refused
    status, body = curl(
        namespaces, clients, "--interface", KNOWN_IP, "-X", "POST",
        "-H", f"Authorization: Bearer {token.group(1)}", "-H", "Content-Type: application/json",
        "--data", json.dumps({"mac": KNOWN_MAC}), lookup.replace(two, one),
    )  # fmt: skip
    assert status in (401, 409), body


def test_each_server_lists_both_and_a_killed_one_turns_stale(
    namespaces: Namespaces,
    serve_procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    store_url: str,
) -> None:
    require_root_and("curl")
    _, logs = start_fleet(namespaces, serve_procs, tmp_path, store_url)
    store = PostgresStore(store_url)
    header = tmp_path / "auth.header"  # the token by file, never on a command line
    header.write_text(f"Authorization: Bearer {AdminTokens(store).create('fleet', Scope.READ)}\n")
    boot = [f"http://{ip}:{HTTP_PORT}" for ip in SERVER_IPS]

    def servers(i: int) -> dict[str, dict[str, object]]:
        """Server i's GET /api/v1/servers (its admin listener, in its namespace), by boot URL."""
        status, body = curl(
            namespaces, f"pbds{i}{namespaces.tag}", "--cacert",
            str(tmp_path / f"state-{i}/pki/ca.crt"), "-H", f"@{header}",
            "https://127.0.0.1:8443/api/v1/servers",
        )  # fmt: skip
        assert status == 200, body
        return {str(s["boot_url"]): s for s in json.loads(body)}

    def both_healthy_in_both() -> bool:
        views = [servers(0), servers(1)]
        return all(
            set(view) == set(boot) and all(s["status"] == "running" and s["healthy"]
                                           for s in view.values())
            for view in views
        )  # fmt: skip

    assert wait_for(both_healthy_in_both, 20, every=0.5), (
        servers(0), "\n".join(log.read_text()[-3000:] for log in logs)
    )  # fmt: skip
    for i in (0, 1):
        view = servers(i)
        me, other = view[boot[i]], view[boot[1 - i]]
        assert me["this"] is True and other["this"] is False and me["id"] != other["id"]
        assert me["services"] == {"dhcp": "running", "tftp": "running", "http": "running",
                                  "admin": "running"}  # fmt: skip
        assert me["admin_url"] == "https://127.0.0.1:8443" and me["heartbeat_s"] == HEARTBEAT_S

    serve_procs[1].kill()  # kill -9: no last word
    killed = time.monotonic()
    at_kill = servers(0)[boot[1]]
    assert at_kill["status"] == "running", "stale before its time"
    # documented: stale once its last heartbeat is 3 periods old (docs/store.md, 15 s)
    documented = STALE_AFTER_PERIODS * HEARTBEAT_S
    due = documented - float(str(at_kill["seen_s_ago"]))  # after the kill
    assert wait_for(lambda: servers(0)[boot[1]]["status"] == "stale", documented + 5, every=0.5)
    took = time.monotonic() - killed
    print(f"killed server read stale {took:.1f} s after the kill (due after {due:.1f} s; "
          f"documented: {documented:.0f} s after its last heartbeat)")  # fmt: skip
    assert due - 1 <= took <= due + 2, f"stale after {took:.1f} s, due after {due:.1f} s"
    survivor = servers(0)[boot[0]]
    assert survivor["status"] == "running" and survivor["healthy"] is True

    serve_procs[0].send_signal(signal.SIGTERM)  # a clean stop marks itself stopped
    assert serve_procs[0].wait(timeout=20) == 0
    rows = {r.heartbeat.boot_url: r for r in store.servers()}
    assert status_of(rows[boot[0]]) == "stopped" and status_of(rows[boot[1]]) == "stale"
    store.close()
