"""The runbook's node procedures (sections 5, 7 and 9) as lifecycle actions.

Each procedure checks the lifecycle first (so a refused step changes nothing), records what
it asked the hardware to do as an event, and leaves state changes that depend on the
machine (pxe-booting, installed, ...) to the traffic and agent reports that prove them.
Cluster membership is changed through `cluster.membership` when the caller passes one
(the CLI does by default: the inventory's store URLs and plasmaboot's operator
certificate); a removal that would break quorum is refused before anything is done.
"""

from __future__ import annotations

import asyncio
import difflib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from plasmaboot.cluster.membership import Removal
from plasmaboot.firstboot.backends import ClusterUnreachable, MembershipError
from plasmaboot.install import InstallRunner, split_command
from plasmaboot.inventory import Inventory, Node
from plasmaboot.lifecycle import (
    BOOTS_FROM_DISK,
    FAILED_STATES,
    TRANSITIONS,
    Event,
    IllegalTransition,
    State,
)
from plasmaboot.power import BootDevice, PowerDriver, driver_for
from plasmaboot.provision.lifecycle import LifecycleService
from plasmaboot.store import NodeRecord, Store, UnknownNode

ACTOR = "operator"
OUTPUT_BATCH_LINES = 50  # drain output: lines per `drain-output` event
OUTPUT_BATCH_S = 2.0  # ... or seconds, whichever comes first


class OperationError(Exception):
    """A procedure cannot go on; the message says why and what to do instead."""


class OperationFailed(OperationError):
    """A step that ran (a drain command, say) failed; the message says what is left."""


class Membership(Protocol):
    """Removes a node from the cluster store(s); `check` changes nothing. Both raise
    `MembershipError` (QuorumRefused: it would break quorum) or `ClusterUnreachable`."""

    def check(self, hostname: str, force: bool = False) -> Sequence[Removal]: ...

    def remove(self, hostname: str, force: bool = False) -> Sequence[Removal]: ...


def unknown_names(wanted: Iterable[str], known: Iterable[str]) -> list[str]:
    """Each name of `wanted` not in `known`, with the closest known names, e.g.
    "nod01 (did you mean node01?)": every unknown name at once, not one per run."""
    known = sorted(set(known))
    described = []
    for name in dict.fromkeys(wanted):
        if name in known:
            continue
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        described.append(f"{name}{hint}")
    return described


class EventLines:
    """Batches a command's output lines into events of one name (one store write per
    batch, not per line), so `plasmaboot node events` shows what the command said."""

    def __init__(self, store: Store, hostname: str, event: str) -> None:
        self.store, self.hostname, self.event = store, hostname, event
        self.lines: list[str] = []
        self.flushed_at = time.monotonic()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) >= OUTPUT_BATCH_LINES or (
            time.monotonic() - self.flushed_at > OUTPUT_BATCH_S
        ):
            self.flush()

    def flush(self) -> None:
        if self.lines:
            self.store.record(self.hostname, self.event, ACTOR, {"lines": self.lines})
            self.lines = []
        self.flushed_at = time.monotonic()


def default_power(node: Node) -> PowerDriver:
    if node.bmc is None:
        raise OperationError(
            f"{node.hostname} has no bmc in the inventory: add one (ipmi, redfish or manual)"
        )
    return driver_for(node.bmc, node.hostname)


@dataclass
class NodeOperations:
    inventory: Inventory
    store: Store
    power: Callable[[Node], PowerDriver] = default_power
    membership: Membership | None = None
    keep_member: bool = False  # --keep-member: decommission/reprovision leave it alone
    force: bool = False  # --force: remove even when it breaks quorum
    poll_s: float = 1.0
    log: Callable[[str], None] = field(default=lambda message: None)
    # serve passes its own, so CLI-driven transitions are counted and heard like any other
    lifecycle: LifecycleService = None  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        self.lifecycle = self.lifecycle or LifecycleService(self.store)

    def _record(self, hostname: str) -> NodeRecord:
        record = self.store.get_node(hostname)
        if record is None:
            raise UnknownNode(hostname)
        return record

    def _spec(self, hostname: str) -> Node:
        node = self.inventory.node(hostname)
        if node is None:
            raise OperationError(f"{hostname} is not in the inventory; add it, then import")
        return node

    def _require(self, record: NodeRecord, event: Event) -> None:
        if (event, record.state) not in TRANSITIONS:
            raise IllegalTransition(record.hostname, record.state, event)

    def _fire(self, hostname: str, event: Event, detail: dict[str, object] | None = None) -> None:
        self.lifecycle.fire(hostname, event, ACTOR, detail)
        self.log(f"{hostname}: {event.value}")

    async def provision(self, hostname: str) -> None:
        """Runbook 5.2: PXE once, power cycle; DHCP and the agent move it from there."""
        record = self._record(hostname)
        if record.state in BOOTS_FROM_DISK:
            raise OperationError(
                f"{hostname} is {record.state.value}: it has a confirmed install; use "
                "`plasmaboot node reprovision` to reinstall it"
            )
        if record.state in (State.BOOT_FAILED, State.INSTALL_FAILED):
            self._fire(hostname, Event.RETRY)
        self._require(self._record(hostname), Event.PXE_BOOT)
        spec = self._spec(hostname)
        firmware = self.inventory.firmware_of(spec)
        driver = self.power(spec)
        await driver.set_boot_device(BootDevice.PXE, persistent=False, uefi=firmware == "uefi")
        await driver.power_cycle()
        self.store.record(
            hostname, "provision-requested", ACTOR,
            {"power": "cycle", "boot": "pxe", "firmware": firmware},
        )  # fmt: skip
        self.log(f"{hostname}: PXE boot once ({firmware}), power cycled")

    async def reprovision(self, hostname: str) -> None:
        """Runbook 9.2: leave the cluster, forget the install, netboot and reinstall."""
        self._require(self._record(hostname), Event.REPROVISION)
        await self.check_leave(hostname)
        await self.leave_cluster(hostname)
        self._fire(hostname, Event.REPROVISION)
        await self.provision(hostname)

    async def drain(self, hostname: str) -> None:
        """Runbook 7.5: move the work off the node, then hold it in maintenance.

        The node is `draining` while the inventory's drain command (server.drain.command:
        evacuate VMs, leave the load balancer) runs, so a second drain is refused; its
        output goes into `drain-output` events. Only exit 0 within server.drain.timeout_s
        moves it on to maintenance; a failure or timeout is recorded (`drain-failed`) and
        puts it back to active, where it was. Without a drain command the node is only
        marked: the services' own schedulers act on the mark.
        """
        record = self._record(hostname)
        if record.state is State.DRAINING:
            raise OperationError(
                f"{hostname} is already draining (a drain is running, or one was "
                f"interrupted): wait for it, or `plasmaboot node activate {hostname}` and "
                "drain again"
            )
        self._require(record, Event.DRAIN)
        settings = self.inventory.server.drain
        if settings.command is None:
            detail: dict[str, object] = {"command": None}
            self._fire(hostname, Event.DRAIN, detail)
            self._fire(hostname, Event.DRAINED, detail)
            self.log(
                f"{hostname}: no server.drain.command in the inventory: only marked "
                "(draining, then maintenance); nothing was moved off it"
            )
            return
        node = self._spec(hostname)
        self._fire(hostname, Event.DRAIN, {"command": settings.command})
        runner = InstallRunner(1, settings.timeout_s, what="drain", setting="server.drain.command")
        output = EventLines(self.store, hostname, "drain-output")
        try:
            result = await runner.run(
                hostname, split_command(settings.command),
                {"ip": str(node.provisioning_ip)}, output,
            )  # fmt: skip
        finally:
            output.flush()
        outcome: dict[str, object] = {
            "returncode": result.returncode,
            "duration_s": round(result.duration_s, 1),
        }
        if result.ok:
            self._fire(hostname, Event.DRAINED, outcome)
            return
        if result.timed_out:
            reason = f"did not finish within {settings.timeout_s} s (server.drain.timeout_s)"
        elif result.returncode is None:
            reason = f"could not be started ({result.tail[-1] if result.tail else '?'})"
        else:
            reason = f"exited with status {result.returncode}"
        self.store.record(
            hostname, "drain-failed", ACTOR,
            {**outcome, "reason": reason, "timed_out": result.timed_out,
             "tail": result.tail[-10:]},
        )  # fmt: skip
        self._fire(hostname, Event.ACTIVATE, {"reason": "drain failed", "drain": reason})
        raise OperationFailed(
            f"{hostname}: the drain command {reason}; the node is active again (not in "
            f"maintenance). Its output: `plasmaboot node events {hostname}`"
        )

    def maintenance(self, hostname: str) -> None:
        self._fire(hostname, Event.MAINTAIN)

    def activate(self, hostname: str) -> None:
        self._fire(hostname, Event.ACTIVATE)

    async def decommission(self, hostname: str) -> None:
        """Runbook 7.6: drain, leave the cluster, power off, mark decommissioned.

        The node's record and history are kept; `recommission` brings it back.
        """
        record = self._record(hostname)
        self._require(record, Event.DECOMMISSION)
        member = record.state not in (State.ENROLLED, State.DISCOVERED)
        if member:
            await self.check_leave(hostname)  # a refusal comes before the drain
        if record.state is State.ACTIVE:
            await self.drain(hostname)
        if member:
            await self.leave_cluster(hostname)
        spec = self.inventory.node(hostname)
        if spec is not None and spec.bmc is not None:
            await self.power(spec).power_off()
            self.log(f"{hostname}: powered off")
        self._fire(hostname, Event.DECOMMISSION)

    async def check_leave(self, hostname: str) -> None:
        """Refuse (changing nothing) a removal that would break quorum or cannot be done.

        The membership client blocks (HTTP with retries): it runs in a thread, so under
        `serve` (admin API, dashboard) it never holds up the loop DHCP answers on."""
        if self.keep_member or self.membership is None:
            return
        try:
            await asyncio.to_thread(self.membership.check, hostname, self.force)
        except (MembershipError, ClusterUnreachable) as error:
            raise OperationError(
                f"{hostname}: {error}; nothing was done. Pass --force to remove it anyway, "
                "or --keep-member to leave the cluster membership unchanged"
            ) from None

    async def leave_cluster(self, hostname: str) -> None:
        if self.keep_member:
            self.store.record(hostname, "membership-kept", ACTOR, {"reason": "--keep-member"})
            self.log(f"{hostname}: cluster membership skipped with --keep-member")
            return
        if self.membership is None:
            self.log(f"{hostname}: no cluster settings given, membership left unchanged")
            return
        try:
            results = await asyncio.to_thread(self.membership.remove, hostname, self.force)
        except (MembershipError, ClusterUnreachable) as error:
            raise OperationFailed(
                f"{hostname}: leaving the cluster failed: {error}. The node is still a "
                "member; fix that and run the command again (or --keep-member)"
            ) from None
        lines = [r.line(hostname) for r in results]
        self.store.record(
            hostname, "left-cluster", ACTOR,
            {"services": [r.service for r in results if r.outcome == "removed"],
             "outcomes": lines, "forced": self.force},
        )  # fmt: skip
        for line in lines or ["no store service in the inventory: nothing to leave"]:
            self.log(f"{hostname}: {line}")

    async def watch(
        self,
        hostnames: list[str],
        goal: State,
        timeout_s: float,
        on_tick: Callable[[list[NodeRecord]], None] | None = None,
    ) -> dict[str, State]:
        """Poll until every node is in `goal` or a failed state, or the timeout passes."""
        return await watch_states(self._record, hostnames, goal, timeout_s, on_tick, self.poll_s)


async def watch_states(
    record: Callable[[str], NodeRecord],
    hostnames: list[str],
    goal: State,
    timeout_s: float,
    on_tick: Callable[[list[NodeRecord]], None] | None = None,
    poll_s: float = 1.0,
) -> dict[str, State]:
    """Poll `record` (the store here, or a server's admin API) until every node is in
    `goal` or a failed state, or the timeout passes; each node's last state."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = [record(h) for h in hostnames]
        if on_tick is not None:
            on_tick(records)
        done = all(r.state is goal or r.state in FAILED_STATES for r in records)
        if done or time.monotonic() >= deadline:
            return {r.hostname: r.state for r in records}
        await asyncio.sleep(poll_s)
