"""Fuzzing the running server: garbage and mangled packets, then it must still answer."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

import pytest
from dhcp_support import (
    SERVER_IP,
    Namespaces,
    ServerProcess,
    inventory_yaml,
    require_root_and,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plasmaboot.dhcp.options import MessageType, Opt
from plasmaboot.dhcp.packet import DhcpPacket, decode, encode

pytestmark = pytest.mark.integration
RELAY_IP = "10.231.0.2"


@dataclass
class Target:
    nets: Namespaces
    client_ns: str
    server: ServerProcess


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    require_root_and("ip")
    tmp = tmp_path_factory.mktemp("dhcp-fuzz")
    nets = Namespaces()
    server: ServerProcess | None = None
    try:
        srv, cli = nets.ns("s"), nets.ns("c")
        nets.link(srv, "pbdsv", cli, "pbdcv")
        server_if = nets.ifname("pbdsv")
        nets.exec(srv, "ip", "addr", "add", f"{SERVER_IP}/16", "dev", server_if)
        nets.exec(cli, "ip", "addr", "add", f"{RELAY_IP}/16", "dev", nets.ifname("pbdcv"))
        inventory = tmp / "cluster.yaml"
        inventory.write_text(inventory_yaml("full", server_if))
        server = ServerProcess(srv, inventory, tmp / "state", server_if, "--log-level", "INFO")
        yield Target(nets, cli, server.start())
    finally:
        if server is not None:
            server.kill()
        nets.close()


def _send_from_ns(target: Target, payloads: list[bytes], expect_reply: bool) -> bytes | None:
    """Send datagrams as the relay at 10.231.0.2:67 and return the first reply, if asked."""
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"s.bind(({RELAY_IP!r}, 67)); s.settimeout(3)\n"
        "data = sys.stdin.buffer.read()\n"
        "for chunk in data.split(b'\\n--pbd--\\n'):\n"
        f"    s.sendto(chunk, ({SERVER_IP!r}, 67))\n"
        f"while {expect_reply}:\n"
        "    reply = s.recv(4096)\n"
        "    if reply[4:8] == bytes.fromhex('0000beef'):\n"
        "        sys.stdout.buffer.write(reply); break\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", target.client_ns, sys.executable, "-c", script],
        input=b"\n--pbd--\n".join(payloads),
        capture_output=True,
        timeout=20,
        check=True,
    )
    return out.stdout or None


def _discover(xid: int, extra: dict[int, bytes] | None = None) -> bytes:
    options = {Opt.MESSAGE_TYPE: bytes((MessageType.DISCOVER,)), **(extra or {})}
    return encode(
        DhcpPacket(
            op=1, xid=xid, chaddr=b"\x02\x00\x00\x00\xff\x01", giaddr=IPv4Address(RELAY_IP),
            hops=1, options=options,
        ),
        1500,
    )  # fmt: skip


mangled = st.tuples(st.integers(0, 2000), st.binary(max_size=64), st.integers(0, 400)).map(
    lambda t: _discover(t[0])[: t[2]] + t[1]  # truncated + trailing garbage
)
odd_options = st.dictionaries(st.integers(1, 254), st.binary(max_size=300), max_size=6).map(
    lambda opts: _discover(7, opts)
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.one_of(st.binary(max_size=600), mangled, odd_options), min_size=20, max_size=40))
def test_fuzz_server_survives_garbage_and_keeps_answering(
    target: Target, payloads: list[bytes]
) -> None:
    payloads = [p.replace(b"\n--pbd--\n", b"") for p in payloads]
    _send_from_ns(target, payloads, expect_reply=False)
    reply = _send_from_ns(target, [_discover(0xBEEF)], expect_reply=True)
    assert reply is not None
    offer = decode(reply)
    assert offer.xid == 0xBEEF and offer.message_type is MessageType.OFFER
    assert target.server.proc is not None and target.server.proc.poll() is None
    assert "Traceback" not in target.server.log
