"""The manual power driver: a person does what a BMC would, and confirms it.

Each request is logged as an instruction and published on a ``ManualConfirmations`` board,
where the admin API lists what is pending and confirms it; the driver waits for that
confirmation with a timeout. With no BMC there is nothing to read back, so ``power_state``
is whatever the operator last confirmed, or ``unknown``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import Field

from plasmaboot.logs import get_logger
from plasmaboot.power.base import BootDevice, DriverSettings, PowerDriver, PowerState
from plasmaboot.power.errors import OperatorTimeoutError

log = get_logger("plasmaboot.power")


@dataclass
class PendingStep:
    instruction: str
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ManualConfirmations:
    """The pending operator steps, one per node, shared by the drivers and the admin API."""

    def __init__(self) -> None:
        self._pending: dict[str, PendingStep] = {}

    def request(self, node_name: str, instruction: str) -> PendingStep:
        step = PendingStep(instruction)
        self._pending[node_name] = step
        return step

    def confirm(self, node_name: str) -> bool:
        """Mark the node's pending step done; False if nothing was pending."""
        step = self._pending.pop(node_name, None)
        if step is None:
            return False
        step.done.set()
        return True

    def withdraw(self, node_name: str, step: PendingStep) -> None:
        if self._pending.get(node_name) is step:
            del self._pending[node_name]

    def pending(self) -> dict[str, str]:
        return {node: step.instruction for node, step in self._pending.items()}


DEFAULT_CONFIRMATIONS = ManualConfirmations()

# What a person does for each power action (the instruction's verb phrase).
POWER_STEPS = {"on": "power ON", "off": "power OFF", "cycle": "power-cycle (off, then on)"}


def boot_step(device: BootDevice, persistent: bool = False, uefi: bool = True) -> str:
    how = "always" if persistent else "for the next boot only"
    mode = "UEFI" if uefi else "legacy BIOS"
    return f"set the boot device to {device.value} ({mode}, {how})"


class ManualSettings(DriverSettings):
    address: str = Field(description="where the machine is (rack/unit or BMC address)")
    confirm_timeout_s: float = Field(
        default=1800.0, gt=0, description="how long to wait for the operator"
    )


class ManualDriver(PowerDriver):
    name: ClassVar[str] = "manual"
    settings: ManualSettings

    def __init__(
        self,
        node_name: str,
        settings: ManualSettings,
        confirmations: ManualConfirmations = DEFAULT_CONFIRMATIONS,
        notify: Callable[[str, str], None] | None = None,
    ) -> None:
        super().__init__(node_name, settings)
        self.settings = settings
        self.confirmations = confirmations
        self.notify = notify
        self._confirmed_state = PowerState.UNKNOWN

    async def power_on(self) -> None:
        await self._ask(POWER_STEPS["on"], PowerState.ON)

    async def power_off(self) -> None:
        await self._ask(POWER_STEPS["off"], PowerState.OFF)

    async def power_cycle(self) -> None:
        await self._ask(POWER_STEPS["cycle"], PowerState.ON)

    async def power_state(self) -> PowerState:
        return self._confirmed_state

    async def set_boot_device(
        self, device: BootDevice, persistent: bool = False, uefi: bool = True
    ) -> None:
        await self._ask(boot_step(device, persistent, uefi), None)

    def instruction(self, action: str, confirm: bool = True) -> str:
        """What the operator is asked to do (``action``: a ``POWER_STEPS`` value or
        ``boot_step``); ``confirm``: ask for the confirmation the driver waits for."""
        then = ", then confirm it in plasmaboot" if confirm else ""
        return f"Operator: {action} node {self.node_name!r} at {self.settings.address}{then}"

    async def _ask(self, action: str, resulting: PowerState | None) -> None:
        instruction = self.instruction(action)
        step = self.confirmations.request(self.node_name, instruction)
        log.warning("manual power step", node=self.node_name, instruction=instruction)
        if self.notify is not None:
            self.notify(self.node_name, instruction)
        try:
            async with asyncio.timeout(self.settings.confirm_timeout_s):
                await step.done.wait()
        except TimeoutError:
            raise OperatorTimeoutError(
                f"nobody confirmed '{action}' for node {self.node_name!r} within "
                f"{self.settings.confirm_timeout_s:g}s"
            ) from None
        finally:
            self.confirmations.withdraw(self.node_name, step)
        if resulting is not None:
            self._confirmed_state = resulting
        log.info("manual power step confirmed", node=self.node_name, action=action)
