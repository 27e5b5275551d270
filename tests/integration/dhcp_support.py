"""Network-namespace plumbing shared by the DHCP integration tests (no tests in here).

Every namespace and veth is named `pbd...` and removed by the fixture that made it, even
when the test fails. The server runs as `python -m plasmaboot.dhcp` inside its namespace.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from polling import wait_for

SERVER_IP = "10.231.0.1"
SUBNET = "10.231.0.0/16"
POOL = ("10.231.0.100", "10.231.0.200")
KNOWN_MAC = "52:54:00:aa:bb:01"
KNOWN_IP = "10.231.0.50"
KNOWN_HOST = "node01"
UNKNOWN_MAC = "52:54:00:aa:bb:99"


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)


def require_root_and(*binaries: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    for binary in binaries:
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (Debian package needed for this peer)")


def inventory_yaml(
    mode: str = "full",
    interface: str | None = None,
    *,
    subnet: str = SUBNET,
    pool: tuple[str, str] | None = POOL,
    nodes: tuple[tuple[str, str, str], ...] = ((KNOWN_HOST, KNOWN_MAC, KNOWN_IP),),
    server_ip: str = SERVER_IP,
    gateway: str | None = None,
    lease_time: int = 600,
) -> str:
    dhcp = [f"mode: {mode}", f"lease_time: {lease_time}"]
    if pool:
        dhcp.append(f"pool: {{start: {pool[0]}, end: {pool[1]}}}")
    if interface:
        dhcp.append(f"interface: {interface}")
    # The inventory insists on a 3-node Raft bootstrap set; they never DHCP here.
    base = IPv4Address(server_ip)
    bootstrap = tuple(
        (f"cp{i}", f"52:54:00:cc:00:0{i}", str(base + 10 + i), True) for i in (1, 2, 3)
    )
    node_lines = "".join(
        f"  - hostname: {host}\n    macs: ['{mac}']\n    provisioning_ip: {ip}\n"
        + ("    profile: control-plane\n    bootstrap: true\n" if boot else "    profile: worker\n")
        for host, mac, ip, boot in bootstrap + tuple((*n, False) for n in nodes)
    )
    return (
        "cluster: {name: test, domain: test.internal}\n"
        "networks:\n"
        f"  - name: provisioning\n    vlan: 100\n    subnet: {subnet}\n"
        f"    gateway: {gateway or server_ip}\n    dns: [{server_ip}]\n"
        f"    dhcp: {{{', '.join(dhcp)}}}\n"
        f"server: {{provisioning_ip: {server_ip}, http_port: 8080}}\n"
        "profiles:\n  worker: {role: worker, services: [k8shost], image: img}\n"
        "  control-plane: {role: control-plane, services: [chainfire], image: img}\n"
        "images:\n  img: {kernel: k, initrd: i}\n"
        "nodes:\n" + node_lines
    )


@dataclass(frozen=True)
class Rack:
    """A provisioning network behind a relay: its own subnet, pool, router and lease time."""

    name: str
    subnet: str  # e.g. 10.232.1.0/24
    router: str  # the relay's address on the rack segment (its giaddr)
    pool: tuple[str, str]
    lease_time: int = 600
    relays: tuple[str, ...] = ()


def fleet_inventory_yaml(
    interface: str,
    racks: tuple[Rack, ...],
    *,
    nodes: tuple[tuple[str, str, str], ...] = (),
    subnet: str = "10.231.0.0/24",
    pool: tuple[str, str] | None = ("10.231.0.100", "10.231.0.150"),
) -> str:
    """`inventory_yaml` (the server's own provisioning network) plus one network per rack."""
    base = inventory_yaml("full", interface, subnet=subnet, pool=pool, nodes=nodes)
    blocks = "".join(
        f"  - name: {rack.name}\n    vlan: {101 + i}\n    subnet: {rack.subnet}\n"
        f"    gateway: {rack.router}\n    dns: [{rack.router}]\n"
        f"    dhcp: {{mode: full, lease_time: {rack.lease_time}, "
        f"pool: {{start: {rack.pool[0]}, end: {rack.pool[1]}}}, "
        f"relays: [{', '.join(rack.relays)}]}}\n"
        for i, rack in enumerate(racks)
    )
    return base.replace("server: {", blocks + "server: {", 1)


def dhclient_lease(
    nets: Namespaces, ns: str, ifname: str, tmp: Path, timeout_s: int = 8
) -> dict[str, str]:
    """One dhclient run (-1: give up after `timeout_s`); the last lease it wrote, as
    {"address": ..., "routers": ..., "subnet-mask": ..., ...}, or {} when it got none."""
    conf = tmp / f"dhclient-{ifname}.conf"
    conf.write_text(f"timeout {timeout_s};\nretry 1;\n")
    leases = tmp / f"dhclient-{ifname}.leases"
    nets.exec(
        ns, "dhclient", "-1", "-cf", str(conf), "-sf", "/bin/true", "-lf", str(leases),
        "-pf", str(tmp / f"dhclient-{ifname}.pid"), ifname, check=False, timeout=timeout_s + 17,
    )  # fmt: skip
    text = leases.read_text() if leases.exists() else ""
    blocks = text.split("lease {")
    if len(blocks) < 2:
        return {}
    last = blocks[-1]
    found = dict(re.findall(r"option ([\w-]+) ([^;]+);", last))
    address = re.search(r"fixed-address ([\d.]+);", last)
    if address:
        found["address"] = address.group(1)
    return found


def udhcpc_lease(nets: Namespaces, ns: str, ifname: str, tmp: Path) -> dict[str, str]:
    """One udhcpc run (3 DISCOVERs 1 s apart); what its script saw when bound, or {}."""
    out = tmp / f"udhcpc-{ifname}.out"
    script = tmp / f"udhcpc-{ifname}.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = bound ] && echo "address=$ip routers=$router subnet-mask=$subnet '
        f'lease-time=$lease" >> {out}\nexit 0\n'
    )
    script.chmod(0o755)
    nets.exec(
        ns, "udhcpc", "-i", ifname, "-n", "-q", "-f", "-t", "3", "-T", "1", "-s", str(script),
        check=False, timeout=20,
    )  # fmt: skip
    if not out.exists() or not out.read_text().strip():
        return {}
    last = out.read_text().strip().splitlines()[-1]
    return dict(field.split("=", 1) for field in last.split())


@dataclass
class Namespaces:
    """Namespaces + veth pairs made for one test; `close()` removes them all."""

    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    names: list[str] = field(default_factory=list)

    def ns(self, role: str) -> str:
        name = f"pbd{role}{self.tag}"
        run("ip", "netns", "add", name)
        self.names.append(name)
        run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        return name

    def link(self, a_ns: str, a_if: str, b_ns: str, b_if: str, b_mac: str | None = None) -> None:
        """A veth pair between two namespaces, both ends up."""
        a, b = f"{a_if}{self.tag}", f"{b_if}{self.tag}"
        run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        run("ip", "link", "set", a, "netns", a_ns)
        run("ip", "link", "set", b, "netns", b_ns)
        if b_mac:
            self.exec(b_ns, "ip", "link", "set", b, "address", b_mac)
        for ns, ifname in ((a_ns, a), (b_ns, b)):
            self.exec(ns, "ip", "link", "set", ifname, "up")

    def bridge(self, ns: str) -> str:
        """A bridge (a switch) in `ns`; `link(ns, "pbdp<n>", ...)` plus `plug` adds ports."""
        name = self.ifname("pbdbr")
        self.exec(ns, "ip", "link", "add", name, "type", "bridge")
        self.exec(ns, "ip", "link", "set", name, "up")
        return name

    def plug(self, ns: str, bridge: str, port: str) -> None:
        self.exec(ns, "ip", "link", "set", self.ifname(port), "master", bridge)

    def ifname(self, base: str) -> str:
        return f"{base}{self.tag}"

    def exec(self, ns: str, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        return run("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout).stdout

    def close(self) -> None:
        for name in reversed(self.names):
            pids = run("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", name, check=False)


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    nets = Namespaces()
    try:
        yield nets
    finally:
        nets.close()


class ServerProcess:
    """`python -m plasmaboot.dhcp` in a namespace; stopped by its PID."""

    def __init__(
        self, ns: str, inventory: Path, state_dir: Path, interface: str, *extra: str
    ) -> None:
        self.ns = ns
        self.log_path = state_dir.parent / f"{state_dir.name}.log"
        self.cmd = [
            "ip", "netns", "exec", ns, sys.executable, "-m", "plasmaboot.dhcp",
            "-c", str(inventory), "--state-dir", str(state_dir), "--interface", interface,
            "--log-level", "DEBUG", *extra,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> ServerProcess:
        """Start and wait for this process's own "listening" line (a restart shares the log)."""
        before = self.log.count("dhcp listening") if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.count("dhcp listening") > before:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"dhcp server exited: {self.log_path.read_text()}")
            time.sleep(0.05)
        raise RuntimeError(f"dhcp server did not start: {self.log_path.read_text()}")

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged(self, *needles: str, timeout: float = 10) -> bool:
        """Whether every needle shows up in the log within `timeout` (lines are written
        after the reply is sent, so a client can finish before its line exists)."""
        return wait_for(lambda: all(needle in self.log for needle in needles), timeout)


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    try:
        yield started
    finally:
        for server in started:
            server.kill(signal.SIGKILL)
