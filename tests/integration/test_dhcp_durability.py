"""kill -9 in the middle of a run: every ACKed lease is on disk, no address is given twice.

The load generator below plays a relay agent (like perfdhcp does): it sends from its own
address, port 67, with giaddr set, and records every ACK it receives in a file.
"""
# ruff: noqa: F811  (pytest fixtures imported from the support module)

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from dhcp_support import (  # noqa: F401  (fixtures)
    SERVER_IP,
    Namespaces,
    ServerProcess,
    inventory_yaml,
    namespaces,
    require_root_and,
    servers,
)

from plasmaboot.dhcp.options import MessageType, Opt
from plasmaboot.dhcp.packet import DecodeError, DhcpPacket, decode, encode
from plasmaboot.store import open_store

pytestmark = pytest.mark.integration

RELAY_IP = "10.231.0.2"
CLIENTS = 2000  # enough that the run outlasts the test noticing a third is bound
POOL = ("10.231.1.0", "10.231.15.255")


def _mac(i: int) -> bytes:
    return bytes([0x02, 0x00, 0x00, 0x00, i >> 8, i & 0xFF])


def _packet(i: int, kind: MessageType, extra: dict[int, bytes] | None = None) -> bytes:
    options = {Opt.MESSAGE_TYPE: bytes((kind,)), **(extra or {})}
    giaddr = IPv4Address(RELAY_IP)
    return encode(DhcpPacket(op=1, xid=i, chaddr=_mac(i), hops=1, giaddr=giaddr, options=options))


def load(clients: int, acks_path: str, deadline_s: float) -> None:
    """Drive `clients` DORA exchanges to completion, retrying through server restarts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((RELAY_IP, 67))
    sock.setblocking(False)
    pending: dict[int, tuple[bytes, float]] = {}  # xid -> (last packet, sent at)
    todo = list(range(clients))
    done: set[int] = set()
    server = (SERVER_IP, 67)
    end = time.monotonic() + deadline_s
    with open(acks_path, "a", buffering=1) as acks:
        while len(done) < clients and time.monotonic() < end:
            now = time.monotonic()
            while todo and len(pending) < 32:
                i = todo.pop()
                pending[i] = (_packet(i, MessageType.DISCOVER), now)
                sock.sendto(pending[i][0], server)
            for i, (data, sent) in list(pending.items()):
                if now - sent > 0.5:  # lost (or the server is down): send again
                    pending[i] = (data, now)
                    sock.sendto(data, server)
            readable, _, _ = select.select([sock], [], [], 0.05)
            while readable:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                try:
                    reply = decode(data)
                except DecodeError:
                    continue
                i = reply.xid
                if i not in pending:
                    continue
                if reply.message_type is MessageType.OFFER:
                    ask = {Opt.SERVER_ID: reply.options[Opt.SERVER_ID]}
                    ask[Opt.REQUESTED_IP] = reply.yiaddr.packed
                    pending[i] = (_packet(i, MessageType.REQUEST, ask), time.monotonic())
                    sock.sendto(pending[i][0], server)
                elif reply.message_type is MessageType.ACK:
                    acks.write(f"{reply.mac} {reply.yiaddr}\n")
                    del pending[i]
                    done.add(i)
                elif reply.message_type is MessageType.NAK:
                    pending[i] = (_packet(i, MessageType.DISCOVER), time.monotonic())
                    sock.sendto(pending[i][0], server)


def test_rfc2131_kill_9_mid_run_loses_no_ack_and_duplicates_no_address(
    namespaces: Namespaces, servers: list[ServerProcess], tmp_path: Path
) -> None:
    require_root_and("ip")
    nets = namespaces
    srv, cli = nets.ns("s"), nets.ns("c")
    nets.link(srv, "pbdsv", cli, "pbdcv")
    server_if = nets.ifname("pbdsv")
    nets.exec(srv, "ip", "addr", "add", f"{SERVER_IP}/16", "dev", server_if)
    nets.exec(cli, "ip", "addr", "add", f"{RELAY_IP}/16", "dev", nets.ifname("pbdcv"))
    inventory = tmp_path / "cluster.yaml"
    inventory.write_text(inventory_yaml("full", server_if, pool=POOL, lease_time=86400))
    state = tmp_path / "state"
    first = ServerProcess(srv, inventory, state, server_if, "--log-level", "INFO").start()
    servers.append(first)
    acks = tmp_path / "acks.txt"
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import test_dhcp_durability as t; t.load({CLIENTS}, {str(acks)!r}, 60)"
    )
    loader = subprocess.Popen(["ip", "netns", "exec", cli, sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # kill once a good share is bound
            if acks.exists() and len(acks.read_text().splitlines()) >= CLIENTS // 3:
                break
            time.sleep(0.02)
        first.kill(signal.SIGKILL)
        text = acks.read_text()  # the loader may be mid-line: keep whole lines only
        acked_before = text[: text.rfind("\n") + 1].splitlines()
        second = ServerProcess(srv, inventory, state, server_if, "--log-level", "INFO").start()
        servers.append(second)
        assert loader.wait(timeout=90) == 0
    finally:
        if loader.poll() is None:
            os.kill(loader.pid, signal.SIGKILL)
    second.kill(signal.SIGTERM)

    assert CLIENTS // 3 <= len(acked_before) < CLIENTS, "the kill did not land mid-run"
    granted: dict[str, str] = {}
    for line in acks.read_text().splitlines():
        mac, ip = line.split()  # the loader has exited: every line is whole
        assert granted.setdefault(ip, mac) == mac, f"{ip} ACKed to {granted[ip]} and {mac}"
    assert len(set(granted.values())) == CLIENTS  # every client got bound
    store = open_store(state)
    try:
        on_disk = {le.ip: le.mac for le in store.leases() if le.state == "bound"}
    finally:
        store.close()
    for line in acked_before:  # an ACK is never sent for a lease that is not on disk
        mac, ip = line.split()
        assert on_disk.get(ip) == mac, f"{mac} was ACKed {ip} before the kill; not on disk"
    assert len(on_disk) == CLIENTS
