"""Real UEFI firmware (OVMF in QEMU): EDK2's PXE client takes our offer and asks for ipxe.efi."""
# ruff: noqa: F811  (pytest fixtures imported from the support module)

from __future__ import annotations

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
    Namespaces,
    ServerProcess,
    inventory_yaml,
    namespaces,
    require_root_and,
    servers,
)

pytestmark = pytest.mark.integration
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")

# Records the file names of TFTP read requests; the firmware only asks once it took our reply.
TFTP_RECORDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 69))
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        data, _ = s.recvfrom(1500)
        if data[:2] == b"\\x00\\x01":
            out.write(data[2:].split(b"\\x00")[0].decode(errors="replace") + "\\n")
"""


def test_rfc4578_edk2_pxe_arch_7_is_sent_ipxe_efi_over_tftp(
    namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    require_root_and("qemu-system-x86_64")
    if not (OVMF_CODE.exists() and OVMF_VARS.exists()):
        pytest.skip("ovmf is not installed (UEFI firmware for QEMU)")
    nets = namespaces
    srv = nets.ns("s")
    tap = nets.ifname("pbdt")
    nets.exec(srv, "ip", "tuntap", "add", tap, "mode", "tap")
    nets.exec(srv, "ip", "addr", "add", f"{SERVER_IP}/16", "dev", tap)
    nets.exec(srv, "ip", "link", "set", tap, "up")
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(inventory_yaml("full", tap))
    server = ServerProcess(srv, inventory, tmp_path / "state", tap).start()
    servers.append(server)
    requests = tmp_path / "tftp-requests.txt"
    requests.touch()
    subprocess.Popen(
        ["ip", "netns", "exec", srv, sys.executable, "-c", TFTP_RECORDER, SERVER_IP,
         str(requests)],
    )  # fmt: skip
    variables = tmp_path / "OVMF_VARS.fd"
    shutil.copyfile(OVMF_VARS, variables)
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    with (tmp_path / "qemu.log").open("ab") as out:
        subprocess.Popen(
            ["ip", "netns", "exec", srv, qemu, "-nodefaults", "-display", "none", "-m", "256",
             "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
             "-drive", f"if=pflash,format=raw,unit=1,file={variables}",
             "-boot", "n", "-no-reboot",
             "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
             "-device", f"e1000,netdev=n0,mac={KNOWN_MAC}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and "ipxe.efi" not in requests.read_text():
        time.sleep(0.5)
    assert "ipxe.efi" in requests.read_text(), server.log
    assert f"ACK {KNOWN_MAC} -> {KNOWN_IP}" in server.log
