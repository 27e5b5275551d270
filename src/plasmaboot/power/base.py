"""The one async interface every power driver offers, and the shared BMC plumbing.

``PowerDriver`` is what callers use (the node operations behind `plasmaboot node`).
``BmcDriver`` holds what the network drivers share so each of them only says how to talk
to its BMC: bounded
retries with backoff for transient failures, waiting until the machine really reached the
requested power state, and ``describe()``/``repr`` built from declarative settings where
secret fields are marked and never rendered.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from plasmaboot.logs import get_logger
from plasmaboot.power.errors import (
    BmcUnreachableError,
    FatalPowerError,
    PowerStateTimeoutError,
    RetryablePowerError,
)

log = get_logger("plasmaboot.power")

T = TypeVar("T")


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class PowerAction(enum.StrEnum):
    ON = "on"
    OFF = "off"
    CYCLE = "cycle"


class BootDevice(enum.StrEnum):
    PXE = "pxe"
    DISK = "disk"
    CDROM = "cdrom"
    BIOS_SETUP = "bios-setup"


def secret_setting(description: str) -> Any:
    """A settings field marked secret: excluded from ``describe()``, masked in ``repr``."""
    return Field(description=description, json_schema_extra={"secret": True})


class DriverSettings(BaseModel):
    """Declarative driver settings; subclasses mark secret fields with ``secret_setting``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def secret_fields(cls) -> frozenset[str]:
        return frozenset(
            name
            for name, field in cls.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("secret")
        )

    def public_view(self) -> dict[str, Any]:
        """Every non-secret setting, JSON-ready: what an API may show."""
        return self.model_dump(mode="json", exclude=set(self.secret_fields()))


class BmcSettings(DriverSettings):
    address: str = Field(description="BMC IP address or hostname")
    port: int = Field(ge=1, le=65535, description="BMC UDP/TCP port")
    username: str = Field(description="BMC user")
    password: SecretStr = secret_setting("BMC password, resolved from an env var or file")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter for transient BMC failures.

    Jitter keeps a rack of BMCs that failed together from being retried in lock step.
    """

    attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0
    request_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < self.base_delay_s:
            raise ValueError(
                "RetryPolicy needs 0 <= base_delay_s <= max_delay_s, got "
                f"base_delay_s={self.base_delay_s} max_delay_s={self.max_delay_s}"
            )
        if self.request_timeout_s <= 0:
            raise ValueError(
                f"RetryPolicy.request_timeout_s must be > 0, got {self.request_timeout_s}"
            )

    def delay_after(self, failed_attempt: int) -> float:
        """Seconds to wait after the given (1-based) failed attempt; never above the cap."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (failed_attempt - 1))
        return random.uniform(ceiling / 2, ceiling)


class PowerDriver(abc.ABC):
    """The async power interface; one instance drives one node's BMC."""

    name: ClassVar[str]

    def __init__(self, node_name: str, settings: DriverSettings) -> None:
        self.node_name = node_name
        self.settings = settings

    @abc.abstractmethod
    async def power_on(self) -> None: ...

    @abc.abstractmethod
    async def power_off(self) -> None: ...

    @abc.abstractmethod
    async def power_cycle(self) -> None:
        """Leave the machine on after a fresh boot (just powers on a machine that was off)."""

    @abc.abstractmethod
    async def power_state(self) -> PowerState: ...

    @abc.abstractmethod
    async def set_boot_device(
        self, device: BootDevice, persistent: bool = False, uefi: bool = True
    ) -> None: ...

    def describe(self) -> dict[str, Any]:
        """What the admin API returns about this driver: never a secret's value."""
        return {
            "driver": self.name,
            "node": self.node_name,
            "settings": self.settings.public_view(),
            "secret_settings": sorted(self.settings.secret_fields()),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(node={self.node_name!r}, settings={self.settings!r})"


class BmcDriver(PowerDriver):
    """Shared retry, timeout and settle logic; subclasses implement the three hooks."""

    settings: BmcSettings

    def __init__(
        self,
        node_name: str,
        settings: BmcSettings,
        retry: RetryPolicy | None = None,
        settle_timeout_s: float = 60.0,
        poll_interval_s: float = 0.5,
    ) -> None:
        super().__init__(node_name, settings)
        self.settings = settings
        self.retry = retry or RetryPolicy()
        self.settle_timeout_s = settle_timeout_s
        self.poll_interval_s = poll_interval_s

    @abc.abstractmethod
    async def _read_power_state(self) -> PowerState: ...

    @abc.abstractmethod
    async def _request_power(self, action: PowerAction) -> None: ...

    @abc.abstractmethod
    async def _write_boot_device(
        self, device: BootDevice, persistent: bool, uefi: bool
    ) -> None: ...

    async def power_state(self) -> PowerState:
        return await self._with_retries("power_state", self._read_power_state)

    async def power_on(self) -> None:
        await self._power_to(PowerState.ON, PowerAction.ON)

    async def power_off(self) -> None:
        await self._power_to(PowerState.OFF, PowerAction.OFF)

    async def _power_to(self, target: PowerState, action: PowerAction) -> None:
        # Some BMCs answer "On" for a machine already on with 409 Conflict: ask first.
        if await self.power_state() is target:
            log.info("power already in that state", node=self.node_name, state=target.value)
            return
        await self._with_retries(f"power_{action.value}", lambda: self._request_power(action))
        await self._wait_for(target)

    async def power_cycle(self) -> None:
        action = PowerAction.CYCLE if await self.power_state() is PowerState.ON else PowerAction.ON
        await self._with_retries("power_cycle", lambda: self._request_power(action))
        await self._wait_for(PowerState.ON)

    async def set_boot_device(
        self, device: BootDevice, persistent: bool = False, uefi: bool = True
    ) -> None:
        await self._with_retries(
            "set_boot_device", lambda: self._write_boot_device(device, persistent, uefi)
        )
        log.info(
            "boot device set",
            node=self.node_name,
            device=device.value,
            persistent=persistent,
            uefi=uefi,
        )

    def _where(self) -> str:
        return f"BMC {self.settings.address}:{self.settings.port} of node {self.node_name!r}"

    async def _with_retries(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        last_error: RetryablePowerError | None = None
        for attempt in range(1, self.retry.attempts + 1):
            log.debug(
                "power request",
                node=self.node_name,
                driver=self.name,
                op=operation,
                attempt=f"{attempt}/{self.retry.attempts}",
            )
            try:
                async with asyncio.timeout(self.retry.request_timeout_s):
                    return await call()
            except TimeoutError:
                last_error = RetryablePowerError(
                    f"no answer within {self.retry.request_timeout_s:g}s"
                )
            except RetryablePowerError as exc:
                last_error = exc
            except FatalPowerError as exc:
                log.error(
                    "power attempt failed, fatal", node=self.node_name, op=operation, error=exc
                )
                raise
            log.warning(
                "power attempt failed",
                node=self.node_name,
                op=operation,
                attempt=f"{attempt}/{self.retry.attempts}",
                error=last_error,
            )
            if attempt < self.retry.attempts:
                await asyncio.sleep(self.retry.delay_after(attempt))
        raise BmcUnreachableError(
            f"{operation} on {self._where()} failed after {self.retry.attempts} attempts: "
            f"{last_error}; check that the BMC is up and that bmc.address and bmc.port "
            "in the inventory are right"
        ) from last_error

    async def _wait_for(self, target: PowerState) -> None:
        deadline = time.monotonic() + self.settle_timeout_s
        while True:
            state = await self.power_state()
            if state is target:
                log.info("power state reached", node=self.node_name, state=state.value)
                return
            if time.monotonic() >= deadline:
                raise PowerStateTimeoutError(
                    f"{self._where()} accepted the request but the machine is still "
                    f"{state.value!r} after {self.settle_timeout_s:g}s (wanted {target.value!r})"
                )
            await asyncio.sleep(self.poll_interval_s)
