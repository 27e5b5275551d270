"""The lab's network as `plasmaboot lab up` makes it (namespace, bridge, advertiser).

The bridge answers router solicitations: a client namespace plugged into it over a veth
has its kernel solicit when the link comes up, and must hear an advert. iPXE in QEMU is the
peer that matters; the e2e lab test checks that it solicited and was answered. A new lab
starts from nothing, and refuses to start over a running one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from plasmaboot.lab.runner import Lab, LabError, tear_down

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def adverts_received(netns: str) -> int:
    """The kernel's own count of router advertisements that reached this namespace."""
    for line in sh("ip", "netns", "exec", netns, "cat", "/proc/net/snmp6").splitlines():
        name, _, value = line.partition(" ")
        if name == "Icmp6InRouterAdvertisements":
            return int(value)
    raise AssertionError("no Icmp6InRouterAdvertisements counter in /proc/net/snmp6")


def need_root() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for network namespaces")


def test_rfc4861_6_2_6_a_solicitation_on_the_lab_bridge_gets_an_advert(tmp_path: Path) -> None:
    need_root()
    tag = secrets.token_hex(2)
    lab = Lab(tmp_path, ROOT / "examples/lab/miniature.yaml", netns=f"pbra{tag}")
    client, port, host_end = f"pbrc{tag}", f"pbrp{tag}", f"pbrh{tag}"
    try:
        lab.create_network()
        sh("ip", "netns", "add", client)
        sh("ip", "-n", client, "link", "add", host_end, "type", "veth", "peer", "name", port)
        sh("ip", "-n", client, "link", "set", port, "netns", lab.network.netns)
        sh("ip", "-n", lab.network.netns, "link", "set", port, "master", lab.network.bridge)
        sh("ip", "-n", lab.network.netns, "link", "set", port, "up")
        sh("ip", "-n", client, "link", "set", host_end, "up")
        log = lab.router_advert_log
        deadline = time.monotonic() + 20  # DAD plus up to 1 s of RFC 4861 solicit delay
        while time.monotonic() < deadline:
            if adverts_received(client) and "answered" in log.read_text():
                break
            time.sleep(0.2)
        assert adverts_received(client) >= 1, log.read_text()
        assert "answered a router solicitation from fe80::" in log.read_text()
        routes = sh("ip", "-n", client, "-6", "route", "show", "default")
        assert routes.strip() == "", f"the advert must not make a default router: {routes}"
    finally:
        subprocess.run(["ip", "netns", "del", client], check=False, capture_output=True)
        tear_down(tmp_path, lab.network.netns)
    assert lab.network.netns not in sh("ip", "netns", "list")


def test_a_new_lab_forgets_the_previous_one_and_refuses_a_running_one(tmp_path: Path) -> None:
    need_root()
    lab = Lab(tmp_path, ROOT / "examples/lab/miniature.yaml", netns=f"pbrf{secrets.token_hex(2)}")
    for leftover in (lab.state_dir / "plasmaboot.db", lab.vm_dir / "node01.qcow2"):
        leftover.parent.mkdir(parents=True)
        leftover.write_text("a previous lab's")
    lab.server_log.write_text("a previous lab's log")
    try:
        lab.create_network()
        assert not lab.state_dir.exists() and not lab.vm_dir.exists()
        assert not lab.server_log.exists()
        lab.state_dir.mkdir()
        (lab.state_dir / "plasmaboot.db").write_text("the running lab's")
        again = Lab(tmp_path, ROOT / "examples/lab/miniature.yaml", netns=lab.network.netns)
        with pytest.raises(LabError, match="lab down"):
            again.create_network()
        assert (lab.state_dir / "plasmaboot.db").read_text() == "the running lab's"
        assert lab.network.netns in sh("ip", "netns", "list")
    finally:
        tear_down(tmp_path, lab.network.netns)
