"""A real `plasmaboot serve` enforces the lifecycle deadlines: a node left in pxe-booting past
its (2-second) deadline becomes boot-failed, with the reason in its events and /metrics."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from polling import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HTTP_PORT = 17530
TFTP_PORT = 17531
ADMIN_PORT = 17539
ADMIN = "deadline-test-admin"  # the deprecated static token: accepted as a write token
BASE = f"http://127.0.0.1:{HTTP_PORT}"
ADMIN_BASE = f"https://127.0.0.1:{ADMIN_PORT}"  # the admin listener (TLS)
AUTH = {"Authorization": f"Bearer {ADMIN}"}
TLS: dict[str, ssl.SSLContext] = {}  # the CA of the running serve's state dir


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Path]:
    doc = yaml.safe_load((ROOT / "examples/lab/miniature.yaml").read_text())
    doc["server"]["deadlines"] = {"pxe-booting": 2}
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(doc))
    log = tmp_path / "serve.log"
    argv = [
        sys.executable, "-m", "plasmaboot", "serve", "-c", str(config),
        "--state-dir", str(tmp_path / "state"), "--bind", "127.0.0.1",
        "--http-port", str(HTTP_PORT), "--tftp-port", str(TFTP_PORT), "--no-dhcp",
        "--admin-port", str(ADMIN_PORT),
    ]  # fmt: skip
    env = {**os.environ, "PLASMABOOT_ADMIN_TOKEN": ADMIN}
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{BASE}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        TLS["verify"] = ssl.create_default_context(cafile=tmp_path / "state/pki/ca.crt")
        yield log
    finally:
        proc.kill()
        proc.wait()


def node(name: str) -> dict[str, Any]:
    response = httpx.get(f"{ADMIN_BASE}/api/v1/nodes/{name}", headers=AUTH, verify=TLS["verify"])
    response.raise_for_status()
    return dict(response.json())


def deadline_failures() -> float:
    for line in httpx.get(f"{BASE}/metrics").text.splitlines():
        if line.startswith('plasmaboot_lifecycle_deadline_failures_total{state="pxe-booting"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_node_stuck_in_pxe_booting_becomes_boot_failed(server: Path) -> None:
    moved = httpx.post(
        f"{ADMIN_BASE}/api/v1/nodes/node01/actions",
        headers=AUTH,
        json={"event": "pxe-boot"},
        verify=TLS["verify"],
    )
    assert moved.status_code == 200, moved.text
    started = time.monotonic()
    assert node("node01")["state"] == "pxe-booting"
    assert node("node02")["state"] == "enrolled"  # a stable state has no deadline

    assert wait_for(lambda: node("node01")["state"] == "boot-failed", timeout=10), node("node01")
    took = time.monotonic() - started
    assert 1.9 <= took < 8, took  # not before the deadline, and within a reaper period of it

    events = httpx.get(
        f"{ADMIN_BASE}/api/v1/nodes/node01/events", headers=AUTH, verify=TLS["verify"]
    ).json()
    last = events[-1]
    assert (last["event"], last["actor"], last["from_state"], last["to_state"]) == (
        "boot-timeout",
        "deadline",
        "pxe-booting",
        "boot-failed",
    )
    assert last["detail"]["reason"] == "deadline"
    assert last["detail"]["state"] == "pxe-booting"
    assert last["detail"]["stopped_at"] == "pxe-boot"
    assert last["detail"]["deadline_s"] == 2
    assert last["detail"]["overdue_s"] >= 0
    assert node("node02")["state"] == "enrolled"
    assert deadline_failures() == 1
    assert "node01 failed by its deadline" in server.read_text()
