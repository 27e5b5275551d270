"""The systems under storm, started in the server netns on the same files.

`plasmaboot serve` (DHCP + TFTP + HTTP + agent API in one process; on PostgreSQL, one or
two of them: fleet.py) against what operators run today: dnsmasq (DHCP + TFTP) and nginx
(sendfile) serving boot.ipxe, the per-node scripts pre-rendered with plasmaboot's own
renderer (the same text, a fixed token) and the same kernel and initrd. Each system is a
`Running` that knows its PIDs, so CPU seconds and peak RSS come from /proc, and is
stopped by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import yaml
from netns import (
    CLIENT_IF,
    CLIENT_NS,
    SECOND_IF,
    SECOND_IP,
    SECOND_NS,
    SERVER_IF,
    SERVER_IP,
    SERVER_NS,
)

HTTP_PORT = 8080
ADMIN_PORT = 8443  # the inventory's default server.admin port
TFTP_ROOT = Path("/usr/lib/ipxe")
KERNEL_MIB = 8
ADMIN_TOKEN = "storm-bench-admin"
POOL = ("10.88.200.1", "10.88.200.250")


def entry_url(server_ip: str = SERVER_IP) -> str:
    return f"http://{server_ip}:{HTTP_PORT}/boot/ipxe/boot.ipxe"


def node_ip(index: int) -> str:
    return str(IPv4Address("10.88.1.0") + index + 1)


def node_mac(index: int) -> str:
    return "52:54:01:" + ":".join(f"{b:02x}" for b in index.to_bytes(3, "big"))


def write_inventory(
    path: Path, clients: int, server_ip: str = SERVER_IP, interface: str = SERVER_IF
) -> None:
    """N nodes with fixed addresses outside the pool; the first three bootstrap. A second
    server of the same fleet gets the same file but for its own address and interface."""
    nodes = [
        {
            "hostname": f"storm{i:04d}",
            "macs": [node_mac(i)],
            "profile": "control-plane" if i < 3 else "worker",
            "provisioning_ip": node_ip(i),
            "bootstrap": i < 3,
        }
        for i in range(clients)
    ]
    doc = {
        "cluster": {"name": "storm", "domain": "storm.internal"},
        "networks": [
            {
                "name": "provisioning", "vlan": 100, "subnet": "10.88.0.0/16",
                "gateway": SERVER_IP, "dns": [SERVER_IP],
                "dhcp": {"mode": "full", "pool": {"start": POOL[0], "end": POOL[1]},
                         "interface": interface},
            }
        ],
        "server": {"provisioning_ip": server_ip, "http_port": HTTP_PORT},
        "profiles": {
            "control-plane": {"role": "control-plane", "services": ["chainfire"], "image": "storm"},
            "worker": {"role": "worker", "services": ["k8shost"], "image": "storm"},
        },
        "images": {"storm": {"kernel": "nixos/storm/bzImage", "initrd": "nixos/storm/initrd"}},
        "nodes": nodes,
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def write_assets(assets: Path, initrd_mib: int) -> None:
    """A synthetic kernel and initrd of incompressible bytes (nothing on the path compresses,
    but random data also keeps any layer from cheating)."""
    for name, mib in (("bzImage", KERNEL_MIB), ("initrd", initrd_mib)):
        path = assets / "nixos/storm" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size == mib << 20:
            continue
        with path.open("wb") as handle:
            for _ in range(mib):
                handle.write(os.urandom(1 << 20))


@dataclass
class Running:
    name: str
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    extra_pids: list[int] = field(default_factory=list)
    entry_urls: list[str] = field(default_factory=lambda: [entry_url()])
    state_dir: Path | None = None  # plasmaboot's (the first server's): its CA, its store

    def pids(self) -> list[int]:
        pids = [p.pid for p in self.procs] + self.extra_pids
        for pid in list(pids):
            children = Path(f"/proc/{pid}/task/{pid}/children")
            if children.exists():
                pids += [int(c) for c in children.read_text().split()]
        return sorted(set(pids))

    def cpu_seconds(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / ticks

    def peak_rss_mib(self) -> float:
        total = 0
        for pid in self.pids():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            total += next((int(line.split()[1]) for line in status.splitlines()
                           if line.startswith("VmHWM:")), 0)  # fmt: skip
        return total / 1024

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def check_alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"{self.name}: {proc.args!r} exited {proc.returncode}:\n{tail}")


def in_ns(ns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def _wait_http(
    running: Running, path: str, timeout_s: float = 30, server_ip: str = SERVER_IP
) -> None:
    """Poll from the client namespace, the way the storm will reach it."""
    deadline = time.monotonic() + timeout_s
    url = f"http://{server_ip}:{HTTP_PORT}{path}"
    while time.monotonic() < deadline:
        running.check_alive()
        probe = subprocess.run(
            in_ns(CLIENT_NS, ["curl", "-sfI", "-o", "/dev/null", "-m", "2", url]), check=False
        )
        if probe.returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError(f"{running.name} did not answer {url} within {timeout_s:.0f} s")


def start_plasmaboot(
    work: Path,
    inventory: Path,
    assets: Path,
    *,
    store: str | None = None,
    second: bool = False,
) -> Running:
    """One `serve`: on SQLite in its state directory, or on the `store` URL (given by the
    environment, never on the command line); `second`: the fleet's second server, in its
    own namespace on the same segment."""
    ns, interface, server_ip = (SECOND_NS, SECOND_IF, SECOND_IP) if second else (
        SERVER_NS, SERVER_IF, SERVER_IP)  # fmt: skip
    state = work / ("pb-state-2" if second else "pb-state")
    env = {**os.environ, "PLASMABOOT_ADMIN_TOKEN": ADMIN_TOKEN}
    if store is not None:
        env["PLASMABOOT_STORE"] = store
    argv = [sys.executable, "-m", "plasmaboot", "serve", "-c", str(inventory), "--state-dir",
            str(state), "--assets", str(assets), "--interface", interface]  # fmt: skip
    log = work / f"plasmaboot{'-2' if second else ''}.log"
    running = Running(
        "plasmaboot", [_spawn(in_ns(ns, argv), log, env)], [log],
        entry_urls=[entry_url(server_ip)], state_dir=state,
    )  # fmt: skip
    try:
        _wait_http(running, "/health", server_ip=server_ip)
    except BaseException:  # SIGTERM, Ctrl-C too: nothing outlives the bench
        running.stop()
        raise
    return running


def node_states(state_dir: Path, admin_token: str = ADMIN_TOKEN) -> dict[str, str]:
    """Every node's lifecycle state, from the admin API: its listener is loopback (TLS, the
    CA in the state dir) in the server's namespace, as the default server.admin says."""
    url = f"https://127.0.0.1:{ADMIN_PORT}/api/v1/nodes"
    ca = state_dir / "pki" / "ca.crt"
    auth = f"Authorization: Bearer {admin_token}"
    done = subprocess.run(
        in_ns(SERVER_NS, ["curl", "-sf", "--cacert", str(ca), "-H", auth, url]),
        capture_output=True, check=True,
    )  # fmt: skip
    return {n["hostname"]: n["state"] for n in json.loads(done.stdout)}


def write_baseline_root(work: Path, inventory: Path, assets: Path) -> Path:
    """boot.ipxe + every node script as static files, rendered by plasmaboot's own code."""
    from plasmaboot.inventory import load_inventory
    from plasmaboot.render import ipxe
    from plasmaboot.web.scripts import entry_script

    inv = load_inventory(inventory)
    base = f"http://{SERVER_IP}:{HTTP_PORT}"
    root = work / "www"
    (root / "boot/ipxe/node").mkdir(parents=True, exist_ok=True)
    (root / "boot/ipxe/boot.ipxe").write_text(entry_script(base))
    for node in inv.nodes:
        args = f"plasmaboot.url={base} plasmaboot.token=baseline-static plasmaboot.stage=install"
        text = ipxe.install_script(inv, node, base, kernel_args=args)
        (root / f"boot/ipxe/node/{node.macs[0]}.ipxe").write_text(text)
    nixos = root / "boot/nixos"
    nixos.mkdir(parents=True, exist_ok=True)
    if not (nixos / "storm").exists():
        (nixos / "storm").symlink_to(assets / "nixos/storm")
    return root


def nginx_conf(work: Path, root: Path) -> Path:
    conf = work / "nginx.conf"
    conf.write_text(f"""user root;
worker_processes auto;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 16384;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type text/plain;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    server {{
        listen {SERVER_IP}:{HTTP_PORT} backlog=4096;
        root {root};
        location / {{ try_files $uri =404; }}
    }}
}}
""")
    return conf


def start_nginx(work: Path, root: Path, probe: str = "/boot/ipxe/boot.ipxe") -> Running:
    log = work / "nginx.out"
    running = Running(
        "nginx",
        [_spawn(in_ns(SERVER_NS, ["nginx", "-c", str(nginx_conf(work, root))]), log)],
        [log],
    )
    try:
        _wait_http(running, probe)
    except BaseException:  # SIGTERM, Ctrl-C too: nothing outlives the bench
        running.stop()
        raise
    return running


def start_dnsmasq(work: Path, clients: int) -> Running:
    hosts = work / "dnsmasq.hosts"
    hosts.write_text("".join(f"{node_mac(i)},{node_ip(i)}\n" for i in range(clients)))
    argv = [
        "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-ping",
        "--user=root", "--pid-file", f"--interface={SERVER_IF}", "--bind-interfaces",
        f"--dhcp-range={POOL[0]},{POOL[1]},255.255.0.0,1h", f"--dhcp-hostsfile={hosts}",
        f"--dhcp-leasefile={work}/dnsmasq.leases", "--dhcp-authoritative",
        f"--dhcp-lease-max={clients + 1000}",
        "--enable-tftp", f"--tftp-root={TFTP_ROOT}", f"--tftp-max={max(50, 2 * clients)}",
        "--dhcp-userclass=set:ipxe,iPXE", "--dhcp-match=set:efi,option:client-arch,7",
        f"--dhcp-boot=tag:ipxe,{entry_url()}", "--dhcp-boot=tag:!ipxe,tag:efi,ipxe.efi",
        "--dhcp-boot=tag:!ipxe,tag:!efi,undionly.kpxe",
    ]  # fmt: skip
    log = work / "dnsmasq.log"
    running = Running("dnsmasq", [_spawn(in_ns(SERVER_NS, argv), log)], [log])
    time.sleep(0.5)
    running.check_alive()
    return running


def start_baseline(work: Path, inventory: Path, assets: Path, clients: int) -> Running:
    nginx = start_nginx(work, write_baseline_root(work, inventory, assets))
    try:
        dnsmasq = start_dnsmasq(work, clients)
    except BaseException:  # SIGTERM, Ctrl-C too: nothing outlives the bench
        nginx.stop()
        raise
    return Running("dnsmasq+nginx", nginx.procs + dnsmasq.procs, nginx.logs + dnsmasq.logs)


def plan_for(
    clients: int, running: Running, agent: bool, deadline_s: float, spread_s: float
) -> dict[str, Any]:
    """The client process's instructions: who boots, against what, within which bounds.
    Even clients are BIOS (lock-step TFTP, like iPXE's undionly); odd ones UEFI with RFC 7440
    windowsize 4 (what EDK2's PXE asks for). A client boots from whichever server answers
    its DHCP: any of the system's entry URLs is right."""
    return {
        "mode": "storm", "interface": CLIENT_IF, "entry_urls": running.entry_urls,
        "agent": agent, "deadline_s": deadline_s,
        "transfer_timeout_s": deadline_s, "spread_s": spread_s,
        "clients": [
            {"mac": node_mac(i), "uefi": i % 2 == 1, "windowsize": 4 if i % 2 else None}
            for i in range(clients)
        ],
    }  # fmt: skip
