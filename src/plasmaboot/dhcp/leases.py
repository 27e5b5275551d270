"""The lease allocator: which address a client gets, held in memory, written through the store.

Every decision is taken on the in-memory index so the packet path never waits for SQLite;
each change that must survive a crash (bind, decline, release) is queued in `dirty` and the
server writes the queue in one transaction before it sends the ACKs it covers. Offers are
not written: an offer lost in a crash is at worst NAKed later, never handed out twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network

from plasmaboot.store import Lease

OFFER_HOLD_S = 60.0  # how long an offered address is kept for the client that saw it
DECLINE_HOLD_S = 600.0  # RFC 2131 3.1.5: a declined address is not reused for a while
_SWEEP_BATCH = 4096


@dataclass(frozen=True)
class FixedHost:
    """An inventory node's reserved address."""

    mac: str
    ip: IPv4Address
    hostname: str


class LeaseAllocator:
    """Dynamic pool + fixed hosts for one subnet; never gives one address to two clients."""

    def __init__(
        self,
        subnet: IPv4Network,
        pool: tuple[IPv4Address, IPv4Address] | None,
        fixed: Mapping[str, FixedHost],
        lease_time: int,
        reserved: Iterable[IPv4Address] = (),
    ) -> None:
        self.subnet = subnet
        self.lease_time = lease_time
        self._leases: dict[IPv4Address, Lease] = {}
        self._by_key: dict[str, IPv4Address] = {}
        self._free: deque[IPv4Address] = deque()
        self.dirty: dict[IPv4Address, Lease] = {}
        self.configure(pool, fixed, reserved)

    def configure(
        self,
        pool: tuple[IPv4Address, IPv4Address] | None,
        fixed: Mapping[str, FixedHost],
        reserved: Iterable[IPv4Address] = (),
    ) -> None:
        """(Re)set the pool and fixed hosts; existing leases are kept (SIGHUP reload)."""
        self._pool = (int(pool[0]), int(pool[1])) if pool else None
        self._fixed = dict(fixed)
        self._fixed_ips = {host.ip: host for host in fixed.values()}
        self._reserved = set(reserved) | {
            self.subnet.network_address,
            self.subnet.broadcast_address,
        }
        self._cursor = self._pool[0] if self._pool else 0
        self._free.clear()

    def load(self, leases: Iterable[Lease]) -> None:
        """Adopt the store's leases at start-up."""
        for lease in leases:
            ip = IPv4Address(lease.ip)
            self._leases[ip] = lease
            if lease.state in ("bound", "released") and lease.client_key:
                self._by_key[lease.client_key] = ip

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
        return self._pool is not None and self._pool[0] <= int(ip) <= self._pool[1]

    def _usable_by(self, ip: IPv4Address, key: str, mac: str, now: float) -> bool:
        """May `ip` go to this client right now?"""
        if ip in self._reserved or ip not in self.subnet:
            return False
        host = self._fixed_ips.get(ip)
        if host is not None:
            # The node's address, whatever client id its firmware stage sends (PXE, HTTP
            # boot, iPXE and the OS each pick their own option 61).
            return host.mac == mac
        if not self.in_pool(ip):
            return False
        lease = self._leases.get(ip)
        if lease is None or lease.client_key == key:
            return True
        return lease.state == "released" or lease.expires_at <= now

    def _next_free(self, key: str, mac: str, now: float) -> IPv4Address | None:
        while self._free:
            ip = self._free.popleft()
            if self._usable_by(ip, key, mac, now):
                return ip
        if self._pool is None:
            return None
        while self._cursor <= self._pool[1]:
            ip = IPv4Address(self._cursor)
            self._cursor += 1
            if self._usable_by(ip, key, mac, now):
                return ip
        self._sweep(now)
        return self._free.popleft() if self._free else None

    def _sweep(self, now: float) -> None:
        """Pool walked once: collect expired and released addresses, oldest expiry first."""
        if self._pool is None:
            return
        candidates = [
            le
            for le in self._leases.values()
            if (le.state == "released" or le.expires_at <= now)
            and self.in_pool(IPv4Address(le.ip))
            and IPv4Address(le.ip) not in self._fixed_ips
        ]
        candidates.sort(key=lambda le: le.expires_at)
        self._free.extend(IPv4Address(le.ip) for le in candidates[:_SWEEP_BATCH])

    def _remember(self, ip: IPv4Address, lease: Lease, durable: bool, now: float) -> Lease:
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
        if old.state == "offered":
            del self._leases[ip]
        else:
            released = replace(old, state="released", expires_at=min(old.expires_at, now))
            self._leases[ip] = released
            self.dirty[ip] = released
        self._free.append(ip)

    def offer(
        self, key: str, mac: str, requested: IPv4Address | None, now: float
    ) -> IPv4Address | None:
        """An address for a DISCOVER: fixed, the client's own, the requested one, or a new one."""
        host = self._fixed.get(mac)
        if host is not None:
            candidates = [host.ip]
        else:
            current = self._by_key.get(key)
            candidates = [ip for ip in (current, requested) if ip is not None]
        ip = next((c for c in candidates if self._usable_by(c, key, mac, now)), None)
        if ip is None and host is None:
            ip = self._next_free(key, mac, now)
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
        lease = Lease(str(ip), key, mac, "bound", now + self.lease_time, name)
        return self._remember(ip, lease, True, now)

    def forget_offer(self, key: str) -> None:
        """The client chose another server (RFC 2131 3.1.4): free what we offered it."""
        ip = self._by_key.get(key)
        lease = self._leases.get(ip) if ip is not None else None
        if ip is not None and lease is not None and lease.state == "offered":
            del self._leases[ip]
            del self._by_key[key]
            self._free.append(ip)

    def decline(self, key: str, ip: IPv4Address, now: float) -> Lease | None:
        """RFC 2131 4.3.3: the address is in use by someone else; quarantine it."""
        lease = self._leases.get(ip)
        if lease is None or lease.client_key != key:
            return None
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
        released = replace(lease, state="released", expires_at=now)
        self._leases[ip] = released
        self.dirty[ip] = released
        self._free.append(ip)
        return released

    def drain_dirty(self) -> list[Lease]:
        batch = list(self.dirty.values())
        self.dirty.clear()
        return batch
