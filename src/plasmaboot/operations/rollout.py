"""Runbook 7.4, a rolling update: one node at a time, health-gated, stop on the first
failure so a bad change never reaches more than one node."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from plasmaboot.install import InstallRunner, split_command
from plasmaboot.lifecycle import Event, State
from plasmaboot.operations.nodes import ACTOR, NodeOperations, OperationError

DEFAULT_UPDATE_COMMAND = "nixos-rebuild switch --flake {flake}#{node} --target-host root@{ip}"


@dataclass
class RolloutResult:
    updated: list[str] = field(default_factory=list)
    failed: str | None = None
    reason: str = ""
    not_started: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed is None


@dataclass
class Rollout:
    ops: NodeOperations
    update_command: str = DEFAULT_UPDATE_COMMAND
    health_command: str | None = None
    timeout_s: float = 3600
    health_timeout_s: float = 300
    health_poll_s: float = 5

    def _variables(self, hostname: str) -> dict[str, str]:
        node = self.ops._spec(hostname)
        installer = self.ops.inventory.server.installer
        return {"node": hostname, "ip": str(node.provisioning_ip), "flake": installer.flake or ""}

    async def _run(self, hostname: str, command: str, what: str, timeout_s: float) -> bool:
        runner = InstallRunner(1, timeout_s)
        lines: list[str] = []
        result = await runner.run(
            hostname, split_command(command), self._variables(hostname), lines.append
        )
        self.ops.store.record(
            hostname, f"rollout-{what}", ACTOR,
            {"returncode": result.returncode, "timed_out": result.timed_out,
             "tail": result.tail},
        )  # fmt: skip
        return result.ok

    async def _healthy(self, hostname: str) -> bool:
        if self.health_command is None:
            return True
        deadline = time.monotonic() + self.health_timeout_s
        while time.monotonic() < deadline:
            if await self._run(hostname, self.health_command, "health", self.health_timeout_s):
                return True
            await asyncio.sleep(self.health_poll_s)
        return False

    async def run(self, hostnames: list[str]) -> RolloutResult:
        result = RolloutResult()
        for position, hostname in enumerate(hostnames):
            record = self.ops._record(hostname)
            if record.state is not State.ACTIVE:
                raise OperationError(
                    f"{hostname} is {record.state.value}, not active: a rolling update only "
                    "takes active nodes; fix or remove it from the list"
                )
            self.ops._fire(hostname, Event.DRAIN, {"rollout": True})
            if not await self._run(hostname, self.update_command, "update", self.timeout_s):
                reason = "the update command failed"
            elif not await self._healthy(hostname):
                reason = "the node did not pass its health check after the update"
            else:
                self.ops._fire(hostname, Event.ACTIVATE, {"rollout": "updated"})
                result.updated.append(hostname)
                continue
            # Left draining: an operator decides between a fix, `activate` and a rollback.
            result.failed, result.reason = hostname, reason
            result.not_started = hostnames[position + 1 :]
            break
        return result
