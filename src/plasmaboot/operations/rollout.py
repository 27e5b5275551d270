"""Runbook 7.4, a rolling update: one node at a time, health-gated, stop on the first
failure so a bad change never reaches more than one node.

The health gate after each node (and after a rollback, runbook 9.1) is the node's own
health command (default: over SSH, `systemctl is-system-running`: every unit up, none
failed) polled until it passes or `timeout_s` runs out, then `cluster verify` (one leader,
every member healthy and voting, the node itself a healthy voting member where it runs the
store) polled within the same deadline."""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from plasmaboot.install import InstallRunner, split_command
from plasmaboot.lifecycle import Event, State
from plasmaboot.operations.nodes import ACTOR, EventLines, NodeOperations, OperationError

DEFAULT_UPDATE_COMMAND = "nixos-rebuild switch --flake {flake}#{node} --target-host root@{ip}"
SSH = "ssh -o BatchMode=yes -o ConnectTimeout=10"
HEALTH_CHECK = "systemctl is-system-running"
DEFAULT_HEALTH_COMMAND = f"{SSH} root@{{ip}} {HEALTH_CHECK}"
ClusterCheck = Callable[[str], list[str]]  # node name -> problems (empty: healthy)


class _NodeOutcome(Protocol):
    ok: bool


Outcome = TypeVar("Outcome", bound=_NodeOutcome)  # one node's outcome, a dataclass


@dataclass
class NodeByNode(Generic[Outcome]):
    """What a procedure run one node at a time did (rollback, certificate rotation): each
    node's outcome in order, and the nodes never started because an earlier one failed."""

    nodes: list[Outcome] = field(default_factory=list)
    not_started: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(n.ok for n in self.nodes)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "nodes": [asdict(n) for n in self.nodes],  # type: ignore[call-overload]
                "not_started": self.not_started}  # fmt: skip

    @classmethod
    def reader(cls, outcome: type[Outcome]) -> Callable[[dict[str, Any]], NodeByNode[Outcome]]:
        """Reads `as_json` back (a server's answer), each node as an `outcome`."""
        return lambda found: cls([outcome(**n) for n in found["nodes"]], found["not_started"])


def over_ssh(remote: str, options: Sequence[str] = ()) -> str:
    """The command template that runs `remote`, a shell command line, as root on the node
    over SSH, as the health check reaches it; `options` are extra ssh -o settings
    (IdentityFile=KEY, Port=N). `remote` stays one argument, so its quoting survives."""
    extra = "".join(f" -o {shlex.quote(option)}" for option in options)
    return f"{SSH}{extra} root@{{ip}} {shlex.quote(remote)}"


# The ssh -o settings a server takes from the network (`node rollback --ssh-option` through
# the admin API): none runs a command or reads more configuration, as ProxyCommand,
# LocalCommand, KnownHostsCommand, Include or Match would.
SERVER_SSH_OPTIONS = ("Port", "IdentityFile", "IdentitiesOnly", "StrictHostKeyChecking",
                      "UserKnownHostsFile", "LogLevel", "ConnectTimeout", "ConnectionAttempts",
                      "ServerAliveInterval", "ServerAliveCountMax")  # fmt: skip


def ssh_options_refusal(options: Sequence[str]) -> str | None:
    """Why a server refuses these ssh -o settings (NAME=VALUE, one of SERVER_SSH_OPTIONS,
    no blank or control character in the value), or None."""
    allowed = {name.lower() for name in SERVER_SSH_OPTIONS}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or name.lower() not in allowed or not value.isprintable() or " " in value:
            return (
                f"--ssh-option {option!r} with --server: a server takes only NAME=VALUE "
                f"settings of {', '.join(SERVER_SSH_OPTIONS)} (none runs a command); put "
                "others in the server's SSH client configuration"
            )
    return None


def variables(ops: NodeOperations, hostname: str) -> dict[str, str]:
    """What a rollout, health or rollback command template may name."""
    node = ops._spec(hostname)
    installer = ops.inventory.server.installer
    return {"node": hostname, "ip": str(node.provisioning_ip), "flake": installer.flake or ""}


async def run_step(
    ops: NodeOperations, hostname: str, command: str, event: str, timeout_s: float,
    output_event: str | None = None, stdin: bytes | None = None,
) -> bool:  # fmt: skip
    """Run one command template for the node (`stdin`: what it reads); its outcome (the
    last lines too) becomes the event `event`, after every output line in `output_event`
    events when named."""
    runner = InstallRunner(1, timeout_s)
    output = EventLines(ops.store, hostname, output_event) if output_event else None
    try:
        result = await runner.run(
            hostname, split_command(command), variables(ops, hostname),
            output or (lambda line: None), stdin,
        )  # fmt: skip
    finally:
        if output is not None:
            output.flush()
    ops.store.record(
        hostname, event, ACTOR,
        {"returncode": result.returncode, "timed_out": result.timed_out, "tail": result.tail},
    )  # fmt: skip
    return result.ok


@dataclass
class HealthGate:
    """The node's health command, then `cluster verify`, within one deadline."""

    ops: NodeOperations
    health_command: str | None = DEFAULT_HEALTH_COMMAND
    cluster_check: ClusterCheck | None = None
    timeout_s: float = 300
    poll_s: float = 5

    async def failure(self, hostname: str, what: str = "rollout") -> str | None:
        """None when the node passes; else why not (recorded as `<what>-health-failed`)."""
        deadline = time.monotonic() + self.timeout_s
        reason = None
        if self.health_command is not None:
            while not await run_step(
                self.ops, hostname, self.health_command, f"{what}-health", self.timeout_s
            ):
                if time.monotonic() >= deadline:
                    reason = (
                        f"the node did not pass its health check within {self.timeout_s:.0f} s "
                        f"({self.health_command})"
                    )
                    break
                await asyncio.sleep(self.poll_s)
        while reason is None and self.cluster_check is not None:
            problems = await asyncio.to_thread(self.cluster_check, hostname)
            if not problems:
                self.ops.store.record(hostname, f"{what}-cluster-verified", ACTOR, {})
                break
            if time.monotonic() >= deadline:
                reason = f"cluster verify failed: {'; '.join(problems)}"
            else:
                await asyncio.sleep(self.poll_s)
        if reason is not None:
            self.ops.store.record(hostname, f"{what}-health-failed", ACTOR, {"reason": reason})
        return reason


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
    gate: HealthGate | None = None  # None: ungated (the CLI gates unless --no-health-gate)
    timeout_s: float = 3600

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
            update = await run_step(
                self.ops, hostname, self.update_command, "rollout-update", self.timeout_s
            )
            unhealthy = None
            if update and self.gate is not None:
                unhealthy = await self.gate.failure(hostname)
            if not update:
                reason = "the update command failed"
            elif unhealthy is not None:
                reason = f"after the update, {unhealthy}"
            else:
                self.ops._fire(hostname, Event.ACTIVATE, {"rollout": "updated"})
                result.updated.append(hostname)
                continue
            # Left draining: an operator decides between a fix, `activate` and a rollback.
            result.failed, result.reason = hostname, reason
            result.not_started = hostnames[position + 1 :]
            break
        return result
