"""The storm's wire: a server netns and a client netns joined by one veth pair.

A second server on the same segment (two `serve` processes on one PostgreSQL) gets a
namespace of its own on a macvlan of the server's veth end: the client's broadcasts reach
both servers, each answers from its own address and MAC, and the first server's path is
the same veth as in every other storm.

All names carry the `pbs` prefix. The server side gets permanent neighbour entries for
every client address: the kernel's neighbour table is shared by every namespace on the
host (gc_thresh3 = 1024 by default), and 1,000 clients learnt by ARP would overflow it;
permanent entries are exempt from that limit and cost the storm no ARP round trips, on
both systems alike.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

SERVER_NS, CLIENT_NS = "pbs-srv", "pbs-cli"
SERVER_IF, CLIENT_IF = "pbs-s0", "pbs-c0"
SERVER_IP = "10.88.0.1"
SECOND_NS, SECOND_IF, SECOND_IP = "pbs-srv2", "pbs-m1", "10.88.0.2"
PREFIX = 16
CLIENT_BASE_IP = "10.88.254.1"  # the bandwidth readers' address, outside every lease


@dataclass(frozen=True)
class Wire:
    client_mac: str


def _ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def batch(commands: list[str], netns: str) -> None:
    """Many `ip` commands in one process (`-force`: keep going past an existing entry)."""
    subprocess.run(
        ["ip", "-n", netns, "-force", "-batch", "-"],
        input="".join(c + "\n" for c in commands), text=True, check=True, capture_output=True,
    )  # fmt: skip


def setup(second_server: bool = False) -> Wire:
    teardown()
    _ip("netns", "add", SERVER_NS)
    _ip("netns", "add", CLIENT_NS)
    _ip("link", "add", SERVER_IF, "netns", SERVER_NS, "type", "veth", "peer", "name", CLIENT_IF,
        "netns", CLIENT_NS)  # fmt: skip
    for ns, dev in ((SERVER_NS, SERVER_IF), (CLIENT_NS, CLIENT_IF)):
        _ip("link", "set", "lo", "up", netns=ns)
        _ip("link", "set", dev, "mtu", "1500", "up", netns=ns)
    _ip("addr", "add", f"{SERVER_IP}/{PREFIX}", "brd", "+", "dev", SERVER_IF, netns=SERVER_NS)
    _ip("addr", "add", f"{CLIENT_BASE_IP}/32", "dev", CLIENT_IF, netns=CLIENT_NS)
    _ip("route", "add", f"10.88.0.0/{PREFIX}", "dev", CLIENT_IF, netns=CLIENT_NS)
    if second_server:
        _add_second_server()
    link = _ip("-o", "link", "show", CLIENT_IF, netns=CLIENT_NS)
    return Wire(client_mac=link.split("link/ether ")[1].split()[0])


def _add_second_server() -> None:
    """A macvlan (bridge mode) of the server's veth end, moved into a namespace of its own.
    Broadcasts reach the macvlans through a queue (1,000 frames by default); a storm's
    DHCP bursts would overflow it, so it is made as deep as the storm can fill."""
    _ip("netns", "add", SECOND_NS)
    _ip("link", "add", SECOND_IF, "link", SERVER_IF, "type", "macvlan", "mode", "bridge",
        "bcqueuelen", "16384", netns=SERVER_NS)  # fmt: skip
    _ip("link", "set", SECOND_IF, "netns", SECOND_NS, netns=SERVER_NS)
    _ip("link", "set", "lo", "up", netns=SECOND_NS)
    _ip("link", "set", SECOND_IF, "up", netns=SECOND_NS)
    _ip("addr", "add", f"{SECOND_IP}/{PREFIX}", "brd", "+", "dev", SECOND_IF, netns=SECOND_NS)


def pin_neighbours(wire: Wire, addresses: list[str]) -> None:
    """On every server's side (the second one's too, when it exists)."""
    entries = [CLIENT_BASE_IP, *addresses]
    sides = [(SERVER_NS, SERVER_IF)]
    if SECOND_NS in _ip("netns", "list"):
        sides.append((SECOND_NS, SECOND_IF))
    for ns, dev in sides:
        batch(
            [
                f"neigh replace {a} lladdr {wire.client_mac} dev {dev} nud permanent"
                for a in entries
            ],
            ns,
        )


def reset_client_addresses() -> None:
    """Between runs: drop every leased address so the next system's clients start bare."""
    _ip("addr", "flush", "dev", CLIENT_IF, netns=CLIENT_NS)
    _ip("addr", "add", f"{CLIENT_BASE_IP}/32", "dev", CLIENT_IF, netns=CLIENT_NS)
    _ip("route", "replace", f"10.88.0.0/{PREFIX}", "dev", CLIENT_IF, netns=CLIENT_NS)


def teardown() -> None:
    """Idempotent: deleting a namespace removes its veth end and, with it, the peer."""
    for ns in (SECOND_NS, SERVER_NS, CLIENT_NS):
        _ip("netns", "delete", ns, check=False)
