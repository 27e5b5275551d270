"""The lease allocator: which address a client gets, held in memory, written through the store.

Every decision is taken on the in-memory index so the packet path never waits for SQLite;
each change that must survive a crash (bind, decline, release) is queued in `dirty` and the
server writes the queue in one transaction before it sends the ACKs it covers. Offers are
not written: an offer lost in a crash is at worst NAKed later, never handed out twice.

The store is the authority (docs/store.md, "Several servers"): the server hands the
drained batch to `save_leases`, then either `settle`s it with the conflicts the store
returned (each refused address adopts the row that holds it, and its binding here is
undone) or `rollback`s it when the write failed (every change of the batch undone, so
memory never claims what the store does not hold). With a store shared by several
servers, `refresh` adopts the rows the others wrote, and `stagger` starts each server's
pool walk at its own offset so servers on one segment seldom offer the same address.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network

from plasmaboot.store import Lease, LeaseConflict

OFFER_HOLD_S = 60.0  # how long an offered address is kept for the client that saw it
DECLINE_HOLD_S = 600.0  # RFC 2131 3.1.5: a declined address is not reused for a while
_SWEEP_BATCH = 4096


@dataclass(frozen=True)
class FixedHost:
    """An inventory node's reserved address."""

    mac: str
    ip: IPv4Address
    hostname: str


@dataclass(frozen=True)
class AddressScope:
    """One served network as the allocator sees it: subnet, dynamic pool, lease time."""

    subnet: IPv4Network
    pool: tuple[IPv4Address, IPv4Address] | None
    lease_time: int


@dataclass
class _Pool:
    """A scope's walk state: the next never-tried address and the freed ones."""

    scope: AddressScope
    first: int = 0
    last: int = -1
    cursor: int = 0
    start: int = 0  # where the walk started (staggered); below it is walked after `last`
    wrap: int = 0
    free: deque[IPv4Address] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.scope.pool is not None:
            self.first, self.last = int(self.scope.pool[0]), int(self.scope.pool[1])
        self.cursor = self.start = self.wrap = self.first

    def holds(self, ip: IPv4Address) -> bool:
        return self.first <= int(ip) <= self.last


class LeaseAllocator:
    """Dynamic pools + fixed hosts for one subnet or several (one scope per served
    network); never gives one address to two clients, and one client one address."""

    def __init__(
        self,
        subnet: IPv4Network,
        pool: tuple[IPv4Address, IPv4Address] | None,
        fixed: Mapping[str, FixedHost],
        lease_time: int,
        reserved: Iterable[IPv4Address] = (),
    ) -> None:
        """One subnet; `for_scopes` builds one for several networks."""
        self._leases: dict[IPv4Address, Lease] = {}
        self._by_key: dict[str, IPv4Address] = {}
        self.dirty: dict[IPv4Address, Lease] = {}
        # What each address and client key held before the first change since the last
        # drain (None: nothing), and the same for the batch drained last: its undo.
        self._undo: dict[IPv4Address, Lease | None] = {}
        self._undo_keys: dict[str, IPv4Address | None] = {}
        self._drained: tuple[dict[IPv4Address, Lease | None], dict[str, IPv4Address | None]] = (
            {},
            {},
        )
        self._stagger = 0
        self.configure([AddressScope(subnet, pool, lease_time)], fixed, reserved)

    @classmethod
    def for_scopes(
        cls,
        scopes: Sequence[AddressScope],
        fixed: Mapping[str, FixedHost],
        reserved: Iterable[IPv4Address] = (),
    ) -> LeaseAllocator:
        first = scopes[0]
        allocator = cls(first.subnet, first.pool, fixed, first.lease_time, reserved)
        allocator.configure(scopes, fixed, reserved)
        return allocator

    def configure(
        self,
        scopes: Sequence[AddressScope],
        fixed: Mapping[str, FixedHost],
        reserved: Iterable[IPv4Address] = (),
    ) -> None:
        """(Re)set the scopes and fixed hosts; existing leases are kept (SIGHUP reload)."""
        if not scopes:
            raise ValueError("a lease allocator needs at least one scope")
        self._pools = [_Pool(scope) for scope in scopes]
        # Subnets are disjoint (inventory validation): a subnet's network address is its key.
        self._by_subnet = {
            (int(p.scope.subnet.network_address), p.scope.subnet.prefixlen): p for p in self._pools
        }
        lengths = sorted({p.scope.subnet.prefixlen for p in self._pools}, reverse=True)
        self._masks = [(n, (0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF) for n in lengths]
        self._fixed = dict(fixed)
        self._fixed_ips = {host.ip: host for host in fixed.values()}
        self._reserved = set(reserved)
        for p in self._pools:
            self._reserved |= {p.scope.subnet.network_address, p.scope.subnet.broadcast_address}
        self.stagger(self._stagger)

    def stagger(self, seed: int) -> None:
        """Start each pool's walk at an offset of its own (`seed` modulo the pool's size):
        servers sharing a store then mostly offer different addresses. 0: the pool's start."""
        self._stagger = seed
        for p in self._pools:
            if p.scope.pool is not None and p.last >= p.first:
                p.cursor = p.start = p.first + seed % (p.last - p.first + 1)
                p.wrap = p.first

    @property
    def subnet(self) -> IPv4Network:
        """The first scope's subnet (the only one in the single-network form)."""
        return self._pools[0].scope.subnet

    def _pool_of(self, ip: IPv4Address) -> _Pool | None:
        number = int(ip)
        for length, mask in self._masks:
            found = self._by_subnet.get((number & mask, length))
            if found is not None:
                return found
        return None

    def load(self, leases: Iterable[Lease]) -> None:
        """Adopt the store's leases at start-up."""
        for lease in leases:
            self._adopt(lease)

    def _adopt(self, lease: Lease) -> None:
        """Take the store's row for its address as the truth (it may be another server's)."""
        ip = IPv4Address(lease.ip)
        old = self._leases.get(ip)
        if (
            old is not None
            and old.client_key
            and old.client_key != lease.client_key
            and self._by_key.get(old.client_key) == ip
        ):
            del self._by_key[old.client_key]
        self._leases[ip] = lease
        key = lease.client_key
        if lease.state not in ("bound", "released") or not key:
            return
        mine = self._by_key.get(key)
        current = self._leases.get(mine) if mine is not None else None
        if (
            current is None
            or current.client_key != key
            or current.state != "bound"
            or current.expires_at <= lease.expires_at
        ):
            self._by_key[key] = ip

    def refresh(
        self, leases: Iterable[Lease], now: float, *, only: Collection[IPv4Address] | None = None
    ) -> int:
        """Adopt what the shared store holds (rows other servers wrote, renewed or released)
        for every address with no write of ours pending; our own offers (never written)
        stay unless the store gives their address to someone else. `leases` is the whole
        table, or (`only`) the rows of those addresses: one of them without a row was
        deleted. How many changed."""
        seen: set[IPv4Address] = set()
        changed = 0
        for lease in leases:
            ip = IPv4Address(lease.ip)
            seen.add(ip)
            mine = self._leases.get(ip)
            if ip in self.dirty or mine == lease:
                continue
            holds = lease.state != "released" and lease.expires_at > now
            if mine is not None and mine.state == "offered" and not holds:
                continue
            self._adopt(lease)
            changed += 1
            if not holds:
                self._freed(ip)
        known = list(self._leases.items()) if only is None else [
            (ip, self._leases[ip]) for ip in only if ip in self._leases
        ]  # fmt: skip
        for ip, mine in known:
            if ip not in seen and ip not in self.dirty and mine.state != "offered":
                # deleted from the store (expired rows cleaned up by an operator or a peer)
                del self._leases[ip]
                if mine.client_key and self._by_key.get(mine.client_key) == ip:
                    del self._by_key[mine.client_key]
                self._freed(ip)
                changed += 1
        return changed

    def _mark(self, ip: IPv4Address, key: str | None = None) -> None:
        """Note what `ip` (and `key`) held before this batch changes it, once per batch."""
        if ip not in self._undo:
            self._undo[ip] = self._leases.get(ip)
        if key and key not in self._undo_keys:
            self._undo_keys[key] = self._by_key.get(key)

    def fixed_for(self, mac: str) -> FixedHost | None:
        return self._fixed.get(mac)

    def lease_of(self, key: str) -> Lease | None:
        ip = self._by_key.get(key)
        return self._leases.get(ip) if ip is not None else None

    def bound_to(self, mac: str, now: float) -> IPv4Address | None:
        """The address bound (not expired) to this MAC, whatever its client id: its fixed
        address in one lookup, else the pool's leases are searched."""
        host = self._fixed.get(mac)
        ips = [host.ip] if host is not None else list(self._leases)
        for ip in ips:
            lease = self._leases.get(ip)
            if lease and lease.mac == mac and lease.state == "bound" and lease.expires_at > now:
                return ip
        return None

    def active(self, now: float) -> list[Lease]:
        return [le for le in self._leases.values() if le.state == "bound" and le.expires_at > now]

    def in_pool(self, ip: IPv4Address) -> bool:
        pool = self._pool_of(ip)
        return pool is not None and pool.holds(ip)

    def _usable_by(self, ip: IPv4Address, key: str, mac: str, now: float) -> bool:
        """May `ip` go to this client right now?"""
        if ip in self._reserved:
            return False
        pool = self._pool_of(ip)
        if pool is None:
            return False
        host = self._fixed_ips.get(ip)
        if host is not None:
            # The node's address, whatever client id its firmware stage sends (PXE, HTTP
            # boot, iPXE and the OS each pick their own option 61).
            return host.mac == mac
        if not pool.holds(ip):
            return False
        lease = self._leases.get(ip)
        if lease is None or lease.client_key == key:
            return True
        return lease.state == "released" or lease.expires_at <= now

    def _next_free(self, pool: _Pool, key: str, mac: str, now: float) -> IPv4Address | None:
        while pool.free:
            ip = pool.free.popleft()
            if self._usable_by(ip, key, mac, now):
                return ip
        if pool.scope.pool is None:
            return None
        while pool.cursor <= pool.last:
            ip = IPv4Address(pool.cursor)
            pool.cursor += 1
            if self._usable_by(ip, key, mac, now):
                return ip
        if pool.wrap < pool.start:  # a staggered walk: the addresses below its start
            while pool.wrap < pool.start:
                ip = IPv4Address(pool.wrap)
                pool.wrap += 1
                if self._usable_by(ip, key, mac, now):
                    return ip
        self._sweep(pool, now)
        return pool.free.popleft() if pool.free else None

    def _sweep(self, pool: _Pool, now: float) -> None:
        """Pool walked once: collect expired and released addresses, oldest expiry first."""
        if pool.scope.pool is None:
            return
        candidates = [
            le
            for le in self._leases.values()
            if (le.state == "released" or le.expires_at <= now)
            and pool.holds(IPv4Address(le.ip))
            and IPv4Address(le.ip) not in self._fixed_ips
        ]
        candidates.sort(key=lambda le: le.expires_at)
        pool.free.extend(IPv4Address(le.ip) for le in candidates[:_SWEEP_BATCH])

    def _freed(self, ip: IPv4Address) -> None:
        pool = self._pool_of(ip)
        if pool is not None:
            pool.free.append(ip)

    def _remember(self, ip: IPv4Address, lease: Lease, durable: bool, now: float) -> Lease:
        if durable:
            self._mark(ip, lease.client_key)
        self._leases[ip] = lease
        if lease.client_key:
            previous = self._by_key.get(lease.client_key)
            if previous is not None and previous != ip:
                self._let_go(previous, now)
            self._by_key[lease.client_key] = ip
        if durable:
            self.dirty[ip] = lease
        return lease

    def _let_go(self, ip: IPv4Address, now: float) -> None:
        """The client moved to another address: the old one becomes free."""
        old = self._leases.get(ip)
        if old is None or old.state == "declined":
            return
        self._mark(ip)
        if old.state == "offered":
            del self._leases[ip]
        else:
            released = replace(old, state="released", expires_at=min(old.expires_at, now))
            self._leases[ip] = released
            self.dirty[ip] = released
        self._freed(ip)

    def offer(
        self,
        key: str,
        mac: str,
        requested: IPv4Address | None,
        now: float,
        subnet: IPv4Network | None = None,
    ) -> IPv4Address | None:
        """An address for a DISCOVER: fixed, the client's own, the requested one, or a new
        one, on `subnet` (the request's network; the first scope's when not given)."""
        pool = self._pool_of(subnet.network_address) if subnet is not None else self._pools[0]
        if pool is None:
            return None
        host = self._fixed.get(mac)
        if host is not None:
            candidates = [host.ip]
        else:
            current = self._by_key.get(key)
            candidates = [ip for ip in (current, requested) if ip is not None]
        on_link = pool.scope.subnet
        ip = next(
            (c for c in candidates if c in on_link and self._usable_by(c, key, mac, now)), None
        )
        if ip is None and host is None:
            ip = self._next_free(pool, key, mac, now)
        if ip is None:
            return None
        held = self._leases.get(ip)
        if held is None or held.state != "bound" or held.expires_at <= now:
            hostname = host.hostname if host else None
            lease = Lease(str(ip), key, mac, "offered", now + OFFER_HOLD_S, hostname)
            self._remember(ip, lease, False, now)
        return ip

    def bind(
        self, key: str, mac: str, ip: IPv4Address, now: float, hostname: str | None = None
    ) -> Lease | None:
        """A REQUEST for `ip`: the bound lease (queued for the disk), or None for a NAK."""
        if not self._usable_by(ip, key, mac, now):
            return None
        host = self._fixed_ips.get(ip)
        name = host.hostname if host else hostname
        pool = self._pool_of(ip)
        lease_time = pool.scope.lease_time if pool is not None else self._pools[0].scope.lease_time
        lease = Lease(str(ip), key, mac, "bound", now + lease_time, name)
        return self._remember(ip, lease, True, now)

    def forget_offer(
        self, key: str, mac: str, taken: IPv4Address | None = None, now: float = 0.0
    ) -> None:
        """The client chose another server (RFC 2131 3.1.4): free what we offered it, and
        hold `taken`, the address that server is binding for it (option 50), as offered
        to it. Until the other server's lease is read back, `taken` looks free here: offered
        to the next client, its ACK lost the insert race in the shared store and became a
        NAK (two servers answering every client: 624 DORA/s before, 2,241 after)."""
        ip = self._by_key.get(key)
        lease = self._leases.get(ip) if ip is not None else None
        if ip is not None and ip != taken and lease is not None and lease.state == "offered":
            del self._leases[ip]
            del self._by_key[key]
            self._freed(ip)
        if taken is not None and ip != taken and self._usable_by(taken, key, mac, now):
            held = Lease(str(taken), key, mac, "offered", now + OFFER_HOLD_S, None)
            self._remember(taken, held, False, now)

    def decline(self, key: str, ip: IPv4Address, now: float) -> Lease | None:
        """RFC 2131 4.3.3: the address is in use by someone else; quarantine it."""
        lease = self._leases.get(ip)
        if lease is None or lease.client_key != key:
            return None
        self._mark(ip, key)
        self._by_key.pop(key, None)
        quarantined = Lease(str(ip), "", lease.mac, "declined", now + DECLINE_HOLD_S, None)
        self._leases[ip] = quarantined
        self.dirty[ip] = quarantined
        return quarantined

    def release(self, key: str, ip: IPv4Address, now: float) -> Lease | None:
        """RFC 2131 4.3.4: the client is done; the address may go to another client."""
        lease = self._leases.get(ip)
        if lease is None or lease.client_key != key or lease.state != "bound":
            return None
        self._mark(ip)
        released = replace(lease, state="released", expires_at=now)
        self._leases[ip] = released
        self.dirty[ip] = released
        self._freed(ip)
        return released

    def drain_dirty(self) -> list[Lease]:
        """The changes to write, in one batch; `settle` or `rollback` it next."""
        batch = list(self.dirty.values())
        self.dirty.clear()
        self._drained = (self._undo, self._undo_keys)
        self._undo, self._undo_keys = {}, {}
        return batch

    def rollback(self) -> None:
        """The batch drained last was not written: undo all of it (bindings, releases,
        declines), so no address is held here that the store does not hold."""
        leases, keys = self._drained
        self._drained = ({}, {})
        for ip, old in leases.items():
            if old is None:
                self._leases.pop(ip, None)
            else:
                self._leases[ip] = old
            self._freed(ip)  # walked past: back in reach (checked again when popped)
        for key, old_ip in keys.items():
            if old_ip is None:
                self._by_key.pop(key, None)
            else:
                self._by_key[key] = old_ip

    def settle(self, conflicts: Iterable[LeaseConflict]) -> set[IPv4Address]:
        """The batch drained last was written but for `conflicts` (base.py's contract):
        each refused address takes the row that holds it, and the client that wanted it
        is no longer bound to it here. The refused addresses (their ACKs become NAKs)."""
        self._drained = ({}, {})
        lost: set[IPv4Address] = set()
        for conflict in conflicts:
            ip = IPv4Address(conflict.wanted.ip)
            lost.add(ip)
            key = conflict.wanted.client_key
            if key and key != conflict.held.client_key and self._by_key.get(key) == ip:
                del self._by_key[key]
            self._adopt(conflict.held)
        return lost
