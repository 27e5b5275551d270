"""`plasmaboot serve` as a real process: refuses to guess an interface, survives a broken
SIGHUP, drains on SIGTERM, and schemathesis finds no server error in the OpenAPI documents
of its boot port and of its admin listener (TLS)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from polling import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HTTP_PORT = 17510
TFTP_PORT = 17511
ADMIN_PORT = 17512
ADMIN = "serve-test-admin"  # the deprecated static token (the migration path)
BASE = f"http://127.0.0.1:{HTTP_PORT}"
ADMIN_BASE = f"https://127.0.0.1:{ADMIN_PORT}"


def lab_copy(tmp_path: Path, mutate: object = None) -> Path:
    doc = yaml.safe_load((ROOT / "examples/lab/miniature.yaml").read_text())
    if callable(mutate):
        mutate(doc)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def serve_argv(config: Path, state: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "plasmaboot", "serve", "-c", str(config), "--state-dir", str(state),
        "--bind", "127.0.0.1", "--http-port", str(HTTP_PORT), "--tftp-port", str(TFTP_PORT),
        "--admin-port", str(ADMIN_PORT), *extra,
    ]  # fmt: skip


def admin_get(tmp_path: Path, path: str) -> httpx.Response:
    """GET on the admin listener, verified against the CA serve made in its state dir."""
    ca = ssl.create_default_context(cafile=tmp_path / "state" / "pki" / "ca.crt")
    return httpx.get(ADMIN_BASE + path, headers={"Authorization": f"Bearer {ADMIN}"}, verify=ca)


def wait_healthy(proc: subprocess.Popen[str], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited early: {proc.returncode}"
        try:
            if httpx.get(f"{BASE}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not become healthy")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, Path]]:
    config = lab_copy(tmp_path)
    log = tmp_path / "serve.log"
    env = {**os.environ, "PLASMABOOT_ADMIN_TOKEN": ADMIN}
    with log.open("w") as out:
        proc = subprocess.Popen(
            serve_argv(config, tmp_path / "state", "--no-dhcp"),
            stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
    try:
        wait_healthy(proc)
        yield proc, config, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dhcp_without_a_named_interface_refuses_to_start(tmp_path: Path) -> None:
    def no_interface(doc: dict[str, object]) -> None:
        doc["networks"][0]["dhcp"].pop("interface")  # type: ignore[index]

    result = subprocess.run(
        serve_argv(lab_copy(tmp_path, no_interface), tmp_path / "state"),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    output = " ".join((result.stdout + result.stderr).split())
    assert "no interface is named" in output and "--interface" in output


def test_health_reports_dhcp_disabled_but_healthy(
    server: tuple[subprocess.Popen[str], Path, Path],
) -> None:
    body = httpx.get(f"{BASE}/health").json()
    assert body == {
        "status": "healthy",
        "services": {"dhcp": "disabled", "tftp": "running", "http": "running", "admin": "running"},
    }


def test_sighup_with_broken_inventory_keeps_serving(
    server: tuple[subprocess.Popen[str], Path, Path], tmp_path: Path
) -> None:
    proc, config, log = server
    good = config.read_text()
    config.write_text(good.replace("52:54:00:12:34:57", "52:54:00:12:34:56"))
    proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "inventory reload refused" in log.read_text()), log.read_text()
    assert httpx.get(f"{BASE}/health").status_code == 200
    assert "nodes[1].macs[0]" in log.read_text()
    nodes = admin_get(tmp_path, "/api/v1/nodes")
    assert [n["macs"] for n in nodes.json()][1] == ["52:54:00:12:34:57"]

    config.write_text(good.replace("52:54:00:12:34:59", "52:54:00:12:34:5f"))
    proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "inventory reloaded" in log.read_text()), log.read_text()
    node04 = admin_get(tmp_path, "/api/v1/nodes/node04")
    assert node04.json()["macs"] == ["52:54:00:12:34:5f"]


def _tftp_ok_transfers() -> float:
    for line in httpx.get(f"{BASE}/metrics").text.splitlines():
        if line.startswith('plasmaboot_tftp_transfers_total{outcome="ok"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_tftp_transfer_is_counted_once(
    server: tuple[subprocess.Popen[str], Path, Path], tmp_path: Path
) -> None:
    before = _tftp_ok_transfers()
    fetched = tmp_path / "undionly.kpxe"
    subprocess.run(
        ["tftp", "127.0.0.1", str(TFTP_PORT), "-m", "binary", "-c", "get", "undionly.kpxe",
         str(fetched)],
        check=True, timeout=30,
    )  # fmt: skip
    assert fetched.stat().st_size > 0
    assert wait_for(lambda: _tftp_ok_transfers() >= before + 1)
    time.sleep(0.5)  # a second count, if any, is recorded in the same loop turn
    assert _tftp_ok_transfers() == before + 1


def test_sigterm_drains_and_exits_cleanly(server: tuple[subprocess.Popen[str], Path, Path]) -> None:
    proc, _, log = server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert "stopping" in log.read_text()


@pytest.mark.skipif(
    shutil.which("st") is None and not Path(sys.prefix, "bin/st").exists(),
    reason="schemathesis is not installed",
)
@pytest.mark.parametrize("listener", ["boot", "admin"])
def test_schemathesis_finds_no_server_errors(
    server: tuple[subprocess.Popen[str], Path, Path], tmp_path: Path, listener: str
) -> None:
    """Both documents, each at its own listener: the admin one over TLS (verified against
    plasmaboot's CA) with a write token made by `plasmaboot admin token create`."""
    st = shutil.which("st") or str(Path(sys.prefix, "bin/st"))
    state = tmp_path / "state"
    if listener == "admin":
        created = subprocess.run(
            [sys.executable, "-m", "plasmaboot", "admin", "token", "create", "--name", "fuzz",
             "--scope", "write", "--state-dir", str(state)],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        base, token = ADMIN_BASE, created.stdout.strip()
        tls = ["--tls-verify", str(state / "pki" / "ca.crt")]
    else:
        base, token, tls = BASE, ADMIN, []
    document = httpx.get(f"{BASE}/api/openapi.json").json()
    assert not any(p.startswith("/api/v1/nodes") for p in document["paths"]), "admin on boot"
    result = subprocess.run(
        [
            st, "run", f"{base}/api/openapi.json", "--checks", "not_a_server_error",
            "--header", f"Authorization: Bearer {token}", "--max-examples", "25",
            "--no-color", "--suppress-health-check", "all", *tls,
            # a stream never ends: test_event_stream.py covers its answers
            "--exclude-path", "/api/v1/events/stream",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert httpx.get(f"{BASE}/health").status_code == 200


def test_a_taken_port_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", TFTP_PORT))
        result = subprocess.run(
            serve_argv(lab_copy(tmp_path), tmp_path / "state", "--no-dhcp"),
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    output = " ".join(result.stderr.split())
    assert result.returncode == 1
    assert f"cannot bind 127.0.0.1:{TFTP_PORT}" in output and "Traceback" not in output
