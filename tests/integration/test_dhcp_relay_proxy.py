"""The relay path (isc-dhcp-relay) and proxyDHCP beside dnsmasq, with real peers in netns."""
# ruff: noqa: F811  (pytest fixtures imported from the support module)

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dhcp_support import (  # noqa: F401  (fixtures)
    KNOWN_IP,
    KNOWN_MAC,
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

RELAY_UP = "10.231.0.2"
RELAY_DOWN = "10.231.1.1"
RELAYED_POOL = ("10.231.1.100", "10.231.1.200")


def _dhclient(nets: Namespaces, ns: str, ifname: str, tmp: Path, extra: str = "") -> str | None:
    conf = tmp / f"dhclient-{ifname}.conf"
    conf.write_text(f"timeout 8;\nretry 1;\n{extra}")
    lease = tmp / f"dhclient-{ifname}.leases"
    nets.exec(
        ns, "dhclient", "-1", "-cf", str(conf), "-sf", "/bin/true", "-lf", str(lease),
        "-pf", str(tmp / f"dhclient-{ifname}.pid"), ifname, check=False, timeout=25,
    )  # fmt: skip
    found = re.findall(r"fixed-address ([\d.]+);", lease.read_text() if lease.exists() else "")
    return found[-1] if found else None


def _background(nets: Namespaces, ns: str, log: Path, *cmd: str) -> subprocess.Popen[bytes]:
    """A peer daemon in the foreground inside `ns`; the namespace fixture kills it."""
    out = log.open("ab")
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=out, stderr=subprocess.STDOUT)


def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(("mac", "expected"), [(KNOWN_MAC, KNOWN_IP), (UNKNOWN_MAC, None)])
def test_rfc2131_4_1_giaddr_replies_go_to_the_relay_port_67(
    mac: str,
    expected: str | None,
    namespaces: Namespaces,
    servers: list[ServerProcess],
    tmp_path: Path,
) -> None:
    require_root_and("dhcrelay", "dhclient")
    nets = namespaces
    srv, relay, cli = nets.ns("s"), nets.ns("r"), nets.ns("c")
    nets.link(srv, "pbdsv", relay, "pbdru")
    nets.link(relay, "pbdrd", cli, "pbdcv", mac)
    server_if, up, down = nets.ifname("pbdsv"), nets.ifname("pbdru"), nets.ifname("pbdrd")
    nets.exec(srv, "ip", "addr", "add", f"{SERVER_IP}/24", "dev", server_if)
    nets.exec(srv, "ip", "route", "add", "10.231.1.0/24", "via", RELAY_UP)
    nets.exec(relay, "ip", "addr", "add", f"{RELAY_UP}/24", "dev", up)
    nets.exec(relay, "ip", "addr", "add", f"{RELAY_DOWN}/24", "dev", down)
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(inventory_yaml("full", server_if, pool=RELAYED_POOL, gateway=RELAY_DOWN))
    server = ServerProcess(srv, inventory, tmp_path / "state", server_if).start()
    servers.append(server)
    _background(
        nets, relay, tmp_path / "dhcrelay.log",
        "dhcrelay", "-4", "-d", "-id", down, "-iu", up, SERVER_IP,
    )  # fmt: skip
    time.sleep(1)
    address = _dhclient(nets, cli, nets.ifname("pbdcv"), tmp_path)
    assert address is not None, server.log + (tmp_path / "dhcrelay.log").read_text()
    if expected is not None:
        assert address == expected
    else:
        assert address.startswith("10.231.1.")
    assert server.logged(f"via ('{RELAY_DOWN}', 67)"), server.log  # OFFER/ACK to giaddr:67


def _proxy_lan(nets: Namespaces, tmp: Path) -> tuple[str, str, str, str]:
    """A switch with our server, dnsmasq and a client port; returns the namespaces + tap."""
    sw, srv, dns, cli = nets.ns("w"), nets.ns("s"), nets.ns("m"), nets.ns("c")
    bridge = nets.bridge(sw)
    for port, ns, ifname, address in (
        ("pbdp1", srv, "pbdsv", f"{SERVER_IP}/16"),
        ("pbdp2", dns, "pbdmv", "10.231.0.2/16"),
    ):
        nets.link(sw, port, ns, ifname)
        nets.plug(sw, bridge, port)
        nets.exec(ns, "ip", "addr", "add", address, "dev", nets.ifname(ifname))
    nets.link(sw, "pbdp3", cli, "pbdcv", UNKNOWN_MAC)
    nets.plug(sw, bridge, "pbdp3")
    tap = nets.ifname("pbdt")
    nets.exec(sw, "ip", "tuntap", "add", tap, "mode", "tap")
    nets.exec(sw, "ip", "link", "set", tap, "master", bridge)
    nets.exec(sw, "ip", "link", "set", tap, "up")
    leases = tmp / "dnsmasq.leases"
    _background(
        nets, dns, tmp / "dnsmasq.log",
        "dnsmasq", "--no-daemon", "--port=0", "--conf-file=/dev/null", "--user=root",
        f"--interface={nets.ifname('pbdmv')}", "--bind-interfaces", "--no-ping",
        "--dhcp-range=10.231.0.100,10.231.0.150,255.255.0.0,10m",
        f"--dhcp-leasefile={leases}", f"--pid-file={tmp / 'dnsmasq.pid'}", "--log-dhcp",
    )  # fmt: skip
    return sw, srv, cli, tap


def test_proxydhcp_plain_client_gets_its_address_from_dnsmasq_only(
    namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    require_root_and("dnsmasq", "dhclient")
    nets = namespaces
    _, srv, cli, _ = _proxy_lan(nets, tmp_path)
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(inventory_yaml("proxy", nets.ifname("pbdsv"), pool=None))
    server = ServerProcess(srv, inventory, tmp_path / "state", nets.ifname("pbdsv")).start()
    servers.append(server)
    pxe_vendor = 'send vendor-class-identifier "PXEClient:Arch:00000:UNDI:002001";\n'
    address = _dhclient(nets, cli, nets.ifname("pbdcv"), tmp_path, pxe_vendor)
    assert address is not None and address.startswith("10.231.0.1")  # dnsmasq's range
    assert UNKNOWN_MAC in (tmp_path / "dnsmasq.leases").read_text()
    assert server.logged("OFFER", f"{UNKNOWN_MAC} -> 0.0.0.0"), server.log


def test_proxydhcp_ipxe_in_qemu_boots_our_script_with_dnsmasq_address(
    namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    """Real iPXE (QEMU's NIC ROM): address from dnsmasq, boot script URL from our proxy."""
    require_root_and("dnsmasq", "qemu-system-x86_64")
    if not Path("/usr/lib/ipxe/qemu/pxe-e1000.rom").exists():
        pytest.skip("ipxe-qemu is not installed (QEMU's iPXE NIC ROM)")
    nets = namespaces
    sw, srv, _, tap = _proxy_lan(nets, tmp_path)
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(inventory_yaml("proxy", nets.ifname("pbdsv"), pool=None))
    server = ServerProcess(srv, inventory, tmp_path / "state", nets.ifname("pbdsv")).start()
    servers.append(server)
    http_log = tmp_path / "http.log"
    _background(
        nets, srv, http_log, sys.executable, "-m", "http.server", "8080",
        "--bind", SERVER_IP, "--directory", str(tmp_path),
    )  # fmt: skip
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    _background(
        nets, sw, tmp_path / "qemu.log",
        qemu, "-nodefaults", "-display", "none", "-m", "128", "-boot", "n", "-no-reboot",
        "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
        "-device", f"e1000,netdev=n0,mac={KNOWN_MAC}",
    )  # fmt: skip
    fetched = _wait_for(lambda: "GET /boot/ipxe/boot.ipxe" in http_log.read_text(), 90)
    assert fetched, server.log
    assert KNOWN_MAC in (tmp_path / "dnsmasq.leases").read_text()
    # iPXE took the boot file from our address-less offer (next-server + filename).
    assert f"OFFER {KNOWN_MAC} -> 0.0.0.0" in server.log
