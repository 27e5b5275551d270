"""Real DHCP clients (dhclient, udhcpc, dhcpcd) against plasmaboot in network namespaces."""
# ruff: noqa: F811  (pytest fixtures imported from the support module)

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from dhcp_support import (  # noqa: F401  (fixtures)
    KNOWN_IP,
    KNOWN_MAC,
    POOL,
    SERVER_IP,
    UNKNOWN_MAC,
    Namespaces,
    ServerProcess,
    inventory_yaml,
    namespaces,
    require_root_and,
    servers,
)

pytestmark = pytest.mark.integration

ClientRun = Callable[[Namespaces, str, str, Path], str | None]


def _dhclient(nets: Namespaces, ns: str, ifname: str, tmp: Path) -> str | None:
    conf = tmp / "dhclient.conf"
    conf.write_text("timeout 6;\nretry 1;\n")
    lease = tmp / "dhclient.leases"
    nets.exec(
        ns, "dhclient", "-1", "-cf", str(conf), "-sf", "/bin/true", "-lf", str(lease),
        "-pf", str(tmp / "dhclient.pid"), ifname, check=False, timeout=20,
    )  # fmt: skip
    found = re.findall(r"fixed-address ([\d.]+);", lease.read_text() if lease.exists() else "")
    return found[-1] if found else None


def _udhcpc(nets: Namespaces, ns: str, ifname: str, tmp: Path) -> str | None:
    out = tmp / "udhcpc.out"
    script = tmp / "udhcpc.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip" >> {out}\nexit 0\n')
    script.chmod(0o755)
    nets.exec(
        ns, "udhcpc", "-i", ifname, "-n", "-q", "-f", "-t", "3", "-T", "1", "-s", str(script),
        check=False, timeout=20,
    )  # fmt: skip
    return out.read_text().split()[-1] if out.exists() else None


def _dhcpcd(nets: Namespaces, ns: str, ifname: str, tmp: Path) -> str | None:
    out = tmp / "dhcpcd.out"
    hook = tmp / "dhcpcd-hook.sh"
    hook.write_text(
        f'#!/bin/sh\n[ "$reason" = BOUND ] && echo "$new_ip_address" >> {out}\nexit 0\n'
    )
    hook.chmod(0o755)
    # dhcpcd's privilege-separated helpers outlive it and hold any pipe: no capture.
    subprocess.run(
        ["ip", "netns", "exec", ns, "timeout", "-s", "KILL", "15", "dhcpcd", "-4", "-1", "-B",
         "--noarp", "--noipv4ll", "-c", str(hook), "-t", "6", ifname],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20, check=False,
    )  # fmt: skip
    Path(f"/var/lib/dhcpcd/{ifname}.lease").unlink(missing_ok=True)
    return out.read_text().split()[-1] if out.exists() else None


CLIENTS: dict[str, tuple[str, ClientRun]] = {
    "dhclient": ("dhclient", _dhclient),
    "udhcpc": ("udhcpc", _udhcpc),
    "dhcpcd": ("dhcpcd", _dhcpcd),
}


def _lan(
    nets: Namespaces, servers: list[ServerProcess], tmp: Path, mode: str, client_mac: str
) -> tuple[str, str]:
    """Server and client namespaces on one veth; returns (client ns, client ifname)."""
    srv, cli = nets.ns("s"), nets.ns("c")
    nets.link(srv, "pbdsv", cli, "pbdcv", client_mac)
    server_if = nets.ifname("pbdsv")
    nets.exec(srv, "ip", "addr", "add", f"{SERVER_IP}/16", "dev", server_if)
    inventory = tmp / "cluster.yaml"
    inventory.write_text(inventory_yaml(mode, server_if))
    servers.append(ServerProcess(srv, inventory, tmp / "state", server_if).start())
    return cli, nets.ifname("pbdcv")


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_rfc2131_4_3_1_fixed_address_for_known_mac(
    client: str, namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    binary, run_client = CLIENTS[client]
    require_root_and(binary)
    cli, ifname = _lan(namespaces, servers, tmp_path, "full", KNOWN_MAC)
    assert run_client(namespaces, cli, ifname, tmp_path) == KNOWN_IP


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_rfc2131_4_3_1_pool_address_for_unknown_mac(
    client: str, namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    binary, run_client = CLIENTS[client]
    require_root_and(binary)
    cli, ifname = _lan(namespaces, servers, tmp_path, "full", UNKNOWN_MAC)
    address = run_client(namespaces, cli, ifname, tmp_path)
    assert address is not None, servers[0].log
    low, high = (int(part.split(".")[-1]) for part in POOL)
    assert address.startswith("10.231.0.") and low <= int(address.split(".")[-1]) <= high


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_reservation_mode_known_mac_gets_fixed_address(
    client: str, namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    binary, run_client = CLIENTS[client]
    require_root_and(binary)
    cli, ifname = _lan(namespaces, servers, tmp_path, "reservation", KNOWN_MAC)
    assert run_client(namespaces, cli, ifname, tmp_path) == KNOWN_IP


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_reservation_mode_unknown_mac_gets_nothing(
    client: str, namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    binary, run_client = CLIENTS[client]
    require_root_and(binary)
    cli, ifname = _lan(namespaces, servers, tmp_path, "reservation", UNKNOWN_MAC)
    assert run_client(namespaces, cli, ifname, tmp_path) is None
    assert f"no answer to DISCOVER from {UNKNOWN_MAC}" in servers[0].log
