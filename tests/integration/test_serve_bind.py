"""`serve --bind ADDR` never stops DHCP from hearing broadcasts: a real udhcpc in its own
namespace gets its lease whatever the bind option, and serve says where each service
listens (issue: with --bind the DHCP socket used to be bound to that one address)."""

# ruff: noqa: F811  (pytest fixtures imported from the support module)

from __future__ import annotations

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

pytestmark = pytest.mark.integration


@pytest.fixture
def serve_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=15)


@pytest.mark.parametrize("bind", [None, "0.0.0.0", SERVER_IP])
def test_dhcp_hears_broadcasts_whatever_the_bind_option(
    bind: str | None,
    namespaces: Namespaces,
    serve_procs: list[subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    require_root_and("udhcpc")
    srv, cli = namespaces.ns("s"), namespaces.ns("c")
    namespaces.link(srv, "pbdsv", cli, "pbdcv", KNOWN_MAC)
    server_if, client_if = namespaces.ifname("pbdsv"), namespaces.ifname("pbdcv")
    namespaces.exec(srv, "ip", "addr", "add", f"{SERVER_IP}/16", "dev", server_if)
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(inventory_yaml("full", server_if))
    log = tmp_path / "serve.log"
    argv = [
        "ip", "netns", "exec", srv, sys.executable, "-m", "plasmaboot", "serve",
        "-c", str(inventory), "--state-dir", str(tmp_path / "state"),
        "--assets", str(tmp_path), "--http-port", "17520", "--tftp-port", "17521",
        *(["--bind", bind] if bind else []),
    ]  # fmt: skip
    with log.open("wb") as out:
        serve_procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT))
    assert wait_for(lambda: "serving" in log.read_text(), 20), log.read_text()
    listening = next(line for line in log.read_text().splitlines() if "serving" in line)
    assert f"http {bind or '0.0.0.0'}:17520" in listening
    assert f"dhcp on {server_if} port 67 (every address of the interface" in listening

    out = tmp_path / "udhcpc.out"
    script = tmp_path / "udhcpc.sh"
    script.write_text(f'#!/bin/sh\n[ "$1" = bound ] && echo "$ip" >> {out}\nexit 0\n')
    script.chmod(0o755)
    namespaces.exec(
        cli, "udhcpc", "-i", client_if, "-n", "-q", "-f", "-t", "3", "-T", "1", "-s",
        str(script), check=False, timeout=20,
    )  # fmt: skip
    assert out.exists(), log.read_text()
    assert out.read_text().split()[-1] == KNOWN_IP
