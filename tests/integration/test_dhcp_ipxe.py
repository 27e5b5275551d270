"""Full mode with real iPXE (QEMU's NIC ROM): fixed address, script URL, node -> pxe-booting."""
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

from plasmaboot.lifecycle import State
from plasmaboot.store import open_store

pytestmark = pytest.mark.integration


def test_rfc2131_ipxe_gets_fixed_address_script_and_node_moves_to_pxe_booting(
    namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    require_root_and("qemu-system-x86_64")
    if not Path("/usr/lib/ipxe/qemu/pxe-e1000.rom").exists():
        pytest.skip("ipxe-qemu is not installed (QEMU's iPXE NIC ROM)")
    nets = namespaces
    srv = nets.ns("s")
    tap = nets.ifname("pbdt")
    nets.exec(srv, "ip", "tuntap", "add", tap, "mode", "tap")
    nets.exec(srv, "ip", "addr", "add", f"{SERVER_IP}/16", "dev", tap)
    nets.exec(srv, "ip", "link", "set", tap, "up")
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(inventory_yaml("full", tap))
    state = tmp_path / "state"
    server = ServerProcess(srv, inventory, state, tap).start()
    servers.append(server)
    http_log = tmp_path / "http.log"
    with http_log.open("ab") as out:
        subprocess.Popen(
            ["ip", "netns", "exec", srv, sys.executable, "-m", "http.server", "8080",
             "--bind", SERVER_IP, "--directory", str(tmp_path)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    with (tmp_path / "qemu.log").open("ab") as out:
        subprocess.Popen(
            ["ip", "netns", "exec", srv, qemu, "-nodefaults", "-display", "none", "-m", "128",
             "-boot", "n", "-no-reboot",
             "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
             "-device", f"e1000,netdev=n0,mac={KNOWN_MAC}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and "GET /boot/ipxe/boot.ipxe" not in http_log.read_text():
        time.sleep(0.2)
    assert "GET /boot/ipxe/boot.ipxe" in http_log.read_text(), server.log
    assert f"ACK {KNOWN_MAC} -> {KNOWN_IP}" in server.log
    store = open_store(state)
    try:
        node = store.get_node("node01")
        assert node is not None and node.state is State.PXE_BOOTING
        assert any(ev.event == "pxe-boot" and ev.actor == "dhcp" for ev in store.events("node01"))
    finally:
        store.close()
