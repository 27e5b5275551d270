"""Server behaviour on loopback, driven by a scripted fake client.

The fake exists for what real clients cannot be made to do on demand: send duplicate ACKs,
stall, ACK out of order, abort after the OACK like EDK2's size probe, or send garbage.
Real clients (tftp-hpa, atftp, curl) are exercised in tests/integration.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from plasmaboot.tftp import BytesResponse, ResponseData, TftpServer, TransferStats

PORTS = range(16910, 16960)
DATA, ACK, ERROR, OACK = 3, 4, 5, 6


class ScriptedFakeClient(asyncio.DatagramProtocol):
    """A fake TFTP client whose every packet the test chooses."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.inbox.put_nowait((data, addr))

    def send(self, packet: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(packet, addr)

    def rrq(self, port: int, name: str, mode: str = "octet", **options: str | int) -> None:
        words = [name, mode, *(str(x) for kv in options.items() for x in kv)]
        packet = struct.pack("!H", 1) + b"".join(w.encode() + b"\0" for w in words)
        self.send(packet, ("127.0.0.1", port))

    def ack(self, block: int, addr: tuple[str, int]) -> None:
        self.send(struct.pack("!HH", ACK, block & 0xFFFF), addr)

    async def recv(self, timeout: float = 2.0) -> tuple[int, int, bytes, tuple[str, int]]:
        data, addr = await asyncio.wait_for(self.inbox.get(), timeout)
        opcode, number = struct.unpack_from("!HH", data)
        return opcode, number, data[4:], addr

    async def silent_for(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.inbox.get(), seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Harness:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.stats: list[TransferStats] = []
        self.servers: list[TftpServer] = []
        self.clients: list[ScriptedFakeClient] = []

    async def server(self, **kwargs: Any) -> TftpServer:
        for port in PORTS:
            server = TftpServer(
                self.root, host="127.0.0.1", port=port, on_transfer=self.stats.append, **kwargs
            )
            try:
                await server.start()
            except OSError:
                continue
            self.servers.append(server)
            return server
        raise RuntimeError("no free port in 16910-16959")

    async def client(self) -> ScriptedFakeClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_datagram_endpoint(
            ScriptedFakeClient, local_addr=("127.0.0.1", 0), family=socket.AF_INET
        )
        self.clients.append(client)
        return client

    async def until_done(self, count: int = 1, timeout: float = 5.0) -> list[TransferStats]:
        async with asyncio.timeout(timeout):
            while len(self.stats) < count:
                await asyncio.sleep(0.01)
        return self.stats


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    (tmp_path / "small.bin").write_bytes(bytes(range(256)) * 4 + b"tail")  # 1028 bytes
    (tmp_path / "exact.bin").write_bytes(b"x" * 1024)
    h = Harness(tmp_path)
    yield h
    for client in h.clients:
        client.close()
    for server in h.servers:
        await server.stop()


async def fetch_lockstep(client: ScriptedFakeClient, port: int, name: str) -> bytes:
    client.rrq(port, name)
    received = bytearray()
    expected = 1
    while True:
        opcode, block, payload, addr = await client.recv()
        assert opcode == DATA, payload
        client.ack(block, addr)
        if block != expected:
            continue  # a retransmit (the loop stalled past the timeout): already have it
        received += payload
        expected += 1
        if len(payload) < 512:
            return bytes(received)


async def test_rfc1350_plain_read_lockstep_from_a_fresh_tid(harness: Harness) -> None:
    server = await harness.server()
    client = await harness.client()
    client.rrq(server.port, "small.bin")
    blocks = []
    for expected in (1, 2, 3):
        opcode, block, payload, addr = await client.recv()
        assert (opcode, block) == (DATA, expected)
        assert addr[1] != server.port
        blocks.append(payload)
        client.ack(block, addr)
    assert [len(b) for b in blocks] == [512, 512, 4]
    assert b"".join(blocks) == (harness.root / "small.bin").read_bytes()
    [stats] = await harness.until_done()
    assert (stats.outcome, stats.bytes_sent, stats.blocks, stats.options) == ("ok", 1028, 3, {})
    assert server.active_transfers == 0


async def test_rfc1350_file_of_whole_blocks_ends_with_empty_block(harness: Harness) -> None:
    server = await harness.server()
    client = await harness.client()
    assert await fetch_lockstep(client, server.port, "exact.bin") == b"x" * 1024
    [stats] = await harness.until_done()
    assert stats.blocks == 3


async def test_rfc1350_each_transfer_gets_its_own_tid(harness: Harness) -> None:
    server = await harness.server()
    first, second = await harness.client(), await harness.client()
    first.rrq(server.port, "small.bin")
    second.rrq(server.port, "small.bin")
    *_, addr1 = await first.recv()
    *_, addr2 = await second.recv()
    assert len({addr1[1], addr2[1], server.port}) == 3


async def test_rfc1350_duplicate_ack_is_not_answered_sorcerers_apprentice(
    harness: Harness,
) -> None:
    server = await harness.server(timeout=5.0)
    client = await harness.client()
    client.rrq(server.port, "small.bin")
    _, _, _, addr = await client.recv()
    client.ack(1, addr)
    client.ack(1, addr)
    opcode, block, _, _ = await client.recv()
    assert (opcode, block) == (DATA, 2)
    assert await client.silent_for(0.3)


async def test_rfc1350_retransmits_after_timeout(harness: Harness) -> None:
    server = await harness.server(timeout=0.1)
    client = await harness.client()
    client.rrq(server.port, "small.bin")
    first = await client.recv()
    again = await client.recv()
    assert first == again
    client.ack(1, first[3])


async def test_rfc1350_stalled_transfer_is_dropped_and_freed(harness: Harness) -> None:
    server = await harness.server(timeout=0.05, retries=2)
    client = await harness.client()
    client.rrq(server.port, "small.bin")
    [stats] = await harness.until_done()
    assert stats.outcome == "timeout"
    assert stats.retransmits == 2
    assert server.active_transfers == 0


async def test_rfc1350_write_request_refused_with_access_violation(harness: Harness) -> None:
    server = await harness.server()
    client = await harness.client()
    client.send(b"\x00\x02new.bin\0octet\0", ("127.0.0.1", server.port))
    opcode, code, message, _ = await client.recv()
    assert (opcode, code) == (ERROR, 2)
    assert b"read-only" in message


@pytest.mark.parametrize(
    ("name", "mode", "code", "text"),
    [
        ("missing.bin", "octet", 1, b"File not found"),
        ("../etc/passwd", "octet", 2, b"'..'"),
        ("small.bin", "mail", 4, b"mode"),
    ],
)
async def test_rfc1350_errors_carry_the_right_code(
    harness: Harness, name: str, mode: str, code: int, text: bytes
) -> None:
    server = await harness.server()
    client = await harness.client()
    client.rrq(server.port, name, mode)
    opcode, number, message, _ = await client.recv()
    assert (opcode, number) == (ERROR, code)
    assert text in message


async def test_rfc1350_garbage_is_answered_and_server_keeps_serving(harness: Harness) -> None:
    server = await harness.server()
    client = await harness.client()
    for garbage in (
        b"\x00",
        b"\x00\x01x",
        b"\x00\x04\x00\x01",
        b"\x00\x01\xff\xfe\xfd",
        b"\xff" * 600,
    ):
        client.send(garbage, ("127.0.0.1", server.port))
        opcode, code, _, _ = await client.recv()
        assert (opcode, code) == (ERROR, 4)
    assert (
        await fetch_lockstep(client, server.port, "small.bin")
        == (harness.root / "small.bin").read_bytes()
    )


async def test_rfc1350_netascii_converts_line_ends(harness: Harness) -> None:
    (harness.root / "boot.ipxe").write_bytes(b"#!ipxe\nboot\n")
    server = await harness.server()
    client = await harness.client()
    client.rrq(server.port, "boot.ipxe", "netascii")
    _, _, payload, _ = await client.recv()
    assert payload == b"#!ipxe\r\nboot\r\n"


async def test_rfc2347_oack_then_ack_0_starts_data(harness: Harness) -> None:
    server = await harness.server()
    client = await harness.client()
    client.rrq(server.port, "small.bin", blksize=1024, tsize=0, timeout=3, bogus=1)
    opcode, _, _, addr = await client.recv()
    assert opcode == OACK
    assert harness.stats == []
    client.ack(0, addr)
    opcode, block, payload, _ = await client.recv()
    assert (opcode, block, len(payload)) == (DATA, 1, 1024)
    client.ack(1, addr)
    opcode, block, payload, _ = await client.recv()
    assert (opcode, block, payload) == (DATA, 2, b"tail")
    client.ack(2, addr)
    [stats] = await harness.until_done()
    assert stats.options == {"blksize": "1024", "tsize": "1028", "timeout": "3"}


async def test_rfc2347_oack_lists_only_accepted_options(harness: Harness) -> None:
    server = await harness.server()
    client = await harness.client()
    client.rrq(server.port, "small.bin", blksize=65464, tsize=0)
    data, _ = await client.inbox.get()
    assert data == b"\x00\x06blksize\x001468\x00tsize\x001028\x00"


async def test_rfc2347_only_unknown_options_get_plain_rfc1350(harness: Harness) -> None:
    server = await harness.server()
    client = await harness.client()
    client.rrq(server.port, "small.bin", multicast="")
    opcode, block, _, _ = await client.recv()
    assert (opcode, block) == (DATA, 1)


async def test_rfc2347_error_8_after_oack_is_a_normal_abort_edk2_probe(
    harness: Harness,
) -> None:
    server = await harness.server()
    client = await harness.client()
    client.rrq(server.port, "small.bin", tsize=0, blksize=1468)
    opcode, _, options, addr = await client.recv()
    assert opcode == OACK and b"tsize\x001028" in options
    client.send(b"\x00\x05\x00\x08size probe done\0", addr)
    [stats] = await harness.until_done()
    assert (stats.outcome, stats.bytes_sent) == ("aborted", 0)
    assert server.active_transfers == 0
    assert (
        await fetch_lockstep(client, server.port, "small.bin")
        == (harness.root / "small.bin").read_bytes()
    )


async def test_rfc2347_retransmitted_rrq_does_not_start_a_second_transfer(
    harness: Harness,
) -> None:
    server = await harness.server(timeout=5.0)
    client = await harness.client()
    client.rrq(server.port, "small.bin", tsize=0)
    client.rrq(server.port, "small.bin", tsize=0)
    opcode, _, _, _ = await client.recv()
    assert opcode == OACK
    assert await client.silent_for(0.2)
    assert server.active_transfers == 1


async def test_rfc7440_window_is_sent_without_waiting_for_acks(harness: Harness) -> None:
    server = await harness.server(timeout=5.0)
    client = await harness.client()
    client.rrq(server.port, "small.bin", blksize=100, windowsize=4)
    _, _, _, addr = await client.recv()
    client.ack(0, addr)
    assert [(await client.recv())[1] for _ in range(4)] == [1, 2, 3, 4]
    assert await client.silent_for(0.1)
    client.ack(4, addr)
    assert [(await client.recv())[1] for _ in range(4)] == [5, 6, 7, 8]


async def test_rfc7440_ack_inside_window_resumes_after_it(harness: Harness) -> None:
    server = await harness.server(timeout=5.0)
    client = await harness.client()
    client.rrq(server.port, "small.bin", blksize=100, windowsize=4)
    _, _, _, addr = await client.recv()
    client.ack(0, addr)
    for _ in range(4):
        await client.recv()
    client.ack(2, addr)  # block 3 was lost
    assert [(await client.recv())[1] for _ in range(4)] == [3, 4, 5, 6]
    client.ack(2, addr)  # late duplicates of the gap report must not resend again
    assert await client.silent_for(0.2)


async def test_rfc7440_duplicate_ack_resends_window_once(harness: Harness) -> None:
    server = await harness.server(timeout=5.0)
    client = await harness.client()
    client.rrq(server.port, "small.bin", blksize=100, windowsize=4)
    _, _, _, addr = await client.recv()
    client.ack(0, addr)
    for _ in range(4):
        await client.recv()
    client.ack(0, addr)  # block 1 was lost: the receiver repeats its last ACK
    client.ack(0, addr)
    assert [(await client.recv())[1] for _ in range(4)] == [1, 2, 3, 4]
    assert await client.silent_for(0.2)


async def test_rfc1350_block_number_rolls_over_to_0(harness: Harness) -> None:
    size = 65536 * 8 + 3
    (harness.root / "roll.bin").write_bytes(bytes(range(251)) * (size // 251) + b"!" * (size % 251))
    server = await harness.server(timeout=5.0)
    client = await harness.client()
    client.rrq(server.port, "roll.bin", blksize=8, windowsize=64)
    _, _, _, addr = await client.recv()
    client.ack(0, addr)
    received = bytearray()
    wire_blocks: list[int] = []
    expected = 1
    while True:
        opcode, block, payload, _ = await client.recv()
        assert (opcode, block) == (DATA, expected & 0xFFFF)
        received += payload
        if expected in (65535, 65536, 65537):
            wire_blocks.append(block)
        if len(payload) < 8 or expected % 64 == 0:
            client.ack(block, addr)
        if len(payload) < 8:
            break
        expected += 1
    assert wire_blocks == [65535, 0, 1]
    assert bytes(received) == (harness.root / "roll.bin").read_bytes()
    [stats] = await harness.until_done()
    assert (stats.outcome, stats.blocks, stats.bytes_sent) == ("ok", 65537, size)


async def test_caps_drop_requests_over_the_per_client_limit(harness: Harness) -> None:
    server = await harness.server(max_per_client=1, timeout=5.0)
    first, second = await harness.client(), await harness.client()
    before = REGISTRY.get_sample_value(
        "plasmaboot_tftp_requests_refused_total", {"reason": "busy_client"}
    )
    first.rrq(server.port, "small.bin")
    await first.recv()
    second.rrq(server.port, "small.bin")
    assert await second.silent_for(0.2)
    after = REGISTRY.get_sample_value(
        "plasmaboot_tftp_requests_refused_total", {"reason": "busy_client"}
    )
    assert (after or 0) - (before or 0) == 1


async def test_caps_drop_requests_over_the_total_limit(harness: Harness) -> None:
    server = await harness.server(max_transfers=1, timeout=5.0)
    first, second = await harness.client(), await harness.client()
    first.rrq(server.port, "small.bin")
    await first.recv()
    second.rrq(server.port, "small.bin")
    assert await second.silent_for(0.2)
    assert server.active_transfers == 1


async def test_dynamic_file_from_resolver_with_root_fallback(harness: Harness) -> None:
    seen: list[tuple[str, tuple[str, int]]] = []

    def resolver(name: str, client: tuple[str, int]) -> ResponseData | None:
        seen.append((name, client))
        if name == "boom":
            raise RuntimeError("policy bug")
        return (
            BytesResponse(f"#!ipxe\necho {client[0]}\n".encode()) if name == "node.ipxe" else None
        )

    server = await harness.server(resolver=resolver)
    client = await harness.client()
    assert await fetch_lockstep(client, server.port, "node.ipxe") == b"#!ipxe\necho 127.0.0.1\n"
    assert (
        await fetch_lockstep(client, server.port, "small.bin")
        == (harness.root / "small.bin").read_bytes()
    )
    client.rrq(server.port, "boom")
    opcode, code, _, _ = await client.recv()
    assert (opcode, code) == (ERROR, 0)
    assert [name for name, _ in seen] == ["node.ipxe", "small.bin", "boom"]


async def test_stop_ends_transfers_with_an_error_to_the_client(harness: Harness) -> None:
    server = await harness.server(timeout=5.0)
    client = await harness.client()
    client.rrq(server.port, "small.bin")
    await client.recv()
    await server.stop()
    opcode, code, message, _ = await client.recv()
    assert (opcode, code, message) == (ERROR, 0, b"server shutting down\0")
    [stats] = await harness.until_done()
    assert stats.outcome == "error"
    assert server.active_transfers == 0


def test_bad_settings_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timeout"):
        TftpServer(tmp_path, timeout=0)
    with pytest.raises(ValueError, match="mtu"):
        TftpServer(tmp_path, mtu=100)


async def test_rfc7440_duplicate_acks_cannot_keep_a_stalled_transfer_alive(
    harness: Harness,
) -> None:
    server = await harness.server(timeout=0.05, retries=2)
    client = await harness.client()
    client.rrq(server.port, "small.bin", blksize=100, windowsize=4)
    _, _, _, addr = await client.recv()
    client.ack(0, addr)
    async with asyncio.timeout(5):
        while not harness.stats:
            try:
                await client.recv(timeout=0.2)
            except TimeoutError:
                continue
            client.ack(0, addr)  # never progress, only repeat the OACK's ACK
    [stats] = harness.stats
    assert (stats.outcome, stats.blocks) == ("timeout", 0)
    assert server.active_transfers == 0


async def test_rfc1350_read_over_ipv6_loopback(tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("Python built without IPv6")
    (tmp_path / "six.bin").write_bytes(b"6" * 600)
    stats: list[TransferStats] = []
    server = TftpServer(tmp_path, host="::1", port=16961, on_transfer=stats.append)
    try:
        await server.start()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_sendto(sock, b"\x00\x01six.bin\0octet\0blksize\x0065464\0", ("::1", 16961))
        oack, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 2)
        assert oack == b"\x00\x06blksize\x001448\x00"  # 1500 - IPv6, UDP and TFTP headers
        await loop.sock_sendto(sock, b"\x00\x04\x00\x00", addr)
        data, _ = await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 2)
        assert data == b"\x00\x03\x00\x01" + b"6" * 600
        await loop.sock_sendto(sock, b"\x00\x04\x00\x01", addr)
        async with asyncio.timeout(2):
            while not stats:
                await asyncio.sleep(0.01)
        assert stats[0].outcome == "ok"
    finally:
        sock.close()
        await server.stop()


class FailingFakeResponse:
    """A dynamic file whose read fails: a bug in a boot policy, not something a client does."""

    closed = False

    def read(self, n: int) -> bytes:
        raise OSError("disk gone")

    def size(self) -> int | None:
        return None

    def close(self) -> None:
        self.closed = True


async def test_rfc1350_failing_dynamic_file_ends_with_error_0_and_is_closed(
    harness: Harness,
) -> None:
    failing = FailingFakeResponse()
    server = await harness.server(resolver=lambda name, client: failing)
    client = await harness.client()
    client.rrq(server.port, "anything")
    opcode, code, message, _ = await client.recv()
    assert (opcode, code) == (ERROR, 0)
    assert b"could not read" in message
    [stats] = await harness.until_done()
    assert stats.outcome == "error" and "disk gone" in (stats.error or "")
    assert failing.closed
    assert server.active_transfers == 0


async def test_transfer_stats_reach_metrics(harness: Harness) -> None:
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels or {}) or 0.0

    ok_before = sample("plasmaboot_tftp_transfers_total", {"outcome": "ok"})
    bytes_before = sample("plasmaboot_tftp_sent_bytes_total")
    server = await harness.server()
    client = await harness.client()
    await fetch_lockstep(client, server.port, "small.bin")
    await harness.until_done()
    assert sample("plasmaboot_tftp_transfers_total", {"outcome": "ok"}) == ok_before + 1
    assert sample("plasmaboot_tftp_sent_bytes_total") == bytes_before + 1028
    assert sample("plasmaboot_tftp_active_transfers") == 0
