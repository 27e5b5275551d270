"""`plasmaboot node provision` drives a real IPMI BMC (ipmi_sim) wired to a lab VM: PXE
once + power cycle -> the VM netboots through serve -> active; `decommission` powers it
off through the same BMC. The runbook's sections 5.2 and 7.6 with no hands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plasmaboot.lab.bmc import start_bmc
from plasmaboot.lab.runner import Lab
from plasmaboot.lifecycle import State

ROOT = Path(__file__).resolve().parents[2]
BMC_PORT = 17623
USER, PASSWORD = "pblab", "pbLabBmcS3cret"

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(1200),
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root for namespaces and taps"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed"),
    pytest.mark.skipif(shutil.which("ipmi_sim") is None, reason="openipmi not installed"),
]


def inventory_with_bmc(tmp_path: Path) -> Path:
    doc = yaml.safe_load((ROOT / "examples/lab/miniature.yaml").read_text())
    doc["nodes"][0]["bmc"] = {
        "address": "127.0.0.1", "port": BMC_PORT, "driver": "ipmi", "username": USER,
        "password_env": "PB_LAB_BMC_PASSWORD",
    }  # fmt: skip
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def plasmaboot(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PB_LAB_BMC_PASSWORD": PASSWORD}
    return subprocess.run(
        [sys.executable, "-m", "plasmaboot", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def test_provision_through_the_bmc_reaches_active_and_decommission_powers_off(
    tmp_path: Path, assets: Path
) -> None:
    config = inventory_with_bmc(tmp_path)
    lab = Lab(tmp_path / "lab", config, netns="pbe2eprov", assets=assets)
    bmc = None
    try:
        lab.create_network()
        lab.start_server()
        bmc = start_bmc(lab, "node01", BMC_PORT, USER, PASSWORD)
        assert lab.vm_pid("node01") is None  # powered off until the BMC is told otherwise

        state = ["--state-dir", str(lab.state_dir), "-c", str(config)]
        done = plasmaboot("node", "provision", "node01", *state, "--watch", "600")
        assert done.returncode == 0, done.stdout + done.stderr
        events = [(e[1], e[2]) for e in lab.events("node01")]
        assert events[:3] == [
            ("enrolled", "enroll"), ("enrolled", "provision-requested"),
            ("pxe-booting", "pxe-boot"),
        ]  # fmt: skip
        assert events[-1] == ("active", "joined")
        assert PASSWORD not in done.stdout + done.stderr

        # the miniature runs no cluster store: nothing to leave
        keep = "--keep-member"
        gone = plasmaboot("node", "decommission", "node01", keep, *state, timeout=120)
        assert gone.returncode == 0, gone.stdout + gone.stderr
        assert lab.vm_pid("node01") is None
        node = next(n for n in lab.nodes() if n.hostname == "node01")
        assert node.state is State.DECOMMISSIONED

        again = plasmaboot("node", "provision", "node01", *state, "--watch", "0")
        assert again.returncode == 1 and "decommissioned" in again.stderr
    finally:
        if bmc is not None:
            bmc.terminate()
            bmc.wait(10)
        lab.down()
