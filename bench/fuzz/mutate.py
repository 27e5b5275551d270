"""Mutated DHCP and TFTP packets, and the paced sender that fires them at a server.

Mutations start from valid packets (plasmaboot's own codec builds the DHCP seeds) and
keep a valid prefix most of the time: the fixed DHCP header and magic cookie, or the TFTP
opcode, so the parsers behind them (options, suboptions, filenames, TFTP options) are
what gets exercised, not only the first length check. A tenth of the packets are random
bytes. Everything is drawn from one seeded generator: a run can be repeated exactly.

The sender paces itself on the server's socket drops: it reads the UDP RcvbufErrors of
the server's network namespace (`/proc/<pid>/net/snmp`) and halves its rate when they
grow, so the server sees (nearly) every packet and each one must be accounted for.

    python bench/fuzz/mutate.py dhcp|tftp COUNT --target IP --source IP --server-pid PID
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import time
from ipaddress import IPv4Address

from plasmaboot.dhcp.options import MessageType, Opt
from plasmaboot.dhcp.packet import DhcpPacket, encode

DHCP_PREFIX = 240  # fixed header (236) and the magic cookie
INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFE, 0xFF)


def dhcp_seeds(relay: str) -> list[bytes]:
    """Valid requests of every kind a client or relay sends, with the options plasmaboot
    reads (client id, requested address, server id, PXE facts, relay suboptions, iPXE)."""
    relay_ip = IPv4Address(relay).packed
    pxe = {
        Opt.VENDOR_CLASS: b"PXEClient:Arch:00007:UNDI:003016",
        Opt.CLIENT_ARCH: b"\x00\x07",
        Opt.CLIENT_NDI: b"\x01\x03\x10",
        Opt.CLIENT_UUID: b"\x00" + bytes(range(16)),
    }
    extras: list[dict[int, bytes]] = [
        {},
        pxe,
        {**pxe, Opt.USER_CLASS: b"\x04iPXE", Opt.IPXE: b"\x13\x01\x01\x11\x01\x01"},
        {Opt.CLIENT_ID: b"\x01\x02\x00\x00\x00\x00\x01", Opt.HOSTNAME: b"node-fuzz"},
        {Opt.RELAY_AGENT: b"\x01\x04eth0\x02\x06\x02\x00\x00\x00\x00\x01\x05\x04" + relay_ip},
        {Opt.SUBNET_SELECTION: IPv4Address(relay).packed, Opt.MAX_MESSAGE_SIZE: b"\x05\xdc"},
        {Opt.PARAMETER_REQUEST: bytes([1, 3, 6, 15, 43, 60, 66, 67, 175])},
    ]  # fmt: skip
    seeds = []
    for kind in (MessageType.DISCOVER, MessageType.REQUEST, MessageType.INFORM,
                 MessageType.RELEASE, MessageType.DECLINE):  # fmt: skip
        for extra in extras:
            options = {Opt.MESSAGE_TYPE: bytes((kind,)), **extra}
            if kind in (MessageType.REQUEST, MessageType.DECLINE):
                options[Opt.REQUESTED_IP] = IPv4Address(relay).packed[:3] + b"\x20"
                options[Opt.SERVER_ID] = IPv4Address(relay).packed[:3] + b"\x01"
            packet = DhcpPacket(
                op=1, xid=0x5EED, chaddr=b"\x02\x00\x00\x00\x00\x01", hops=1,
                giaddr=IPv4Address(relay), options=options,
            )  # fmt: skip
            seeds.append(encode(packet, 1500))
    return seeds


def tftp_seeds() -> list[bytes]:
    """Read requests (options, modes, names that exist and do not, paths that try to
    escape), a write request, and the packets a transfer uses, sent where they do not
    belong (the listening port)."""
    rrq = [
        b"\x00\x01ipxe.efi\x00octet\x00",
        b"\x00\x01ipxe.efi\x00octet\x00blksize\x001468\x00tsize\x000\x00timeout\x001\x00",
        b"\x00\x01undionly.kpxe\x00octet\x00windowsize\x004\x00blksize\x00512\x00",
        b"\x00\x01ipxe.efi\x00netascii\x00",
        b"\x00\x01missing.bin\x00octet\x00",
        b"\x00\x01../../etc/passwd\x00octet\x00",
        b"\x00\x01/ipxe.efi\x00OCTET\x00BLKSIZE\x0065464\x00",
    ]
    return [*rrq, b"\x00\x02upload.bin\x00octet\x00", b"\x00\x03\x00\x01data",
            b"\x00\x04\x00\x01", b"\x00\x05\x00\x01oops\x00",
            b"\x00\x06blksize\x00512\x00"]  # fmt: skip


def mutate(rng: random.Random, seed: bytes, prefix: int) -> bytes:
    """One to four edits after a kept prefix (kept four times out of five)."""
    data = bytearray(seed)
    keep = prefix if rng.random() < 0.8 else 0
    for _ in range(rng.randint(1, 4)):
        end = len(data)
        at = rng.randint(min(keep, end), end)
        op = rng.randrange(6)
        if op == 0:
            del data[at:]  # truncate
        elif op == 1 and at < end:
            data[at] ^= 1 << rng.randrange(8)  # flip a bit
        elif op == 2:
            data[at:at] = rng.randbytes(rng.randint(1, 16))  # insert
        elif op == 3:
            del data[at : at + rng.randint(1, 16)]  # delete
        elif op == 4 and at < end:
            data[at] = rng.choice(INTERESTING)  # a length or code at its limits
        elif op == 5 and at < end:
            data[at:at] = data[at : at + rng.randint(1, 64)]  # repeat a slice (an option)
    return bytes(data)


def packets(kind: str, relay: str, seed: int) -> object:
    rng = random.Random(seed)
    seeds, prefix = (dhcp_seeds(relay), DHCP_PREFIX) if kind == "dhcp" else (tftp_seeds(), 2)
    while True:
        if rng.random() < 0.1:
            yield rng.randbytes(rng.randint(0, 600))
        else:
            packet = bytearray(mutate(rng, rng.choice(seeds), prefix))
            if kind == "dhcp" and len(packet) >= 34:
                packet[4:8] = rng.randbytes(4)  # xid
                packet[28:34] = b"\x02" + rng.randbytes(5)  # chaddr: many clients
            yield bytes(packet)


def rcvbuf_errors(pid: int) -> int:
    """UDP RcvbufErrors of the network namespace process `pid` lives in."""
    with open(f"/proc/{pid}/net/snmp") as snmp:
        rows = [line.split() for line in snmp if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def send(args: argparse.Namespace) -> dict[str, float]:
    """Send COUNT packets within MAX_SECONDS, paced: +10% every 0.2 s without a drop at
    the server, halved after one."""
    port = 67 if args.kind == "dhcp" else 69
    sockets = []
    for i in range(1 if args.kind == "dhcp" else 32):  # TFTP: several client ports
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((args.source, 67 if args.kind == "dhcp" else 0))
        sock.setblocking(False)
        sockets.append(sock)
        del i
    source = packets(args.kind, args.source, args.seed)
    rate, sent, started = float(args.rate), 0, time.monotonic()
    drops = rcvbuf_errors(args.server_pid)
    while sent < args.count and time.monotonic() - started < args.max_seconds:
        tick = time.monotonic()
        burst = min(args.count - sent, max(1, int(rate * 0.2)))
        for n in range(burst):
            sock = sockets[n % len(sockets)]
            try:
                sock.sendto(next(source), (args.target, port))  # type: ignore[call-overload]
            except BlockingIOError:
                time.sleep(0.001)
                continue
            sent += 1
        for sock in sockets:  # the answers are not checked here: drop them
            try:
                while sock.recv(65536):
                    pass
            except (BlockingIOError, InterruptedError):
                pass
        time.sleep(max(0.0, 0.2 - (time.monotonic() - tick)))
        now_drops = rcvbuf_errors(args.server_pid)
        rate = max(200.0, rate / 2) if now_drops > drops else min(args.rate * 4, rate * 1.1)
        drops = now_drops
    return {"sent": sent, "seconds": round(time.monotonic() - started, 1), "rate": round(rate)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("dhcp", "tftp"))
    parser.add_argument("count", type=int)
    parser.add_argument("--target", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--rate", type=int, default=5000, help="starting packets per second")
    parser.add_argument("--max-seconds", type=float, default=1800)
    parser.add_argument("--seed", type=int, default=15)
    print(json.dumps(send(parser.parse_args())))


if __name__ == "__main__":
    main()
