"""Real firmware boots through `plasmaboot serve` to `active`: BIOS iPXE ROM, OVMF PXE,
OVMF HTTP Boot, and four VMs at once. QEMU under TCG in a namespace the test creates."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from plasmaboot.lab.network import run
from plasmaboot.lab.qemu import FIRMWARES, Firmware
from plasmaboot.lab.runner import Lab
from plasmaboot.lifecycle import State

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples/lab/miniature.yaml"
BOOT_TIMEOUT_S = 600

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(BOOT_TIMEOUT_S * 2 + 300),
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root for namespaces and taps"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed"),
]

# The whole provisioning, as the VM's own reports drive it: nothing is skipped by the server.
ACTIVE_SEQUENCE = [
    (None, "enrolled", "enroll"),
    ("enrolled", "pxe-booting", "pxe-boot"),
    ("pxe-booting", "installer-booted", "installer-booted"),
    ("installer-booted", "installing", "install-started"),
    ("installing", "installed", "installed"),
    ("installed", "first-boot", "first-boot"),
    ("first-boot", "joining", "join-started"),
    ("joining", "active", "joined"),
]


@contextmanager
def lab_running(tmp_path: Path, assets: Path, firmware: Firmware, netns: str) -> Iterator[Lab]:
    lab = Lab(tmp_path / "lab", LAB, netns=netns, firmware=firmware, assets=assets)
    try:
        lab.create_network()
        lab.start_server()
        yield lab
    finally:
        lab.down()
        assert not lab.network.exists()


def metrics(lab: Lab) -> str:
    result = run(*lab.network.exec_argv("curl", "-sf", f"{lab.http_base}/metrics"))
    return result.stdout


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        named = line.startswith((name + "{", name + " "))
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def link_local(mac: str) -> str:
    """RFC 4291 appendix A: the EUI-64 link-local address iPXE derives from its MAC."""
    octets = [int(part, 16) for part in mac.split(":")]
    eui64 = [octets[0] ^ 0x02, *octets[1:3], 0xFF, 0xFE, *octets[3:]]
    groups = [f"{eui64[i] << 8 | eui64[i + 1]:x}" for i in range(0, 8, 2)]
    return "fe80::" + ":".join(groups)


def explain(lab: Lab, hostname: str) -> str:
    console = lab.vm_spec(hostname).console_log
    tail = console.read_text(errors="replace")[-3000:] if console.exists() else "(no console)"
    return (
        f"events={lab.events(hostname)}\nconsole tail:\n{tail}\nserve log:\n"
        + (lab.server_log.read_text(errors="replace")[-3000:])
    )


@pytest.mark.parametrize("firmware", FIRMWARES)
def test_one_vm_boots_to_active_and_then_boots_from_disk(
    tmp_path: Path, assets: Path, firmware: Firmware
) -> None:
    netns = "pbe2e" + re.sub(r"[^a-z]", "", firmware)[:6]
    with lab_running(tmp_path, assets, firmware, netns) as lab:
        lab.start_vm("node01")
        reached = lab.wait_for(["node01"], State.ACTIVE, BOOT_TIMEOUT_S)
        assert reached, explain(lab, "node01")
        assert lab.events("node01") == ACTIVE_SEQUENCE
        assert lab.wait_vm_exit("node01", 120) is not None, "the VM powers off once joined"
        # iPXE solicited a router from its EUI-64 link-local address and was answered, so
        # it did not sit out its IPv6 timeout (lab/router_advert.py).
        answered = lab.router_advert_log.read_text()
        assert f"solicitation from {link_local(lab.vm_spec('node01').mac)}" in answered

        seen = metrics(lab)
        tftp_files = metric(seen, "plasmaboot_tftp_transfers_total", outcome="ok")
        ipxe_over_http = metric(
            seen, "plasmaboot_http_requests_total", route="/boot/ipxe/{name}", status="200"
        )
        if firmware == "bios":  # QEMU's iPXE ROM: DHCP, then straight to the HTTP script
            assert tftp_files == 0 and ipxe_over_http == 0
        elif firmware == "uefi":  # OVMF PXE fetches ipxe.efi over TFTP on each boot
            assert tftp_files >= 2 and ipxe_over_http == 0
        else:  # OVMF HTTP Boot fetches ipxe.efi over HTTP
            assert ipxe_over_http >= 2 and tftp_files == 0
        assert (
            metric(seen, "plasmaboot_http_requests_total", route="/boot/ipxe/node/{mac}.ipxe") >= 2
        )

        # Power on again: an active node boots "from disk", it is not reinstalled.
        lab.start_vm("node01")
        assert lab.wait_vm_exit("node01", BOOT_TIMEOUT_S) is not None, explain(lab, "node01")
        after = lab.events("node01")
        assert after[: len(ACTIVE_SEQUENCE)] == ACTIVE_SEQUENCE
        assert after[len(ACTIVE_SEQUENCE) :] == [("active", "active", "booted-from-disk")]


def test_four_vms_at_once_reach_active(tmp_path: Path, assets: Path) -> None:
    names = ["node01", "node02", "node03", "node04"]
    with lab_running(tmp_path, assets, "bios", "pbe2emany") as lab:
        for name in names:
            lab.start_vm(name)
        reached = lab.wait_for(names, State.ACTIVE, BOOT_TIMEOUT_S)
        assert reached, "\n".join(explain(lab, n) for n in names)
        for name in names:
            assert lab.events(name) == ACTIVE_SEQUENCE
