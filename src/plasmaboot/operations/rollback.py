"""Runbook 9.1, a generation rollback: `plasmaboot node rollback NODE...`.

Each node, one at a time, runs the inventory's rollback command (`server.rollback.command`,
default `nixos-rebuild switch --rollback`) as root over SSH, the way rollout's health
check reaches it, then passes the same health gate as a rollout (`rollout.HealthGate`: the
node's health check, then `cluster verify`). The first node that fails stops the rest.

The lifecycle follows the rollout's: an active node is marked draining while it rolls
back and is active again only after the gate; a node a failed rollout left draining (the
usual reason to roll back) is activated the same way; a node in maintenance stays there.
A failure leaves the node draining (or in maintenance) for an operator to look at.
Events: `rollback-output` (the command's lines), `rollback-command` (exit status, last
lines), then the gate's `rollback-health`, `rollback-cluster-verified` or
`rollback-health-failed`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from plasmaboot.lifecycle import Event, State
from plasmaboot.operations.nodes import NodeOperations, OperationError
from plasmaboot.operations.rollout import HealthGate, NodeByNode, over_ssh, run_step

TAKES = (State.ACTIVE, State.DRAINING, State.MAINTENANCE)


@dataclass
class NodeRollback:
    """One node's outcome, as `--json` prints it."""

    node: str
    ok: bool
    state: str  # the node's lifecycle state afterwards
    reason: str = ""


RollbackResult = NodeByNode[NodeRollback]


@dataclass
class Rollback:
    ops: NodeOperations
    gate: HealthGate | None  # None: ungated (the CLI gates unless --no-health-gate)
    ssh_options: Sequence[str] = ()

    def _check(self, hostname: str) -> State:
        state = self.ops._record(hostname).state
        if state not in TAKES:
            raise OperationError(
                f"{hostname} is {state.value}: a rollback takes a node whose installed system "
                "runs (active, draining or maintenance); for a node that never joined use "
                f"`plasmaboot node reprovision {hostname}`"
            )
        return state

    async def run(self, hostnames: list[str]) -> RollbackResult:
        """Roll back each node in turn; stop at the first that fails. Every node is
        checked before the first starts, so a refusal changes nothing."""
        for hostname in hostnames:
            self._check(hostname)
        settings = self.ops.inventory.server.rollback
        command = over_ssh(settings.command, self.ssh_options)
        result = RollbackResult()
        for position, hostname in enumerate(hostnames):
            state = self._check(hostname)
            if state is State.ACTIVE:
                self.ops._fire(hostname, Event.DRAIN, {"rollback": True})
            done = await run_step(
                self.ops, hostname, command, "rollback-command", settings.timeout_s,
                output_event="rollback-output",
            )  # fmt: skip
            reason = ""
            if not done:
                reason = (
                    f"the rollback command ({settings.command}) failed or did not finish "
                    f"within {settings.timeout_s} s; its output: `plasmaboot node events "
                    f"{hostname}`"
                )
            elif self.gate is not None:
                unhealthy = await self.gate.failure(hostname, what="rollback")
                reason = f"after the rollback, {unhealthy}" if unhealthy else ""
            if not reason and state is not State.MAINTENANCE:
                self.ops._fire(hostname, Event.ACTIVATE, {"rollback": "done"})
            after = self.ops._record(hostname).state.value
            result.nodes.append(NodeRollback(hostname, not reason, after, reason))
            if reason:
                result.not_started = hostnames[position + 1 :]
                break
        return result
