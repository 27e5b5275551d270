"""DHCP with the store as the authority (several servers on one store): a lease the store
refuses is NAKed and its holder adopted, a failed write undoes the batch and sends no
ACK, the leases other servers wrote are read back, and servers walk their pools apart."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import yaml
from test_dhcp_responder import INVENTORY, SERVER, Harness, kind

from plasmaboot.dhcp import DhcpServer
from plasmaboot.dhcp.leases import AddressScope, LeaseAllocator
from plasmaboot.dhcp.options import MessageType, Opt
from plasmaboot.dhcp.packet import BROADCAST_FLAG, DhcpPacket, decode, encode
from plasmaboot.dhcp.responder import Reply
from plasmaboot.inventory import parse_inventory
from plasmaboot.store import Lease, LeaseConflict, SqliteStore, open_store

POOL = [IPv4Address(f"10.9.0.{n}") for n in (100, 101, 102)]
A_MAC, B_MAC = "52:54:00:ff:00:0a", "52:54:00:ff:00:0b"
FUTURE = 1e10


def theirs(ip: IPv4Address, mac: str = B_MAC, state: str = "bound") -> Lease:
    return Lease(str(ip), mac, mac, state, FUTURE)


def request(h: Harness, mac: str, ip: IPv4Address) -> Reply | None:
    asked = {Opt.SERVER_ID: SERVER.packed, Opt.REQUESTED_IP: ip.packed}
    return h.send(MessageType.REQUEST, mac, options=asked)


# ---- the allocator ----------------------------------------------------------------------


def test_a_refused_lease_is_unbound_and_the_holder_adopted() -> None:
    h = Harness()
    ack = h.dora(A_MAC)
    ip = ack.packet.yiaddr
    (wanted,) = h.allocator.drain_dirty()
    lost = h.allocator.settle([LeaseConflict(wanted, theirs(ip))])
    assert lost == {ip}
    assert h.allocator.lease_of(A_MAC) is None and h.allocator.bound_to(A_MAC, h.now) is None
    assert h.allocator.lease_of(B_MAC) == theirs(ip)
    # the client starts over: the next candidate, never the taken address
    offer = h.send(MessageType.DISCOVER, A_MAC)
    assert offer is not None and offer.packet.yiaddr not in (ip, None)
    assert kind(request(h, A_MAC, ip)) is MessageType.NAK


def test_a_failed_write_undoes_the_whole_batch() -> None:
    h = Harness()
    first = h.dora(A_MAC).packet.yiaddr
    h.allocator.drain_dirty()
    h.allocator.settle([])
    # one batch: A moves to another address, B takes the one A left
    moved = request(h, A_MAC, POOL[2])
    other = h.dora(B_MAC)
    assert kind(moved) is MessageType.ACK and kind(other) is MessageType.ACK
    assert other.packet.yiaddr == first
    assert {le.ip: le.mac for le in h.allocator.drain_dirty()} == {
        str(first): B_MAC,
        str(POOL[2]): A_MAC,
    }
    h.allocator.rollback()
    assert not h.allocator.dirty
    assert h.allocator.bound_to(A_MAC, h.now) == first, "A keeps what the store holds"
    assert h.allocator.bound_to(B_MAC, h.now) is None
    assert [le.ip for le in h.allocator.active(h.now)] == [str(first)]
    # nothing leaked: every other address is offered again
    offered = {h.dora(f"52:54:00:ff:01:0{n}").packet.yiaddr for n in range(2)}
    assert offered == set(POOL) - {first}


def test_a_rolled_back_release_keeps_the_binding() -> None:
    h = Harness()
    ip = h.dora(A_MAC).packet.yiaddr
    h.allocator.drain_dirty()
    h.allocator.settle([])
    h.send(MessageType.RELEASE, A_MAC, ciaddr=ip)
    assert [le.state for le in h.allocator.drain_dirty()] == ["released"]
    h.allocator.rollback()
    assert h.allocator.bound_to(A_MAC, h.now) == ip


def test_refresh_adopts_other_servers_rows_and_keeps_own_offers_and_writes() -> None:
    h = Harness()
    offer = h.send(MessageType.DISCOVER, A_MAC)
    assert offer is not None and offer.packet.yiaddr == POOL[0]
    pending = request(h, "52:54:00:ff:00:0c", POOL[1])  # bound here, not written yet
    assert kind(pending) is MessageType.ACK
    rows = [
        Lease(str(POOL[0]), B_MAC, B_MAC, "released", 1.0),  # frees nothing we offered
        theirs(POOL[1], "52:54:00:ff:00:0d"),  # a stale read of our pending address
        theirs(POOL[2]),  # another server bound it
    ]
    assert h.allocator.refresh(rows, h.now) == 1
    assert h.allocator.lease_of(B_MAC) == theirs(POOL[2])
    assert kind(request(h, A_MAC, POOL[0])) is MessageType.ACK
    assert kind(request(h, "52:54:00:ff:00:0e", POOL[2])) is MessageType.NAK
    # the other server's row holds POOL[0] now: our offer to A is dropped for it
    h.allocator.drain_dirty()
    h.allocator.settle([])
    assert h.allocator.refresh([theirs(POOL[0]), theirs(POOL[2])], h.now) >= 1
    assert h.allocator.lease_of(B_MAC) in (theirs(POOL[0]), theirs(POOL[2]))
    # a row deleted from the store is forgotten here too (POOL[1] was ours, not offered)
    assert h.allocator.bound_to("52:54:00:ff:00:0c", h.now) is None


def test_a_named_refresh_reads_only_the_named_addresses() -> None:
    """What a notification names (store/changes.py): its rows are adopted, a named address
    without a row was deleted, and an address it does not name is left alone."""
    h = Harness()
    first = h.dora(A_MAC).packet.yiaddr
    second = h.dora("52:54:00:ff:00:0c").packet.yiaddr
    h.allocator.drain_dirty()
    h.allocator.settle([])
    assert h.allocator.refresh([theirs(POOL[2])], h.now, only={POOL[2], first}) == 2
    assert h.allocator.lease_of(B_MAC) == theirs(POOL[2])
    assert h.allocator.bound_to(A_MAC, h.now) is None, "named and gone: deleted"
    assert h.allocator.bound_to("52:54:00:ff:00:0c", h.now) == second, "not named: kept"


def test_staggered_walks_start_apart_and_cover_the_pool() -> None:
    def allocator(seed: int) -> LeaseAllocator:
        pool = (IPv4Address("10.9.0.10"), IPv4Address("10.9.0.19"))
        scope = AddressScope(IPv4Network("10.9.0.0/24"), pool, 60)
        made = LeaseAllocator.for_scopes([scope], {})
        made.stagger(seed)
        return made

    one, two = allocator(0), allocator(5)
    assert one.offer("a", "a", None, 0.0) == IPv4Address("10.9.0.10")
    assert two.offer("a", "a", None, 0.0) == IPv4Address("10.9.0.15")
    given = [two.offer(f"k{n}", f"m{n}", None, 0.0) for n in range(9)]
    assert sorted(map(int, filter(None, given))) == [
        int(IPv4Address(f"10.9.0.{n}")) for n in range(10, 20) if n != 15
    ]
    assert two.offer("k-last", "m-last", None, 0.0) is None, "ten addresses, ten clients"


# ---- the server's group commit ------------------------------------------------------------


class Sock:
    def __init__(self) -> None:
        self.sent: list[tuple[DhcpPacket, tuple[str, int]]] = []

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        self.sent.append((decode(data), address))


class Flaky:
    """A store whose lease writes fail, or refuse what `refuse` names."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.fail = False
        self.refuse: dict[str, Lease] = {}

    def __call__(self, leases: Iterable[Lease]) -> list[LeaseConflict]:
        if self.fail:
            raise ConnectionError("the database went away")
        batch = list(leases)
        refused = [LeaseConflict(le, self.refuse[le.ip]) for le in batch if le.ip in self.refuse]
        self.store.save_leases([le for le in batch if le.ip not in self.refuse])
        return refused


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[DhcpServer, Flaky]]:
    store = open_store(tmp_path)
    assert isinstance(store, SqliteStore)
    inv = parse_inventory(yaml.safe_load(INVENTORY.replace("MODE", "full")))
    server = DhcpServer(inv, store, interface="eth9")
    flaky = Flaky(SqliteStore(store.path))
    monkeypatch.setattr(store, "save_leases", flaky)
    yield server, flaky
    flaky.store.close()
    store.close()


def packet(kind_: MessageType, mac: str, **options: bytes) -> bytes:
    opts = {Opt.MESSAGE_TYPE: bytes((kind_,))} | {Opt[k.upper()]: v for k, v in options.items()}
    chaddr = bytes.fromhex(mac.replace(":", ""))
    # broadcast: the replies need no ARP entry (and no real socket) to be sent
    return encode(DhcpPacket(op=1, xid=7, chaddr=chaddr, flags=BROADCAST_FLAG, options=opts), 1500)


def dora(server: DhcpServer, sock: Sock, mac: str) -> IPv4Address:
    server._received(sock, packet(MessageType.DISCOVER, mac), ("0.0.0.0", 68), False)
    offered = sock.sent[-1][0].yiaddr
    asked = packet(MessageType.REQUEST, mac, server_id=SERVER.packed, requested_ip=offered.packed)
    server._received(sock, asked, ("0.0.0.0", 68), False)
    server._commit()
    return offered


def test_no_ack_and_no_binding_when_the_write_fails(served: tuple[DhcpServer, Flaky]) -> None:
    server, flaky = served
    sock = Sock()
    flaky.fail = True
    offered = dora(server, sock, A_MAC)
    assert [kind_of(p) for p, _ in sock.sent] == [MessageType.OFFER], "no ACK"
    assert server.stats["commit_failures"] == 1
    assert server.leased_address(A_MAC) is None and not server.allocator.dirty
    flaky.fail = False  # the store is back: the client's retry is served
    assert dora(server, sock, A_MAC) == offered
    assert kind_of(sock.sent[-1][0]) is MessageType.ACK
    assert server.leased_address(A_MAC) == str(offered)


def test_a_lease_the_store_refuses_is_naked_and_the_next_candidate_offered(
    served: tuple[DhcpServer, Flaky],
) -> None:
    server, flaky = served
    sock = Sock()
    flaky.refuse[str(POOL[0])] = theirs(POOL[0])
    assert dora(server, sock, A_MAC) == POOL[0]
    nak = sock.sent[-1][0]
    assert kind_of(nak) is MessageType.NAK and nak.yiaddr == IPv4Address(0)
    assert server.stats["lease_conflicts"] == 1 and server.stats["lost_race"] == 1
    assert server.leased_address(A_MAC) is None
    assert server.leased_address(B_MAC) == str(POOL[0]), "the holder is known here now"
    assert dora(server, sock, A_MAC) == POOL[1]
    assert kind_of(sock.sent[-1][0]) is MessageType.ACK


def kind_of(p: DhcpPacket) -> MessageType | None:
    return p.message_type
