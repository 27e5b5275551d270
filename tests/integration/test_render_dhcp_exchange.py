"""The rendered DHCP configs make the real servers answer as the boot policy says.

dhcpd, Kea and dnsmasq each run on their rendered config in a server namespace of this test
(pbr-*); a client namespace broadcasts DHCPDISCOVERs shaped like the firmware ones (option 93
architecture, option 77 user-class "iPXE", a node's MAC) and reads the boot file from the
OFFER. The lab inventory is extended with a node override (arch 7) and a second NIC.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from plasmaboot.inventory import Inventory, parse_inventory
from plasmaboot.render import RenderContext, render, write_files
from plasmaboot.render.kea import render_kea

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPT_URL = "http://10.77.0.1:8080/boot/ipxe/boot.ipxe"
UNKNOWN_MAC = "02:00:00:00:00:01"
NODE01_SECOND_NIC = "52:54:00:aa:bb:cc"
NODE02 = "52:54:00:12:34:57"
MAGIC = b"\x63\x82\x53\x63"


def lab_inventory() -> Inventory:
    data = yaml.safe_load((EXAMPLES / "lab" / "cluster.yaml").read_text())
    data["nodes"][0]["macs"].append(NODE01_SECOND_NIC)
    data["nodes"][0]["boot_overrides"] = {"7": "snponly.efi"}
    return parse_inventory(data)


@dataclass(frozen=True)
class Offer:
    filename: str
    vendor_class: str | None
    ipxe_encap: bytes | None


def discover(mac: str, arch: int | None, ipxe: bool, xid: int) -> bytes:
    """A DHCPDISCOVER with the broadcast flag, as PXE firmware or iPXE sends it."""
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\0")
    header = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000,
                         b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4, chaddr, b"", b"")  # fmt: skip
    options = bytes([53, 1, 1, 55, 7, 1, 3, 6, 60, 66, 67, 175])
    if arch is not None:
        options += bytes([93, 2]) + struct.pack("!H", arch)
        options += bytes([60, 32]) + f"PXEClient:Arch:{arch:05d}:UNDI:003016".encode()
    if ipxe:
        options += bytes([77, 4]) + b"iPXE"
    return header + MAGIC + options + b"\xff"


def suboptions(data: bytes) -> dict[int, bytes]:
    """RFC 2132 encapsulated options: code, length, value; pad (0) and end (255) skipped."""
    found: dict[int, bytes] = {}
    i = 0
    while i < len(data) and data[i] != 255:
        if data[i] == 0:
            i += 1
            continue
        found[data[i]] = data[i + 2 : i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return found


def parse_offer(packet: bytes, xid: int) -> Offer | None:
    if len(packet) < 240 or packet[0] != 2 or struct.unpack("!I", packet[4:8])[0] != xid:
        return None
    options: dict[int, bytes] = {}
    i = 240
    while i < len(packet) and packet[i] != 255:
        if packet[i] == 0:
            i += 1
            continue
        code, length = packet[i], packet[i + 1]
        options[code] = options.get(code, b"") + packet[i + 2 : i + 2 + length]
        i += 2 + length
    if options.get(53) != b"\x02":
        return None
    filename = options.get(67, packet[108:236]).rstrip(b"\0").decode()
    vendor = options.get(60)
    return Offer(filename, vendor.decode() if vendor else None, options.get(175))


CLIENT = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"pbr-dc0")
sock.bind(("0.0.0.0", 68))
packet = bytes.fromhex(sys.argv[1])
xid = packet[4:8]
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    sock.sendto(packet, ("255.255.255.255", 67))
    sock.settimeout(1.0)
    try:
        while True:
            data = sock.recv(4096)
            if data[0] == 2 and data[4:8] == xid:
                print(data.hex())
                sys.exit(0)
    except socket.timeout:
        continue
sys.exit(1)
"""


class Lan:
    """A server namespace (the inventory's interface and address) and a client namespace."""

    def __init__(self, suffix: str) -> None:
        self.server = f"pbr-ds{suffix}"
        self.client = f"pbr-dc{suffix}"

    def up(self, interface: str, address: str) -> None:
        for ns in (self.server, self.client):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", self.server, "link", "add", interface, "type", "veth",
                        "peer", "name", "pbr-dc0", "netns", self.client], check=True)  # fmt: skip
        subprocess.run(["ip", "-n", self.server, "addr", "add", address, "dev", interface],
                       check=True)  # fmt: skip
        subprocess.run(["ip", "-n", self.server, "link", "set", interface, "up"], check=True)
        subprocess.run(["ip", "-n", self.client, "link", "set", "pbr-dc0", "up"], check=True)

    def down(self) -> None:
        for ns in (self.server, self.client):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

    def ask(self, mac: str, arch: int | None, ipxe: bool = False, wait: float = 4.0) -> Offer:
        xid = random.getrandbits(32)
        packet = discover(mac, arch, ipxe, xid)
        argv = [sys.executable, "-c", CLIENT, packet.hex(), str(wait)]
        result = subprocess.run(
            ["ip", "netns", "exec", self.client, *argv],
            capture_output=True, text=True, timeout=wait + 30, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"no OFFER for {mac} arch {arch}: {result.stderr}"
        offer = parse_offer(bytes.fromhex(result.stdout.strip()), xid)
        assert offer is not None
        return offer


def _server_argv(kind: str, out: Path) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    if kind == "dhcpd":
        (out / "dhcpd.leases").touch()
        return [shutil.which("dhcpd") or "dhcpd", "-4", "-f", "-q", "-cf", str(out / "dhcpd.conf"),
                "-lf", str(out / "dhcpd.leases"), "-pf", str(out / "dhcpd.pid"),
                "pb-lab0"], env  # fmt: skip
    if kind == "dnsmasq":
        return [shutil.which("dnsmasq") or "dnsmasq", "-k", "-C", str(out / "dnsmasq.conf"),
                f"--dhcp-leasefile={out / 'dnsmasq.leases'}", f"--pid-file={out / 'dm.pid'}",
                "--log-facility=-"], env  # fmt: skip
    env.update(KEA_PIDFILE_DIR=str(out), KEA_LOCKFILE_DIR=str(out), KEA_LOGGER_DESTINATION=str(out))
    return [shutil.which("kea-dhcp4") or "kea-dhcp4", "-c", str(out / "kea-dhcp4.json")], env


@pytest.fixture(scope="module", params=["dhcpd", "kea", "dnsmasq"])
def lan(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lan]:
    """One server per kind for the module: the tests only read OFFERs, leases do not matter."""
    kind: str = request.param
    tmp_path = tmp_path_factory.mktemp(kind)
    binary = {"dhcpd": "dhcpd", "kea": "kea-dhcp4", "dnsmasq": "dnsmasq"}[kind]
    if shutil.which(binary) is None and shutil.which(binary, path="/usr/sbin") is None:
        print(f"SKIP reason: {binary} is not installed")
        pytest.skip(f"{binary} is not installed")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    inv = lab_inventory()
    target = "kea" if kind == "kea" else kind
    files = (
        render_kea(inv, RenderContext(), lease_file=str(tmp_path / "kea-leases4.csv"))
        if kind == "kea"
        else render(target, inv, RenderContext())
    )
    write_files(tmp_path, files)
    network = Lan(str(os.getpid() % 100000))
    try:
        network.up("pb-lab0", "10.77.0.1/24")
        argv, env = _server_argv(kind, tmp_path)
        server = subprocess.Popen(
            ["ip", "netns", "exec", network.server, *argv], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            time.sleep(0.5)
            assert server.poll() is None, f"{kind} exited with {server.returncode}"
            network.ask(UNKNOWN_MAC, 0, wait=15.0)  # wait until the server answers at all
            yield network
        finally:
            server.terminate()
            server.wait(timeout=10)
    finally:
        network.down()


def test_rfc4578_bios_client_gets_undionly(lan: Lan) -> None:
    assert lan.ask(UNKNOWN_MAC, 0).filename == "undionly.kpxe"


def test_rfc4578_uefi_x64_client_gets_ipxe_efi(lan: Lan) -> None:
    assert lan.ask(UNKNOWN_MAC, 7).filename == "ipxe.efi"
    assert lan.ask(UNKNOWN_MAC, 9).filename == "ipxe.efi"


def test_rfc4578_client_without_option_93_is_treated_as_bios(lan: Lan) -> None:
    assert lan.ask(UNKNOWN_MAC, None).filename == "undionly.kpxe"


def test_rfc4578_unknown_architecture_falls_back_to_ipxe_efi(lan: Lan) -> None:
    assert lan.ask(UNKNOWN_MAC, 0x20).filename == "ipxe.efi"


def test_uefi_http_boot_client_gets_a_url_and_httpclient(lan: Lan) -> None:
    offer = lan.ask(UNKNOWN_MAC, 16)
    assert offer.filename == "http://10.77.0.1:8080/boot/ipxe/ipxe.efi"
    assert offer.vendor_class == "HTTPClient"


def test_ipxe_user_class_gets_the_script_and_no_pxedhcp(lan: Lan) -> None:
    offer = lan.ask(UNKNOWN_MAC, 7, ipxe=True)
    assert offer.filename == SCRIPT_URL
    assert offer.ipxe_encap is not None
    assert suboptions(offer.ipxe_encap) == {176: b"\x01"}


def test_node_override_applies_to_every_nic_of_that_node_only(lan: Lan) -> None:
    assert lan.ask(NODE01_SECOND_NIC, 7).filename == "snponly.efi"
    assert lan.ask(NODE02, 7).filename == "ipxe.efi"
    assert lan.ask(NODE01_SECOND_NIC, 0).filename == "undionly.kpxe"
    assert lan.ask(NODE01_SECOND_NIC, 7, ipxe=True).filename == SCRIPT_URL
