"""IPMI 2.0 (lanplus) power driver on pyghmi.

pyghmi rather than an ``ipmitool`` subprocess: it keeps one authenticated RMCP+ session per
BMC instead of a process plus a full handshake per command, the password never sits in a
child's argv or environment, and its errors tell a rejected password ("Incorrect password
provided", "Unauthorized name") apart from a BMC that does not answer, which is exactly the
fatal/retryable split the drivers need. pyghmi blocks, so each call runs in a thread of the
driver's own small pool (a silent BMC holds a thread for seconds; it must not starve the
loop's default executor), bounded on the asyncio side by the retry policy's request timeout.

The chassis commands are sent raw (IPMI 2.0 section 28) so the completion code survives and
can be classified: 0xC1/0xCC/0xD5-style codes mean "unsupported" (fatal), anything without
an answer is retryable.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

from pyghmi.exceptions import IpmiException
from pyghmi.ipmi import command as ipmi_command

from plasmaboot.logs import get_logger
from plasmaboot.power.base import BmcDriver, BmcSettings, BootDevice, PowerAction, PowerState
from plasmaboot.power.errors import (
    BadCredentialsError,
    BmcConfigurationError,
    PowerError,
    RetryablePowerError,
    UnsupportedOperationError,
)

log = get_logger("plasmaboot.power")

T = TypeVar("T")

NETFN_CHASSIS = 0x00
CMD_GET_CHASSIS_STATUS = 0x01
CMD_CHASSIS_CONTROL = 0x02
CMD_SET_SYSTEM_BOOT_OPTIONS = 0x08
BOOT_PARAM_INFO_ACK = 3
BOOT_PARAM_BOOT_FLAGS = 5

CHASSIS_CONTROL: dict[PowerAction, int] = {
    PowerAction.OFF: 0x00,
    PowerAction.ON: 0x01,
    PowerAction.CYCLE: 0x02,
}
# Boot flags data 2, bits 5:2 (IPMI 2.0 table 28-14, boot device selector).
BOOT_DEVICE_SELECTOR: dict[BootDevice, int] = {
    BootDevice.PXE: 0x04,
    BootDevice.DISK: 0x08,
    BootDevice.CDROM: 0x14,
    BootDevice.BIOS_SETUP: 0x18,
}
BOOT_FLAGS_VALID = 0x80
BOOT_FLAGS_PERSISTENT = 0x40
BOOT_FLAGS_EFI = 0x20

# Completion codes that will not change on retry: invalid command, invalid for LUN,
# parameter out of range, invalid data field, not supported in present state,
# sub-function disabled.
UNSUPPORTED_CODES = frozenset({0xC1, 0xC2, 0xC9, 0xCC, 0xD5, 0xD6})
INSUFFICIENT_PRIVILEGE = 0xD4
IPMI_THREADS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="plasmaboot-ipmi")
AUTH_FAILURE_MARKERS = (
    "password",
    "unauthorized",
    "user name",
    "user disabled",
    "user permissions",
    "wrong kg",
)


class IpmiSettings(BmcSettings):
    pass


class IpmiDriver(BmcDriver):
    name: ClassVar[str] = "ipmi"
    settings: IpmiSettings

    async def _read_power_state(self) -> PowerState:
        data = await self._raw(CMD_GET_CHASSIS_STATUS, ())
        if not data:
            return PowerState.UNKNOWN
        return PowerState.ON if data[0] & 0x01 else PowerState.OFF

    async def _request_power(self, action: PowerAction) -> None:
        await self._raw(CMD_CHASSIS_CONTROL, (CHASSIS_CONTROL[action],))

    async def _write_boot_device(self, device: BootDevice, persistent: bool, uefi: bool) -> None:
        try:
            # Stop the BMC from dropping the override after its 60 s timer (spec 28.13).
            await self._raw(CMD_SET_SYSTEM_BOOT_OPTIONS, (BOOT_PARAM_INFO_ACK, 0x08))
        except UnsupportedOperationError:
            log.debug("BMC ignores boot info acknowledge", node=self.node_name)
        flags = BOOT_FLAGS_VALID
        if persistent:
            flags |= BOOT_FLAGS_PERSISTENT
        if uefi:
            flags |= BOOT_FLAGS_EFI
        data = (BOOT_PARAM_BOOT_FLAGS, flags, BOOT_DEVICE_SELECTOR[device], 0, 0, 0)
        await self._raw(CMD_SET_SYSTEM_BOOT_OPTIONS, data)

    async def _raw(self, cmd: int, data: tuple[int, ...]) -> bytes:
        def call(session: Any) -> bytes:
            response = session.xraw_command(netfn=NETFN_CHASSIS, command=cmd, data=data)
            return bytes(response["data"])

        return await self._in_thread(call)

    async def _in_thread(self, call: Callable[[Any], T]) -> T:
        settings = self.settings

        def blocking() -> T:
            # Bytes, not str: pyghmi stores them encoded and only finds its cached session
            # for this BMC again when the comparison is bytes to bytes; with str it treats
            # the live session as still logging in and waits forever.
            session = ipmi_command.Command(
                bmc=settings.address,
                userid=settings.username.encode(),
                password=settings.password.get_secret_value().encode(),
                port=settings.port,
            )
            return call(session)

        try:
            return await asyncio.get_running_loop().run_in_executor(IPMI_THREADS, blocking)
        except IpmiException as exc:
            raise self._classify(exc) from None
        except socket.gaierror as exc:
            if exc.errno == socket.EAI_AGAIN:
                raise RetryablePowerError(f"DNS lookup of {settings.address!r} failed") from None
            raise BmcConfigurationError(
                f"nodes[{self.node_name}].bmc.address: cannot resolve {settings.address!r}"
            ) from None
        except OSError as exc:
            raise RetryablePowerError(f"socket error talking to {self._where()}: {exc}") from None

    def _classify(self, exc: IpmiException) -> PowerError:
        text = str(exc) if exc.args and exc.args[0] else ""
        code = getattr(exc, "ipmicode", 0) or 0
        if code == INSUFFICIENT_PRIVILEGE or any(m in text.lower() for m in AUTH_FAILURE_MARKERS):
            return BadCredentialsError(
                f"{self._where()} rejected user {self.settings.username!r} ({text or code}); "
                f"check nodes[{self.node_name}].bmc.username and its password source, and "
                "that the user has ADMINISTRATOR privilege"
            )
        if code in UNSUPPORTED_CODES:
            return UnsupportedOperationError(
                f"{self._where()} does not support this request: {text} (code 0x{code:02X})"
            )
        return RetryablePowerError(text or "no answer from the BMC (timeout)")
