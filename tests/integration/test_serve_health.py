"""/health reports what is true: each service answers a real probe, and a service that stops
answering turns /health to 503 naming it within seconds, and back to 200 when it answers.

Two kinds of fault:
- real ones, on a real `plasmaboot serve` process in a network namespace the test creates:
  an nftables rule makes the TFTP port, the DHCP port, the HTTP listener's probed address
  or the admin listener unreachable (the firewall mistake that breaks PXE in real networks);
- in-process ones, where no outside fault exists, on the real `ProvisioningServer` started
  in the test's event loop: the TFTP loop thread killed or hung, the DHCP reader removed
  from its loop, the DHCP sockets, the HTTP listener or the admin listener closed.

/health (and /metrics) answer on both listeners, so a dead one is named by the other.

DHCP answers on `lo` here (SO_BINDTODEVICE, loopback only): nothing leaves the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from plasmaboot.serve.runner import ProvisioningServer, ServeOptions

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# the serve process in its own namespace
NS_HTTP, NS_TFTP, NS_DHCP, NS_ADMIN = 17532, 17533, 17534, 17529
# the in-process server, on the host's loopback
HTTP, TFTP, DHCP = 17535, 17536, 17537
ADMIN_PORT = 17538
SERVICES = ("dhcp", "tftp", "http", "admin")
ALL_RUNNING = {name: "running" for name in SERVICES}


def lab_copy(tmp_path: Path) -> Path:
    config = tmp_path / "cluster.yaml"
    config.write_text((ROOT / "examples/lab/miniature.yaml").read_text())
    return config


def require_root_and(*binaries: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, SO_BINDTODEVICE)")
    for binary in binaries:
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (Debian package needed for this test)")


# ---- a real serve process, real faults ----------------------------------------------------


class Namespace:
    def __init__(self) -> None:
        self.name = f"pbh{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.exec("ip", "link", "set", "lo", "up")

    def exec(self, *cmd: str, check: bool = True) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd],
            check=check, capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip

    def close(self) -> None:
        pids = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True
        ).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], check=False)

    def health(self) -> tuple[int, dict[str, Any]]:
        """GET /health from inside the namespace, on 127.0.0.2: the HTTP probe uses 127.0.0.1."""
        out = self.exec(
            "curl", "-s", "-m", "2", "-w", "\n%{http_code}",
            f"http://127.0.0.2:{NS_HTTP}/health", check=False,
        )  # fmt: skip
        body, _, code = out.rpartition("\n")
        return int(code or 0), json.loads(body) if body.startswith("{") else {}

    def firewall(self, rule: str | None) -> None:
        """Drop what `rule` matches on input (None: drop nothing)."""
        self.exec("nft", "flush", "chain", "inet", "pbhealth", "input")
        if rule:
            self.exec("nft", f"add rule inet pbhealth input {rule} drop")


@pytest.fixture
def serve_in_netns(tmp_path: Path) -> Iterator[Namespace]:
    require_root_and("ip", "nft", "curl")
    ns = Namespace()
    log = tmp_path / "serve.log"
    try:
        ns.exec("nft", "add table inet pbhealth")
        ns.exec(
            "nft",
            "add chain inet pbhealth input { type filter hook input priority 0 ; policy accept ; }",
        )
        argv = [
            "ip", "netns", "exec", ns.name, sys.executable, "-m", "plasmaboot", "serve",
            "-c", str(lab_copy(tmp_path)), "--state-dir", str(tmp_path / "state"),
            "--interface", "lo", "--bind", "0.0.0.0", "--http-port", str(NS_HTTP),
            "--tftp-port", str(NS_TFTP), "--dhcp-port", str(NS_DHCP),
            "--admin-port", str(NS_ADMIN),
        ]  # fmt: skip
        env = {**os.environ, "PLASMABOOT_ADMIN_TOKEN": "health-test-admin"}
        with log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            assert wait_health(ns, 200, timeout=20), log.read_text()
            yield ns
        finally:
            proc.kill()
            proc.wait()
    finally:
        ns.close()


def wait_health(ns: Namespace, status: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ns.health()[0] == status:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    ("service", "rule"),
    [
        ("tftp", f"udp dport {NS_TFTP}"),
        ("dhcp", f"udp dport {NS_DHCP}"),
        ("http", f"ip daddr 127.0.0.1 tcp dport {NS_HTTP}"),
        ("admin", f"tcp dport {NS_ADMIN}"),
    ],
)
def test_an_unreachable_service_turns_health_503_naming_it(
    serve_in_netns: Namespace, service: str, rule: str
) -> None:
    ns = serve_in_netns
    assert ns.health() == (200, {"status": "healthy", "services": ALL_RUNNING})

    ns.firewall(rule)
    started = time.monotonic()
    assert wait_health(ns, 503, timeout=10), ns.health()
    assert time.monotonic() - started < 6  # a probe period plus its timeout, and some slack
    code, body = ns.health()
    assert code == 503
    assert body["failing"] == [service]
    assert body["services"] == {**ALL_RUNNING, service: "failed"}

    ns.firewall(None)
    assert wait_health(ns, 200, timeout=10), ns.health()


# ---- the real server object in this process, in-process faults ----------------------------


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ProvisioningServer]:
    require_root_and()
    options = ServeOptions(
        config=lab_copy(tmp_path),
        state_dir=tmp_path / "state",
        assets_dir=tmp_path,
        interface="lo",
        bind="127.0.0.1",
        http_port=HTTP,
        tftp_port=TFTP,
        dhcp_port=DHCP,
        admin_port=ADMIN_PORT,
    )
    server = ProvisioningServer(options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def health() -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{HTTP}/health", timeout=2)
    return response.status_code, response.json()


async def admin_get(server: ProvisioningServer, path: str) -> httpx.Response:
    """GET on the admin listener, verified against the CA serve made in its state dir."""
    ca = ssl.create_default_context(cafile=server.options.state_dir / "pki" / "ca.crt")
    async with httpx.AsyncClient(verify=ca) as client:
        return await client.get(f"https://127.0.0.1:{ADMIN_PORT}{path}", timeout=2)


async def failing_within(seconds: float) -> list[str]:
    """The services /health names as failing once it turns 503 (or [] if it never does)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        code, body = await health()
        if code == 503:
            return [str(name) for name in body["failing"]]
        await asyncio.sleep(0.2)
    return []


async def healthy_within(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (await health())[0] == 200:
            return True
        await asyncio.sleep(0.2)
    return False


def tftp_refused() -> float:
    labels = {"reason": "not_found"}
    return REGISTRY.get_sample_value("plasmaboot_tftp_requests_refused_total", labels) or 0.0


async def test_all_services_answer_their_probes(server: ProvisioningServer) -> None:
    assert await health() == (200, {"status": "healthy", "services": ALL_RUNNING})
    assert server.dhcp is not None and server.dhcp.probes_heard  # the DHCP loop read a probe
    assert server.health is not None
    refused, dhcp_stats = tftp_refused(), server.dhcp.stats
    await server.health.probe_once()
    # Probes are answered, but neither counted as machines' requests nor decoded as DHCP.
    assert [server.health.status(name) for name in SERVICES] == ["running"] * len(SERVICES)
    assert tftp_refused() == refused and server.dhcp.stats == dhcp_stats


async def test_a_dead_tftp_thread_is_named(server: ProvisioningServer) -> None:
    thread = server.tftp_thread
    assert thread is not None
    thread.loop.call_soon_threadsafe(thread.loop.stop)  # the loop ends: the thread exits
    assert await failing_within(6) == ["tftp"]
    assert not thread.alive
    # The same loop (its socket still open) run again by a new thread: healthy again, and
    # the server can stop cleanly (a stopped loop cannot close its socket).
    thread._thread = threading.Thread(target=thread.loop.run_forever, daemon=True)
    thread._thread.start()
    assert await healthy_within(6)


async def test_a_hung_tftp_loop_is_named_and_recovers(server: ProvisioningServer) -> None:
    thread, tftp = server.tftp_thread, server.tftp
    assert thread is not None and tftp is not None
    # Blocks the TFTP loop for 5 s: thread alive, socket open, and yet no answer.
    thread.loop.call_soon_threadsafe(time.sleep, 5)
    assert await failing_within(6) == ["tftp"]
    assert thread.alive and tftp.listening
    assert await healthy_within(8)


async def test_a_closed_tftp_socket_is_named(server: ProvisioningServer) -> None:
    thread, tftp = server.tftp_thread, server.tftp
    assert thread is not None and tftp is not None
    listener = tftp._listener
    assert listener is not None
    # As asyncio does on a fatal socket error: the transport closes, the server keeps going.
    thread.loop.call_soon_threadsafe(listener.close)
    assert await failing_within(6) == ["tftp"]


async def test_a_dhcp_reader_gone_from_its_loop_is_named(server: ProvisioningServer) -> None:
    assert server.dhcp is not None
    loop = asyncio.get_running_loop()
    sockets = server.dhcp._sockets
    for sock in sockets:  # the sockets stay open; nothing reads them any more
        loop.remove_reader(sock.fileno())
    assert await failing_within(6) == ["dhcp"]
    assert server.dhcp.listening


async def test_closed_dhcp_sockets_are_named(server: ProvisioningServer) -> None:
    assert server.dhcp is not None
    server.dhcp._close_sockets(asyncio.get_running_loop())
    assert await failing_within(6) == ["dhcp"]


async def test_a_closed_http_listener_reads_as_failed(server: ProvisioningServer) -> None:
    assert server.http is not None
    for site in list(server.http.sites):
        await site.stop()
    # /health itself is served by that listener: it is unreachable (a monitor sees the
    # server down); the probe result, which the log reports, says why.
    with pytest.raises(httpx.ConnectError):
        await health()
    deadline = time.monotonic() + 6
    while server.provisioner.service_status()["http"] != "failed":
        assert time.monotonic() < deadline, server.provisioner.service_status()
        await asyncio.sleep(0.2)
    assert server.provisioner.service_status() == {**ALL_RUNNING, "http": "failed"}
    # The admin listener still answers, and names the dead one.
    response = await admin_get(server, "/health")
    assert response.status_code == 503
    assert response.json()["failing"] == ["http"]


async def test_a_closed_admin_listener_is_named_on_the_boot_port(
    server: ProvisioningServer,
) -> None:
    assert server.admin is not None
    response = await admin_get(server, "/health")
    assert (response.status_code, response.json()) == (
        200,
        {"status": "healthy", "services": ALL_RUNNING},
    )
    assert "plasmaboot_dhcp_events" in (await admin_get(server, "/metrics")).text
    for site in list(server.admin.sites):
        await site.stop()
    assert await failing_within(6) == ["admin"]
    with pytest.raises(httpx.ConnectError):
        await admin_get(server, "/health")


async def test_a_stopped_prober_cannot_read_as_healthy(server: ProvisioningServer) -> None:
    assert server.health is not None
    await server.health.stop()
    server.health.stale_s = 1.0  # the real rule (a few periods) shortened for the test
    # Each service's last result ages from when its own probe answered: under load one
    # goes stale a little before the others, so wait for all of them, not the first 503.
    deadline, failing = time.monotonic() + 4, []
    while sorted(failing) != sorted(SERVICES) and time.monotonic() < deadline:
        failing = await failing_within(deadline - time.monotonic())
        await asyncio.sleep(0.2)
    assert sorted(failing) == sorted(SERVICES)
