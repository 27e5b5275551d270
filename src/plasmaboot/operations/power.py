"""`plasmaboot node power on|off|cycle|status`: several nodes at once, through their BMCs.

Each node's driver comes from its inventory `bmc` block (ipmi, redfish or manual) and keeps
the drivers' bounded retry policy (`power.RetryPolicy`: attempts with backoff, each request
bounded in time; a refused password is never retried). At most `parallel` nodes are driven
at once, so a rack is not hammered and the IPMI worker threads are not exhausted.

Every on/off/cycle, done or failed, is recorded as a `power-<action>` event of the node
through the store's `record` (what the node's event history and the admin API's event
stream show); `status` only reads and records nothing. `--pxe-once` asks the BMC for a
one-time network boot in the node's firmware mode (`Inventory.firmware_of`: bios or uefi)
before powering on or cycling.

A manual BMC has nothing to drive: on/off/cycle fail with the instruction for the person at
the machine (nothing was done), and status is `unknown`. Messages name the node, the BMC
address and the inventory field to fix, never a secret: the password stays in the driver's
SecretStr, and the results carry only where it came from.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from plasmaboot.inventory import Node
from plasmaboot.inventory.models import Bmc
from plasmaboot.operations.nodes import ACTOR, NodeOperations, OperationError, unknown_names
from plasmaboot.power import (
    POWER_STEPS,
    BadCredentialsError,
    BootDevice,
    FatalPowerError,
    ManualDriver,
    PowerDriver,
    PowerError,
    PowerState,
    boot_step,
)
from plasmaboot.power.registry import DEFAULT_PORTS

DEFAULT_PARALLEL = 8
MAX_PARALLEL = 64


class PowerCommand(StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"
    STATUS = "status"


# The state each action leaves the machine in (the drivers wait until the BMC says so).
REACHES = {
    PowerCommand.ON: PowerState.ON,
    PowerCommand.OFF: PowerState.OFF,
    PowerCommand.CYCLE: PowerState.ON,
}


@dataclass
class PowerResult:
    """One node's outcome: what `--json` prints and the node's event records."""

    node: str
    action: str
    ok: bool = False
    state: str | None = None  # on | off | unknown at the end; None when not known
    before: str | None = None  # the state before on/off/cycle
    driver: str | None = None
    bmc: str | None = None  # address:port (manual: where the machine is)
    pxe_once: bool = False
    firmware: str | None = None  # the one-time boot's mode, with pxe_once
    error: str | None = None
    error_kind: str | None = None  # fatal | retryable | manual | inventory
    instruction: str | None = None  # manual BMC: what a person must do
    note: str | None = None
    duration_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def event_detail(self) -> dict[str, Any]:
        skip = ("node", "action")
        return {k: v for k, v in asdict(self).items() if k not in skip and v is not None}

    def line(self) -> str:
        """The one line the CLI prints for this node."""
        where = f" [{self.driver} {self.bmc}]" if self.driver else ""
        if not self.ok:
            return f"{self.node}: FAILED power {self.action}{where}: {self.error}"
        facts = []
        if self.before is not None:
            facts.append(
                f"already {self.before}, nothing sent"
                if self.action in ("on", "off") and self.before == self.state
                else f"was {self.before}"
            )
        if self.pxe_once:
            facts.append(f"one-time network boot ({self.firmware}) set")
        if self.note:
            facts.append(self.note)
        told = f" ({'; '.join(facts)})" if facts else ""
        return f"{self.node}: {self.state}{told}{where}"


def check_request(action: PowerCommand, pxe_once: bool, parallel: int) -> None:
    """Refuse option combinations that cannot mean anything, before any BMC is asked."""
    if pxe_once and action not in (PowerCommand.ON, PowerCommand.CYCLE):
        raise OperationError(
            f"--pxe-once goes with `power on` or `power cycle` (the one-time network boot "
            f"happens when the machine next starts), not with `power {action.value}`"
        )
    if not 1 <= parallel <= MAX_PARALLEL:
        raise OperationError(f"--parallel must be between 1 and {MAX_PARALLEL}, got {parallel}")


def check_nodes(ops: NodeOperations, hostnames: list[str], *, recorded: bool) -> list[str]:
    """The node names, each once, in order; every unknown name at once with the closest
    known ones. `recorded`: the result goes into the node's events, so it must be in the
    store too (imported)."""
    if not hostnames:
        raise OperationError("name at least one node")
    unknown = unknown_names(hostnames, (n.hostname for n in ops.inventory.nodes))
    if unknown:
        raise OperationError(
            f"not in the inventory: {', '.join(unknown)}; nothing was done "
            "(`plasmaboot node list` shows the nodes)"
        )
    names = list(dict.fromkeys(hostnames))
    missing = [name for name in names if recorded and ops.store.get_node(name) is None]
    if missing:
        raise OperationError(
            f"in the inventory but not in the store: {', '.join(missing)}; run "
            "`plasmaboot inventory import -c CLUSTER.yaml` first; nothing was done"
        )
    return names


async def power_nodes(
    ops: NodeOperations,
    action: PowerCommand,
    hostnames: list[str],
    *,
    pxe_once: bool = False,
    parallel: int = DEFAULT_PARALLEL,
) -> list[PowerResult]:
    """Drive every node's BMC, `parallel` at a time; one result per node, in order."""
    check_request(action, pxe_once, parallel)
    names = check_nodes(ops, hostnames, recorded=action is not PowerCommand.STATUS)
    slots = asyncio.Semaphore(parallel)

    async def bounded(hostname: str) -> PowerResult:
        async with slots:
            return await power_node(ops, action, hostname, pxe_once=pxe_once)

    return list(await asyncio.gather(*(bounded(name) for name in names)))


async def power_node(
    ops: NodeOperations, action: PowerCommand, hostname: str, *, pxe_once: bool = False
) -> PowerResult:
    """One node: never raises for a BMC problem, the result says what went wrong."""
    spec = ops._spec(hostname)
    firmware = ops.inventory.firmware_of(spec)
    result = PowerResult(
        hostname, action.value, pxe_once=pxe_once, firmware=firmware if pxe_once else None
    )
    started = time.monotonic()
    if spec.bmc is None:
        result.error = (
            f"no bmc in the inventory; add nodes[{hostname}].bmc (driver ipmi, redfish or manual)"
        )
        result.error_kind = "inventory"
    else:
        result.driver, result.bmc = spec.bmc.driver, _bmc_where(spec.bmc)
        try:
            driver = ops.power(spec)
            if isinstance(driver, ManualDriver):
                await _manual(driver, action, result, uefi=firmware == "uefi")
            else:
                await _drive(driver, action, result, uefi=firmware == "uefi")
        except PowerError as exc:
            result.error = _explain(exc, spec)
            result.error_kind = "fatal" if isinstance(exc, FatalPowerError) else "retryable"
    result.duration_s = round(time.monotonic() - started, 2)
    if action is not PowerCommand.STATUS:
        ops.store.record(hostname, f"power-{action.value}", ACTOR, result.event_detail())
    return result


async def _drive(
    driver: PowerDriver, action: PowerCommand, result: PowerResult, *, uefi: bool
) -> None:
    if action is PowerCommand.STATUS:
        result.state = (await driver.power_state()).value
        result.ok = True
        return
    before = await driver.power_state()
    result.before = before.value
    if result.pxe_once:
        await driver.set_boot_device(BootDevice.PXE, persistent=False, uefi=uefi)
        if action is PowerCommand.ON and before is PowerState.ON:
            result.note = "it boots from the network at its next start"
    if action is PowerCommand.ON:
        await driver.power_on()
    elif action is PowerCommand.OFF:
        await driver.power_off()
    else:
        await driver.power_cycle()
    result.state = REACHES[action].value
    result.ok = True


async def _manual(
    driver: ManualDriver, action: PowerCommand, result: PowerResult, *, uefi: bool
) -> None:
    """Nothing to drive: say what a person must do. Status is whatever was confirmed to
    this process, which for the CLI is nothing: unknown."""
    if action is PowerCommand.STATUS:
        result.state = (await driver.power_state()).value
        result.ok = True
        result.note = f"manual BMC: plasmaboot cannot read it; look at the machine at {result.bmc}"
        return
    steps = [boot_step(BootDevice.PXE, persistent=False, uefi=uefi)] if result.pxe_once else []
    steps.append(POWER_STEPS[action.value])
    result.instruction = driver.instruction(", then ".join(steps), confirm=False)
    result.error = f"manual BMC, plasmaboot did nothing; {result.instruction}"
    result.error_kind = "manual"


def _bmc_where(bmc: Bmc) -> str:
    if bmc.driver not in DEFAULT_PORTS:
        return bmc.address
    return f"{bmc.address}:{bmc.port or DEFAULT_PORTS[bmc.driver]}"


def _explain(exc: PowerError, spec: Node) -> str:
    """The driver's message; for refused credentials also where the password came from
    (the variable's name or the file's path: never its value)."""
    message = str(exc)
    bmc = spec.bmc
    if isinstance(exc, BadCredentialsError) and bmc is not None:
        if bmc.password_env:
            source = f"nodes[{spec.hostname}].bmc.password_env ({bmc.password_env})"
        else:
            source = f"nodes[{spec.hostname}].bmc.password_file ({bmc.password_file})"
        message += f"; the password was read from {source}"
    return message
