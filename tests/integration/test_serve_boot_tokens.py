"""Issue 15: `plasmaboot serve` gives a node's boot token only to the address its DHCP
leased to that node. A real udhcpc in its own namespace gets its lease from serve; curl
then asks for the node's iPXE script from that address (a token) and from a second
address on the same veth (403, no token, counted). In proxy mode plasmaboot leases
nothing, so the weaker guarantee applies: whoever asks from the segment gets a token."""

# ruff: noqa: F811  (pytest fixtures imported from the support module)

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dhcp_support import (  # noqa: F401  (fixtures)
    KNOWN_IP,
    KNOWN_MAC,
    SERVER_IP,
    Namespaces,
    inventory_yaml,
    namespaces,
    require_root_and,
)
from polling import wait_for

from plasmaboot.lifecycle import State
from plasmaboot.store import SqliteStore

pytestmark = pytest.mark.integration

HTTP_PORT = 17530
OTHER_IP = "10.231.0.60"  # a second address on the client's veth: same segment, not leased
SCRIPT_URL = f"http://{SERVER_IP}:{HTTP_PORT}/boot/ipxe/node/{KNOWN_MAC}.ipxe"
TOKEN = re.compile(r"plasmaboot\.token=(\S+)")


@pytest.fixture
def serve_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=15)


def start_serve(
    namespaces: Namespaces,
    serve_procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
    mode: str,
) -> tuple[str, str, Path]:
    """serve in its namespace, a client namespace on one veth; (client ns, its if, log)."""
    srv, cli = namespaces.ns("s"), namespaces.ns("c")
    namespaces.link(srv, "pbdsv", cli, "pbdcv", KNOWN_MAC)
    server_if, client_if = namespaces.ifname("pbdsv"), namespaces.ifname("pbdcv")
    namespaces.exec(srv, "ip", "addr", "add", f"{SERVER_IP}/16", "dev", server_if)
    inventory = tmp_path / "cluster.yaml"
    pool = None if mode == "proxy" else ("10.231.0.100", "10.231.0.200")
    inventory.write_text(inventory_yaml(mode, server_if, pool=pool))
    log = tmp_path / "serve.log"
    argv = [
        "ip", "netns", "exec", srv, sys.executable, "-m", "plasmaboot", "serve",
        "-c", str(inventory), "--state-dir", str(tmp_path / "state"),
        "--assets", str(tmp_path), "--http-port", str(HTTP_PORT), "--tftp-port", "17531",
    ]  # fmt: skip
    with log.open("wb") as out:
        serve_procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT))
    assert wait_for(lambda: "serving" in log.read_text(), 20), log.read_text()
    return cli, client_if, log


def curl(namespaces: Namespaces, ns: str, source: str, url: str = SCRIPT_URL) -> tuple[int, str]:
    """GET `url` from `source` in `ns`: (HTTP status, body)."""
    out = namespaces.exec(
        ns, "curl", "-sS", "--max-time", "10", "--interface", source,
        "-w", "\n%{http_code}", url, timeout=20,
    )  # fmt: skip
    body, _, status = out.rpartition("\n")
    return int(status), body


def node_state(tmp_path: Path) -> State:
    store = SqliteStore.in_dir(tmp_path / "state")
    try:
        node = store.get_node("node01")
        assert node is not None
        return node.state
    finally:
        store.close()


def test_full_dhcp_token_only_to_the_leased_address(
    namespaces: Namespaces, serve_procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    require_root_and("udhcpc", "curl")
    cli, client_if, log = start_serve(namespaces, serve_procs, tmp_path, "full")
    bound = tmp_path / "udhcpc.out"
    script = tmp_path / "udhcpc.sh"
    # the client configures the address serve leased to it, as a real DHCP client does
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = bound ] || exit 0\n'
        'ip addr add "$ip/16" dev "$interface"\n'
        f'echo "$ip" >> {bound}\n'
    )
    script.chmod(0o755)
    namespaces.exec(
        cli, "udhcpc", "-i", client_if, "-n", "-q", "-f", "-t", "3", "-T", "1", "-s",
        str(script), check=False, timeout=20,
    )  # fmt: skip
    assert bound.exists(), log.read_text()
    assert bound.read_text().split()[-1] == KNOWN_IP
    namespaces.exec(cli, "ip", "addr", "add", f"{OTHER_IP}/16", "dev", client_if)

    status, body = curl(namespaces, cli, OTHER_IP)
    assert status == 403, body
    assert TOKEN.search(body) is None
    assert f"{OTHER_IP} is not that address" in body
    assert node_state(tmp_path) is State.ENROLLED, "a refused request records nothing"

    status, body = curl(namespaces, cli, KNOWN_IP)
    assert status == 200, body
    assert TOKEN.search(body) is not None and "plasmaboot.stage=install" in body
    assert node_state(tmp_path) is State.PXE_BOOTING

    status, body = curl(namespaces, cli, OTHER_IP)  # still refused once the node netboots
    assert status == 403 and TOKEN.search(body) is None
    status, metrics = curl(namespaces, cli, KNOWN_IP, f"http://{SERVER_IP}:{HTTP_PORT}/metrics")
    assert status == 200
    assert (
        'plasmaboot_boot_token_refused_total{reason="not-leased-address",where="script"} 2.0'
        in metrics
    )
    assert "no boot token for" in log.read_text()


def test_proxy_dhcp_leases_nothing_so_whoever_asks_gets_a_token(
    namespaces: Namespaces, serve_procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    require_root_and("curl")
    cli, client_if, log = start_serve(namespaces, serve_procs, tmp_path, "proxy")
    namespaces.exec(cli, "ip", "addr", "add", f"{OTHER_IP}/16", "dev", client_if)
    status, body = curl(namespaces, cli, OTHER_IP)
    assert status == 200, body + log.read_text()
    assert TOKEN.search(body) is not None
    assert node_state(tmp_path) is State.PXE_BOOTING
