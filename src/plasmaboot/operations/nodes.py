"""The runbook's node procedures (sections 5, 7 and 9) as lifecycle actions.

Each procedure checks the lifecycle first (so a refused step changes nothing), records what
it asked the hardware to do as an event, and leaves state changes that depend on the
machine (pxe-booting, installed, ...) to the traffic and agent reports that prove them.
Cluster membership is changed through `cluster.membership` when the caller passes a
member remover (a node's cluster-config.json gives the URLs and TLS files).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

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
MemberRemover = Callable[[str], list[str]]  # node name -> services it was removed from


class OperationError(Exception):
    """A procedure cannot go on; the message says why and what to do instead."""


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
    remove_member: MemberRemover | None = None
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
        driver = self.power(self._spec(hostname))
        await driver.set_boot_device(BootDevice.PXE, persistent=False)
        await driver.power_cycle()
        self.store.record(hostname, "provision-requested", ACTOR, {"power": "cycle", "boot": "pxe"})
        self.log(f"{hostname}: PXE boot once, power cycled")

    async def reprovision(self, hostname: str) -> None:
        """Runbook 9.2: leave the cluster, forget the install, netboot and reinstall."""
        self._require(self._record(hostname), Event.REPROVISION)
        self._leave_cluster(hostname)
        self._fire(hostname, Event.REPROVISION)
        await self.provision(hostname)

    def drain(self, hostname: str) -> None:
        """Runbook 7.5: stop placing work on the node, then hold it in maintenance.

        plasmaboot does not move workloads itself (no workload API in its scope): draining
        marks the node, the services' own schedulers act on the mark.
        """
        self._fire(hostname, Event.DRAIN)
        self._fire(hostname, Event.DRAINED)

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
        if record.state is State.ACTIVE:
            self.drain(hostname)
        if record.state not in (State.ENROLLED, State.DISCOVERED):
            self._leave_cluster(hostname)
        spec = self.inventory.node(hostname)
        if spec is not None and spec.bmc is not None:
            await self.power(spec).power_off()
            self.log(f"{hostname}: powered off")
        self._fire(hostname, Event.DECOMMISSION)

    def _leave_cluster(self, hostname: str) -> None:
        if self.remove_member is None:
            self.log(f"{hostname}: no cluster config given, membership left unchanged")
            return
        removed = self.remove_member(hostname)
        self.store.record(hostname, "left-cluster", ACTOR, {"services": removed})
        self.log(f"{hostname}: removed from {', '.join(removed) or 'no service'}")

    async def watch(
        self,
        hostnames: list[str],
        goal: State,
        timeout_s: float,
        on_tick: Callable[[list[NodeRecord]], None] | None = None,
    ) -> dict[str, State]:
        """Poll until every node is in `goal` or a failed state, or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = [self._record(h) for h in hostnames]
            if on_tick is not None:
                on_tick(records)
            done = all(r.state is goal or r.state in FAILED_STATES for r in records)
            if done or time.monotonic() >= deadline:
                return {r.hostname: r.state for r in records}
            await asyncio.sleep(self.poll_s)
