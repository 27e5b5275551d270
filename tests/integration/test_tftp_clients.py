"""The TFTP server against real clients (tftp-hpa, atftp, curl) in a private network namespace.

The server runs as `python -m plasmaboot.tftp` inside the namespace, as `plasmaboot serve`
would; packet loss comes from the kernel (nftables `numgen` dropping every Nth UDP packet in
the namespace: this kernel has no netem), so the recovery paths run against real clients.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for

pytestmark = pytest.mark.integration

ROLLOVER_SIZE = 65536 * 512 + 1024 * 1024 + 123  # past block 65535 at 512-byte blocks
SIZES = {
    "empty.bin": 0,
    "one.bin": 1,
    "block.bin": 512,
    "window.bin": 1468 * 16,
    "mib.bin": 1 << 20,
    "rollover.bin": ROLLOVER_SIZE,
}
SMALL = ["empty.bin", "one.bin", "block.bin", "window.bin", "mib.bin", "ipxe.efi"]
# curl 7.88 fails on an empty file against tftpd-hpa too ("(71) getpeername() failed"):
CURLE_TFTP_PERM = 69  # curl's exit status for TFTP error 2 (its message is lost in 7.88)
CURL_SIZES = [name for name in SMALL if name != "empty.bin"]


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian package for it: see `make deps`)")
    return path


@dataclass
class Namespace:
    name: str

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@dataclass
class RunningServer:
    ns: Namespace
    root: Path
    log: Path

    def transfers(self, filename: str, wait_s: float = 5.0) -> list[dict[str, Any]]:
        """The server's JSON log records of transfers of `filename`, waiting for the first.

        The server logs a transfer when it ends, which can be after the client exits: when
        the client's last ACK is lost, the server learns it is gone only on its retransmit.
        """

        def records() -> list[dict[str, Any]]:
            found = []
            for line in self.log.read_text().splitlines():
                if line.startswith("{"):
                    record = json.loads(line)
                    if record.get("event") == "tftp.transfer" and record["filename"] == filename:
                        found.append(record)
            return found

        wait_for(lambda: bool(records()), wait_s)
        return records()


@pytest.fixture(scope="module")
def tftp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tftproot")
    for name, size in SIZES.items():
        (root / name).write_bytes(os.urandom(size))
    ipxe = Path("/usr/lib/ipxe/ipxe.efi")
    if not ipxe.exists():
        pytest.skip("ipxe.efi missing: install Debian's ipxe package")
    shutil.copyfile(ipxe, root / "ipxe.efi")
    (root / "escape").symlink_to("/etc/passwd")
    return root


def make_namespace(suffix: str) -> Iterator[Namespace]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    need("ip")
    name = f"pbt{os.getpid() % 100000}{suffix}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield Namespace(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def start_server(ns: Namespace, root: Path, log: Path, *extra: str) -> Iterator[RunningServer]:
    argv = ["ip", "netns", "exec", ns.name, sys.executable, "-m", "plasmaboot.tftp"]
    argv += ["--root", str(root), "--host", "127.0.0.1", "--port", "69", *extra]
    with log.open("w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "listening on" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"tftp server did not start: {log.read_text()}")
            time.sleep(0.05)
        yield RunningServer(ns, root, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(tftp_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    for ns in make_namespace("a"):
        log = tmp_path_factory.mktemp("log") / "server.log"
        yield from start_server(ns, tftp_root, log, "--interface", "lo")


@pytest.fixture(params=["gso", "no-gso"])
def lossy_server(
    tftp_root: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    """A server whose namespace drops every 50th UDP datagram received (data and ACKs alike).

    With GSO a whole window is one send to netfilter, so it is lost whole and recovered by
    timeout; without GSO single packets go missing and the client reports the gap.
    """
    need("nft")
    for ns in make_namespace("l"):
        for command in (
            "add table inet pbtloss",
            "add chain inet pbtloss drop_in { type filter hook input priority 0 ; }",
            "add rule inet pbtloss drop_in meta l4proto udp numgen inc mod 50 == 25 drop",
        ):
            done = ns.run("nft", command)
            assert done.returncode == 0, f"nft {command}: {done.stderr}"
        extra = ["--timeout", "0.2"] + (["--no-gso"] if request.param == "no-gso" else [])
        yield from start_server(ns, tftp_root, tmp_path / "server.log", *extra)


def tftp_hpa_get(ns: Namespace, name: str, out: Path) -> subprocess.CompletedProcess[str]:
    need("tftp")
    return ns.run("tftp", "-m", "octet", "127.0.0.1", "69", "-c", "get", name, str(out))


def atftp_get(
    ns: Namespace, name: str, out: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    need("atftp")
    argv = ["atftp"]
    for option in options:
        argv += ["--option", option]
    return ns.run(*argv, "-g", "-r", name, "-l", str(out), "127.0.0.1", "69")


def curl_get(
    ns: Namespace, name: str, out: Path, blksize: int, *extra: str
) -> subprocess.CompletedProcess[str]:
    need("curl")
    url = f"tftp://127.0.0.1/{name}"
    argv = ["curl", "-sS", "--path-as-is", "--tftp-blksize", str(blksize), *extra]
    return ns.run(*argv, "-o", str(out), url)


def assert_identical(
    root: Path, name: str, out: Path, result: subprocess.CompletedProcess[str]
) -> None:
    assert out.exists(), f"{name}: no output; client said {result.stdout}{result.stderr}"
    assert filecmp.cmp(root / name, out, shallow=False), f"{name} differs"


def retransmits(server: RunningServer, name: str) -> int:
    return sum(int(record["retransmits"]) for record in server.transfers(name))


@pytest.mark.parametrize("name", [*SMALL, "rollover.bin"])
def test_rfc1350_tftp_hpa_fetches_byte_identical(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    out = tmp_path / name
    result = tftp_hpa_get(server.ns, name, out)
    assert "Error" not in result.stdout + result.stderr
    assert_identical(server.root, name, out, result)


@pytest.mark.parametrize("name", SMALL)
def test_rfc7440_atftp_blksize_1468_windowsize_16_byte_identical(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    out = tmp_path / name
    result = atftp_get(server.ns, name, out, "blksize 1468", "windowsize 16")
    assert result.returncode == 0, result.stderr
    assert_identical(server.root, name, out, result)


def test_rfc7440_atftp_windowsize_rolls_block_numbers_over(
    server: RunningServer, tmp_path: Path
) -> None:
    out = tmp_path / "rollover.bin"
    result = atftp_get(server.ns, "rollover.bin", out, "blksize 512", "windowsize 16")
    assert result.returncode == 0, result.stderr
    assert_identical(server.root, "rollover.bin", out, result)


@pytest.mark.parametrize("name", CURL_SIZES)
def test_rfc2348_curl_tftp_blksize_byte_identical(
    server: RunningServer, tmp_path: Path, name: str
) -> None:
    out = tmp_path / name
    result = curl_get(server.ns, name, out, 1468)
    assert result.returncode == 0, result.stderr
    assert_identical(server.root, name, out, result)


def test_rfc2348_curl_blksize_512_rolls_block_numbers_over(
    server: RunningServer, tmp_path: Path
) -> None:
    out = tmp_path / "rollover.bin"
    result = curl_get(server.ns, "rollover.bin", out, 512)
    assert result.returncode == 0, result.stderr
    assert_identical(server.root, "rollover.bin", out, result)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../../etc/passwd", "Error code 2"),
        ("..\\..\\etc\\passwd", "Error code 2"),
        ("escape", "Error code 2"),
        ("/etc/passwd", "Error code 1"),
    ],
)
def test_rfc1350_traversal_refused_to_tftp_hpa(
    server: RunningServer, tmp_path: Path, name: str, message: str
) -> None:
    out = tmp_path / "stolen"
    result = tftp_hpa_get(server.ns, name, out)
    assert message in result.stdout + result.stderr
    assert not out.exists() or out.stat().st_size == 0


@pytest.mark.parametrize("path", ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "escape"])
def test_rfc1350_traversal_refused_to_curl(
    server: RunningServer, tmp_path: Path, path: str
) -> None:
    out = tmp_path / "stolen"
    result = curl_get(server.ns, path, out, 512)
    assert result.returncode == CURLE_TFTP_PERM, result.stderr
    assert not out.exists() or b"root:" not in out.read_bytes()


def test_rfc1350_write_request_refused_to_tftp_hpa(server: RunningServer, tmp_path: Path) -> None:
    need("tftp")
    local = tmp_path / "upload"
    local.write_bytes(b"should not land")
    result = server.ns.run("tftp", "127.0.0.1", "69", "-c", "put", str(local), "upload")
    assert "Error code 2" in result.stdout + result.stderr
    assert not (server.root / "upload").exists()


def test_rfc1350_lossy_link_tftp_hpa_completes(lossy_server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "window.bin"
    result = tftp_hpa_get(lossy_server.ns, "window.bin", out)
    assert_identical(lossy_server.root, "window.bin", out, result)
    assert retransmits(lossy_server, "window.bin") > 0


def test_rfc7440_lossy_link_atftp_windowsize_completes(
    lossy_server: RunningServer, tmp_path: Path
) -> None:
    out = tmp_path / "mib.bin"
    result = atftp_get(lossy_server.ns, "mib.bin", out, "blksize 1468", "windowsize 16")
    assert result.returncode == 0, result.stderr
    assert_identical(lossy_server.root, "mib.bin", out, result)
    assert retransmits(lossy_server, "mib.bin") > 0


def test_rfc2349_lossy_link_curl_completes(lossy_server: RunningServer, tmp_path: Path) -> None:
    """curl asks for the RFC 2349 timeout it derives from --connect-timeout (6 s by default)."""
    out = tmp_path / "window.bin"
    result = curl_get(lossy_server.ns, "window.bin", out, 1468, "--connect-timeout", "3")
    assert result.returncode == 0, result.stderr
    assert_identical(lossy_server.root, "window.bin", out, result)
    assert retransmits(lossy_server, "window.bin") > 0
    assert lossy_server.transfers("window.bin")[0]["options"]["timeout"] == "1"
