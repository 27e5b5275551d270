"""The asyncio DHCP server: sockets bound to the named interface, group-committed leases.

Each readable event drains up to 64 datagrams; the leases those packets bound are written
in one transaction by a callback at the end of that loop turn, and only then are their
ACKs sent, so an ACK is never sent for a lease that is not on disk. The write runs on the
loop thread: a handoff to a writer thread cost more (GIL switches) than the ~0.1 ms
SQLite commit it would hide, and one thread keeps the store's connection single-user.

The store is the authority on who holds an address (several servers may share it): a
lease the store refuses turns its ACK into a NAK and the allocator adopts the holder; a
write that fails sends no ACK and undoes the batch in the allocator. With a shared store
the leases other servers wrote are read back as soon as PostgreSQL notifies their commit
(the rows it names), and all of them every few seconds (store/changes.py).

Its node view (each MAC's node and lifecycle state) follows the event log the same way,
with either store: when the events watch wakes (a commit on PostgreSQL, a transition this
process applied, else every `NODE_POLL_S`), the nodes named by the events after its
cursor are read again, so a change made through another server or the CLI counts here
within a second.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Collection
from ipaddress import IPv4Address
from typing import Any

from plasmaboot import logs
from plasmaboot.boot.policy import ClientFacts
from plasmaboot.dhcp import metrics
from plasmaboot.dhcp.arp import set_neighbour
from plasmaboot.dhcp.config import DhcpConfigError, ServingConfig
from plasmaboot.dhcp.leases import LeaseAllocator
from plasmaboot.dhcp.options import Opt
from plasmaboot.dhcp.packet import DecodeError, DhcpPacket, decode, encode
from plasmaboot.dhcp.responder import BROADCAST, NodeView, Reply, Responder
from plasmaboot.inventory import Inventory
from plasmaboot.lifecycle import TRANSITIONS, Event, IllegalTransition, State
from plasmaboot.provision.lifecycle import LifecycleService
from plasmaboot.store import EventRecord, Store
from plasmaboot.store.changes import ChangeWatch
from plasmaboot.store.following import REREAD_ALL, changed_nodes

log = logs.get_logger(__name__)

# Without notifications (SQLite, or PostgreSQL's listener reconnecting): how long a change
# made by another process may take to reach the node view (the event stream's period).
NODE_POLL_S = 0.5
# With a shared store: how often the leases other servers wrote are read back while
# notifications are down (store/changes.py). A stale view costs at most a refused write
# and a NAK, never a duplicate (the store decides).
LEASE_REFRESH_S = 1.0
# After a read-back, notifications gather this long: a storm's many commits make one read.
SETTLE_S = 0.05
# A DHCP client without an address broadcasts: a socket bound to one address never sees it.
# The server listens on the wildcard, limited to its interface by SO_BINDTODEVICE, whatever
# address the other services bind to.
LISTEN_ADDRESS = "0.0.0.0"
PXE_PORT = 4011
_READ_BATCH = 64
_MAX_DATAGRAM = 4096
# serve's health probe (serve/health.py) sends this and a nonce to each socket, from the
# host itself: read through the loop like any packet, noted in `probes_heard`, never
# decoded or answered (it cannot be a DHCP packet: those are 240 bytes and more).
PROBE_MAGIC = b"plasmaboot-health-probe:"


def _seed(identity: bytes) -> int:
    return int.from_bytes(hashlib.sha256(identity).digest()[:4], "big")


class DhcpServer:
    """Answers DHCP on one interface in the inventory's mode (full, reservation or proxy)."""

    def __init__(
        self,
        inv: Inventory,
        store: Store,
        *,
        interface: str | None,
        port: int = 67,
        proxy: bool | None = None,
        http_base: str | None = None,
        chain_when_on_disk: bool = False,
        pxe_port: int = PXE_PORT,
        lifecycle: LifecycleService | None = None,
    ) -> None:
        self.inv = inv
        self.store = store
        self.lifecycle = lifecycle or LifecycleService(store)
        self.port = port
        self.pxe_port = pxe_port
        self.interface = inv.dhcp_interface(interface)
        self._proxy_arg = proxy
        self._http_base = http_base
        self._chain = chain_when_on_disk
        self.config = self._config(inv)
        self.allocator = LeaseAllocator.for_scopes(
            self.config.scopes, self.config.fixed, self.config.reserved
        )
        if store.shared:  # servers on one segment start their pool walks apart
            self.allocator.stagger(_seed(self.config.server_ip.packed))
        self.responder = Responder(
            self.config, self.allocator, self._node, self._pxe_seen, server_port=port
        )
        self._nodes: dict[str, NodeView] = {}
        self._node_macs: dict[str, tuple[str, ...]] = {}  # hostname -> its MACs in the view
        self._node_cursor = 0  # the newest event id the node view reflects
        self._node_watch: ChangeWatch | None = None
        self._counters: Counter[str] = Counter()
        self._pending: list[tuple[socket.socket, Reply]] = []
        self._commit_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: list[socket.socket] = []
        self._refresh_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self.probes_heard: dict[int, bytes] = {}  # port -> the last probe nonce read there

    def _config(self, inv: Inventory) -> ServingConfig:
        return ServingConfig.from_inventory(
            inv, proxy=self._proxy_arg, http_base=self._http_base, chain_when_on_disk=self._chain
        )

    # ---- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        if not self.interface:
            raise DhcpConfigError(
                "DHCP needs an interface to answer on and none is named: set "
                "networks[provisioning].dhcp.interface in the inventory or pass --interface; "
                "plasmaboot never answers DHCP on every interface"
            )
        loop = self._loop = asyncio.get_running_loop()
        self.allocator.load(self.store.leases())
        self._read_nodes()
        ports = [(self.port, False)]
        if self.config.proxy:
            ports.append((self.pxe_port, True))
        try:
            for port, pxe in ports:
                sock = self._socket(port)
                self._sockets.append(sock)
                loop.add_reader(sock.fileno(), self._readable, sock, pxe)
        except DhcpConfigError:
            self._close_sockets(loop)
            raise
        self._refresh_task = self._follow_nodes()
        if self.store.shared:
            self._lease_task = asyncio.create_task(self._lease_refresh_loop())
        metrics.track(self)
        log.info(
            f"dhcp {self.config.mode} mode on {self.interface}, {LISTEN_ADDRESS}:{self.port} "
            "(every address of the interface)",
            networks=[f"{n.name} {n.subnet}" for n in self.config.networks.networks],
            leases=len(self.allocator.active(time.time())),
        )

    def _socket(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, str(self.interface).encode())
            sock.bind((LISTEN_ADDRESS, port))
        except OSError as exc:
            sock.close()
            raise DhcpConfigError(
                f"cannot listen for DHCP on {self.interface} port {port}: {exc}; check "
                "that the interface exists, the port is free and the server runs as root"
            ) from exc
        sock.setblocking(False)
        return sock

    async def stop(self) -> None:
        """Flush pending lease writes (and their ACKs), then close the sockets."""
        for task in (self._refresh_task, self._lease_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._node_watch is not None:
            self.lifecycle.listeners.remove(self._wake_nodes)
            self._node_watch.close()
            self._node_watch = None
        self._commit()
        self._close_sockets(asyncio.get_running_loop())
        metrics.untrack(self)

    def _close_sockets(self, loop: asyncio.AbstractEventLoop) -> None:
        for sock in self._sockets:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    def reload(self, inv: Inventory) -> None:
        """New networks, fixed hosts and pools from an edited inventory; current leases are
        kept."""
        config = self._config(inv)
        if config.mode != self.config.mode:
            raise DhcpConfigError(
                f"dhcp.mode changed from {self.config.mode} to {config.mode}: that opens or "
                "closes sockets, so restart the server instead of reloading it"
            )
        self.inv = inv
        self.config = config
        self.responder.config = config
        self.allocator.configure(config.scopes, config.fixed, config.reserved)
        self._nodes = {
            mac: NodeView(view.hostname, view.state, self._overrides(view.hostname))
            for mac, view in self._nodes.items()
        }

    @property
    def listening(self) -> bool:
        """True while every socket is open (the health probe of `serve`)."""
        return bool(self._sockets) and all(sock.fileno() != -1 for sock in self._sockets)

    @property
    def ports(self) -> list[int]:
        """The ports it listens on: DHCP, and PXE (4011) in proxy mode."""
        return [self.port, self.pxe_port] if self.config.proxy else [self.port]

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.responder.stats + self._counters)

    @property
    def active_leases(self) -> int:
        return len(self.allocator.active(time.time()))

    def leased_address(self, mac: str) -> str | None:
        """The address this server leased to `mac` and still holds for it (None in proxy
        mode: it leases nothing); the HTTP side gives boot tokens only there."""
        if self.config.proxy:
            return None
        ip = self.allocator.bound_to(mac, time.time())
        return str(ip) if ip is not None else None

    # ---- packet path ------------------------------------------------------------------

    def _readable(self, sock: socket.socket, pxe: bool) -> None:
        """Drain what the socket holds (bounded), so one loop turn batches many packets."""
        for _ in range(_READ_BATCH):
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._counters["socket_errors"] += 1
                log.debug("dhcp: receive error", error=str(exc))
                return
            self._received(sock, data, addr, pxe)

    def _received(self, sock: socket.socket, data: bytes, addr: tuple[str, int], pxe: bool) -> None:
        if data.startswith(PROBE_MAGIC):
            self.probes_heard[sock.getsockname()[1]] = data[len(PROBE_MAGIC) :]
            return
        self._counters["received"] += 1  # every datagram, so each can be accounted for
        try:
            request = decode(data)
        except DecodeError as exc:
            self._counters["decode_errors"] += 1
            log.debug("dhcp: dropped a packet", size=len(data), source=addr[0], error=str(exc))
            return
        # Every line logged while answering (lifecycle's too) names the client.
        view = self._nodes.get(request.mac)
        context = logs.bind_context(mac=request.mac, **({"node": view.hostname} if view else {}))
        try:
            self._answer(sock, request, addr, pxe)
        finally:
            logs.reset_context(context)

    def _answer(
        self, sock: socket.socket, request: DhcpPacket, addr: tuple[str, int], pxe: bool
    ) -> None:
        try:
            reply = self.responder.respond(
                request, addr, time.time(), pxe_port=pxe, interface=self.interface
            )
        except Exception:  # a bad packet must never stop the server
            self._counters["handler_errors"] += 1
            log.exception(f"dhcp: error answering {request.message_type}", source=addr[0])
            return
        if self.allocator.dirty:
            self._schedule_commit()
        if reply is None:
            if log.isEnabledFor(logging.DEBUG):
                kind = request.message_type
                log.debug(f"dhcp: no answer to {kind.name if kind else '?'} from {request.mac}")
            return
        if reply.durable:
            self._pending.append((sock, reply))
            self._schedule_commit()
        else:
            self._send(sock, reply)

    def _send(self, sock: socket.socket, reply: Reply) -> None:
        address = reply.address
        if reply.neighbour is not None:
            try:
                set_neighbour(sock, address[0], reply.neighbour, str(self.interface))
            except OSError as exc:  # cannot teach ARP: broadcasting always reaches it
                self._counters["arp_errors"] += 1
                log.debug("dhcp: ARP entry refused; broadcasting", ip=address[0], error=str(exc))
                address = (BROADCAST, address[1])
        try:
            sock.sendto(encode(reply.packet, reply.max_size), address)
            self._counters["sent"] += 1
        except (OSError, ValueError) as exc:
            self._counters["send_errors"] += 1
            log.debug("dhcp: cannot send", to=reply.address, error=str(exc))
        if log.isEnabledFor(logging.DEBUG):
            packet = reply.packet
            kind = packet.message_type.name if packet.message_type else "?"
            log.debug(f"dhcp: {kind} {packet.mac} -> {packet.yiaddr} via {address}", mac=packet.mac)

    def _schedule_commit(self) -> None:
        if not self._commit_scheduled and self._loop is not None:
            self._commit_scheduled = True
            # Not in the context of the packet that scheduled it: the commit is the batch's.
            self._loop.call_soon(self._commit, context=contextvars.Context())

    def _commit(self) -> None:
        """One group commit: every lease changed this turn in one transaction, then its ACKs."""
        self._commit_scheduled = False
        batch = self.allocator.drain_dirty()
        acks, self._pending = self._pending, []
        if not batch and not acks:
            return
        try:
            conflicts = self.store.save_leases(batch) if batch else []
        except Exception:
            # Nothing of the batch is in the store: nothing of it may stay bound here.
            self.allocator.rollback()
            self._counters["commit_failures"] += 1
            log.exception("dhcp: lease write failed; ACKs withheld", withheld=len(acks))
            return
        lost = self.allocator.settle(conflicts)
        self._counters["commits"] += 1
        self._counters["leases_written"] += len(batch) - len(conflicts)
        self._counters["lease_conflicts"] += len(conflicts)
        for conflict in conflicts:
            log.info("dhcp: the store gave the address to another client", conflict=str(conflict))
        for sock, reply in acks:
            if reply.packet.yiaddr in lost:
                nak = self.responder.refused(reply, f"{reply.packet.yiaddr} is taken")
                if nak is not None:
                    self._send(sock, nak)
                continue
            self._send(sock, reply)
            self._log_grant(reply)

    @staticmethod
    def _log_grant(reply: Reply) -> None:
        """INFO for inventory nodes (what an operator follows); pool grants only at DEBUG."""
        packet = reply.packet
        hostname = packet.options.get(Opt.HOSTNAME)
        if hostname is not None:
            log.info("lease bound", node=hostname.decode(), mac=packet.mac, ip=packet.yiaddr)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("lease bound", mac=packet.mac, ip=packet.yiaddr)

    # ---- nodes ------------------------------------------------------------------------

    def _overrides(self, hostname: str) -> dict[str, str]:
        node = self.inv.node(hostname)
        return dict(node.boot_overrides) if node else {}

    def _node(self, mac: str) -> NodeView | None:
        return self._nodes.get(mac)

    def _read_nodes(self) -> None:
        """Every node, and the newest event id as the cursor (read first: what changes
        meanwhile is read again by the next `follow_nodes`)."""
        newest = self.store.events(limit=1)
        records = self.store.list_nodes()
        self._nodes = {
            mac: NodeView(rec.hostname, rec.state, self._overrides(rec.hostname))
            for rec in records
            for mac in rec.macs
        }
        self._node_macs = {rec.hostname: rec.macs for rec in records}
        self._node_cursor = max(self._node_cursor, newest[-1].id if newest else 0)

    def follow_nodes(self) -> int:
        """Re-read the nodes named by the events after the cursor (every node after a large
        burst); how many were read. The cursor moves only once all are read: a store error
        midway leaves them to the next try."""
        changed, cursor = changed_nodes(self.store, self._node_cursor)
        if len(changed) > REREAD_ALL:
            self._read_nodes()
            return len(self._node_macs)
        records = {hostname: self.store.get_node(hostname) for hostname in changed}
        for hostname, record in records.items():
            for mac in self._node_macs.pop(hostname, ()):
                if (view := self._nodes.get(mac)) is not None and view.hostname == hostname:
                    del self._nodes[mac]
            if record is not None:
                self._node_macs[hostname] = record.macs
                view = NodeView(hostname, record.state, self._overrides(hostname))
                self._nodes.update(dict.fromkeys(record.macs, view))
        self._node_cursor = cursor
        return len(changed)

    def _follow_nodes(self) -> asyncio.Task[None]:
        """Keep the node view current from now on (until `stop`)."""
        self._node_watch = self.store.watch("events")
        self.lifecycle.listeners.append(self._wake_nodes)
        return asyncio.create_task(self._follow_nodes_loop(self._node_watch))

    def _wake_nodes(self, _event: EventRecord) -> None:
        """A lifecycle listener: this process applied a transition, read it now."""
        if self._node_watch is not None:
            self._node_watch.notify()

    async def _follow_nodes_loop(self, watch: ChangeWatch) -> None:
        while True:
            await watch.wait_for_change(NODE_POLL_S)
            try:
                self._counters["nodes_refreshed"] += self.follow_nodes()
            except Exception as exc:  # the store is down: keep the view, read again later
                self._counters["node_refresh_failures"] += 1
                log.warning("dhcp: node refresh failed; keeping the previous view", error=str(exc))
            await asyncio.sleep(SETTLE_S)

    def refresh_leases(self, ips: Collection[str] | None = None) -> int:
        """Adopt the leases other servers sharing the store wrote (docs/store.md): the
        rows of `ips` (what a notification named), or every row."""
        if ips is None:
            changed = self.allocator.refresh(self.store.leases(), time.time())
        else:
            named = {IPv4Address(ip) for ip in ips}
            changed = self.allocator.refresh(self.store.leases_at(ips), time.time(), only=named)
        self._counters["leases_refreshed"] += changed
        return changed

    async def _lease_refresh_loop(self) -> None:
        watch = self.store.watch("leases", others_only=True)  # our own are in memory
        try:
            while True:
                ips = await watch.wait_for_change(LEASE_REFRESH_S)
                try:
                    self.refresh_leases(ips)
                except Exception as exc:  # the store is down: writes fail too, no ACK
                    self._counters["lease_refresh_failures"] += 1
                    log.warning(
                        "dhcp: lease refresh failed; keeping the previous view", error=str(exc)
                    )
                await asyncio.sleep(SETTLE_S)
        finally:
            watch.close()

    def _pxe_seen(self, node: NodeView, facts: ClientFacts) -> None:
        """An enrolled (or failed) node netboots: record pxe-boot once, after the reply."""
        if (Event.PXE_BOOT, node.state) not in TRANSITIONS:
            return
        for mac, view in self._nodes.items():
            if view.hostname == node.hostname:
                self._nodes[mac] = NodeView(view.hostname, State.PXE_BOOTING, view.boot_overrides)
        detail = {"mac": facts.mac, "arch": facts.arch, "vendor_class": facts.vendor_class}
        if self._loop is not None:  # after this packet's reply, not before it
            self._loop.call_soon(self._transition, node.hostname, detail)

    def _transition(self, hostname: str, detail: dict[str, Any]) -> None:
        try:
            self.lifecycle.fire(hostname, Event.PXE_BOOT, "dhcp", detail)
            log.info("dhcp: node is pxe-booting", node=hostname, mac=detail["mac"])
        except IllegalTransition as exc:
            log.info("dhcp: node not moved to pxe-booting", node=hostname, reason=str(exc))
        except Exception:
            log.exception("dhcp: recording pxe-boot failed", node=hostname)
