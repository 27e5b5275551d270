"""The dashboard's node actions: the CLI's procedures, run the CLI's way.

Each action calls the same `NodeOperations` procedure (or `power_nodes`) as `plasmaboot
node ...`, on the server's own lifecycle service, so the lifecycle table, the runbook's
checks (quorum before leaving the cluster, a drain command's outcome) and the events
recorded are the CLI's. A refusal is the procedure's own message. Nothing is checked
here first: what the CLI refuses, the dashboard refuses, with the same words.

A procedure that outlives `WAIT_S` (a drain command, a BMC that retries) goes on in the
background; the page says so and the node's events show how it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from plasmaboot.cluster.membership import inventory_membership
from plasmaboot.lifecycle import IllegalTransition
from plasmaboot.logs import get_logger
from plasmaboot.operations.nodes import NodeOperations, OperationError, OperationFailed
from plasmaboot.operations.power import PowerCommand, power_nodes
from plasmaboot.power import PowerError
from plasmaboot.provision import Provisioner
from plasmaboot.provision.nodefiles import pki_dir
from plasmaboot.store import UnknownNode

log = get_logger("plasmaboot.dashboard")

WAIT_S = 10.0
# What `plasmaboot node ...` reports as refused (or failed: OperationFailed) without a trace.
REFUSALS = (OperationError, IllegalTransition, UnknownNode, PowerError)

Procedure = Callable[[NodeOperations, str], Awaitable[None] | None]


def _power(command: PowerCommand) -> Procedure:
    async def drive(ops: NodeOperations, hostname: str) -> None:
        (result,) = await power_nodes(ops, command, [hostname])
        if not result.ok:
            raise OperationFailed(result.line())
        ops.log(result.line())

    return drive


@dataclass(frozen=True)
class Action:
    label: str
    explains: str  # what it does, on the confirmation page
    procedure: Procedure
    leaves_cluster: bool = False  # takes the CLI's --keep-member and --force


ACTIONS: dict[str, Action] = {
    "power-on": Action("Power on", "Power the machine on through its BMC.",
                       _power(PowerCommand.ON)),
    "power-off": Action("Power off", "Power the machine off through its BMC (a hard "
                        "off: the OS is not asked to shut down).", _power(PowerCommand.OFF)),
    "power-cycle": Action("Power cycle", "Power the machine off and on through its BMC.",
                          _power(PowerCommand.CYCLE)),
    "provision": Action("Provision", "Runbook 5.2: set a one-time network boot and power "
                        "cycle; DHCP and the agent take it from there.",
                        NodeOperations.provision),
    "reprovision": Action("Reprovision", "Runbook 9.2: leave the cluster, forget the "
                          "install, netboot and reinstall.", NodeOperations.reprovision,
                          leaves_cluster=True),
    "drain": Action("Drain", "Runbook 7.5: run the inventory's drain command "
                    "(server.drain.command), then hold the node in maintenance.",
                    NodeOperations.drain),
    "activate": Action("Activate", "Bring the node back from maintenance (or an "
                       "interrupted drain) to active.", NodeOperations.activate),
    "decommission": Action("Decommission", "Runbook 7.6: drain, leave the cluster, power "
                           "off, mark decommissioned (its history is kept).",
                           NodeOperations.decommission, leaves_cluster=True),
}  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    kind: str  # ok | refused | failed | running
    text: str


class ActionRunner:
    """Runs actions for one server; keeps the ones still running until they end."""

    def __init__(self, provisioner: Provisioner) -> None:
        self.provisioner = provisioner
        self._running: set[asyncio.Task[None]] = set()

    def operations(self, keep_member: bool, force: bool, lines: list[str]) -> NodeOperations:
        """What `plasmaboot node ...` builds (operations/cli.py `_operations`), on this
        server's store and lifecycle service; the membership too, unless --keep-member."""
        prov = self.provisioner
        membership = None
        if not keep_member:
            membership = inventory_membership(prov.inventory, pki_dir(prov.settings.state_dir))
        return NodeOperations(prov.inventory, prov.store, membership=membership,
                              keep_member=keep_member, force=force, log=lines.append,
                              lifecycle=prov.lifecycle)  # fmt: skip

    async def run(
        self, name: str, hostname: str, *, keep_member: bool = False, force: bool = False
    ) -> Outcome:
        action = ACTIONS[name]
        lines: list[str] = []
        ops = self.operations(keep_member and action.leaves_cluster,
                              force and action.leaves_cluster, lines)  # fmt: skip

        async def go() -> None:
            pending = action.procedure(ops, hostname)
            if pending is not None:
                await pending

        task = asyncio.get_running_loop().create_task(go(), name=f"dashboard {name} {hostname}")
        done, _ = await asyncio.wait({task}, timeout=WAIT_S)
        if not done:
            self._running.add(task)
            task.add_done_callback(self._ended)
            return Outcome("running", f"{action.label} of {hostname} is still running; its "
                           "events below show how it ends")  # fmt: skip
        try:
            task.result()
        except REFUSALS as exc:
            kind = "failed" if isinstance(exc, OperationFailed) else "refused"
            return Outcome(kind, str(exc))
        log.info("dashboard action", node=hostname, action=name)
        return Outcome("ok", "; ".join(lines) or f"{hostname}: {action.label.lower()} done")

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("dashboard action ended", task=task.get_name(), error=str(task.exception()))

    async def stop(self) -> None:
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
