"""Redfish power driver on httpx.

httpx rather than sushy: the driver needs four resources (service root, system collection,
ComputerSystem, its Reset action), and httpx is already a dependency and async, while sushy
is synchronous and pulls in its own stack. Every call opens a short-lived client with HTTP
basic auth over HTTPS (Redfish mandates TLS), so no session or socket outlives a request;
certificate checks follow ``bmc.verify_tls``.
"""

from __future__ import annotations

import ssl
from typing import Any, ClassVar

import httpx
from pydantic import Field

from plasmaboot.power.base import BmcDriver, BmcSettings, BootDevice, PowerAction, PowerState
from plasmaboot.power.errors import (
    BadCredentialsError,
    BmcConfigurationError,
    PowerError,
    RetryablePowerError,
    UnsupportedOperationError,
)

SYSTEMS_PATH = "/redfish/v1/Systems"
RESET_TYPES: dict[PowerAction, tuple[str, ...]] = {
    PowerAction.ON: ("On", "ForceOn"),
    PowerAction.OFF: ("ForceOff",),
    PowerAction.CYCLE: ("ForceRestart", "PowerCycle"),
}
BOOT_TARGETS: dict[BootDevice, str] = {
    BootDevice.PXE: "Pxe",
    BootDevice.DISK: "Hdd",
    BootDevice.CDROM: "Cd",
    BootDevice.BIOS_SETUP: "BiosSetup",
}
POWER_STATES = {"On": PowerState.ON, "Off": PowerState.OFF}
UNSUPPORTED_STATUS = frozenset({400, 405, 501})


class RedfishSettings(BmcSettings):
    system_id: str | None = Field(
        default=None, description="ComputerSystem id; None means the BMC's only system"
    )
    verify_tls: bool = Field(default=True, description="check the BMC's TLS certificate")


class RedfishDriver(BmcDriver):
    name: ClassVar[str] = "redfish"
    settings: RedfishSettings
    _system_path: str | None = None

    async def _read_power_state(self) -> PowerState:
        system = await self._get(await self._system())
        return POWER_STATES.get(str(system.get("PowerState")), PowerState.UNKNOWN)

    async def _request_power(self, action: PowerAction) -> None:
        path = await self._system()
        reset = (await self._get(path)).get("Actions", {}).get("#ComputerSystem.Reset", {})
        target = reset.get("target", f"{path}/Actions/ComputerSystem.Reset")
        allowed = reset.get("ResetType@Redfish.AllowableValues")
        choices = [t for t in RESET_TYPES[action] if allowed is None or t in allowed]
        if not choices:
            raise UnsupportedOperationError(
                f"{self._where()} offers no reset type for {action.value!r} "
                f"(it allows {allowed}, plasmaboot needs one of {list(RESET_TYPES[action])})"
            )
        await self._send("POST", target, {"ResetType": choices[0]})

    async def _write_boot_device(self, device: BootDevice, persistent: bool, uefi: bool) -> None:
        path = await self._system()
        allowed = (
            (await self._get(path))
            .get("Boot", {})
            .get("BootSourceOverrideTarget@Redfish.AllowableValues")
        )
        target = BOOT_TARGETS[device]
        if allowed is not None and target not in allowed:
            raise UnsupportedOperationError(
                f"{self._where()} cannot boot from {target!r}; it allows {allowed}"
            )
        boot = {
            "BootSourceOverrideTarget": target,
            "BootSourceOverrideEnabled": "Continuous" if persistent else "Once",
            "BootSourceOverrideMode": "UEFI" if uefi else "Legacy",
        }
        await self._send("PATCH", path, {"Boot": boot})

    async def _system(self) -> str:
        if self._system_path is None:
            self._system_path = await self._find_system()
        return self._system_path

    async def _find_system(self) -> str:
        members = [m["@odata.id"] for m in (await self._get(SYSTEMS_PATH)).get("Members", [])]
        field = f"nodes[{self.node_name}].bmc.system_id"
        if self.settings.system_id is not None:
            wanted = f"{SYSTEMS_PATH}/{self.settings.system_id}"
            if wanted.rstrip("/") not in [m.rstrip("/") for m in members]:
                raise BmcConfigurationError(
                    f"{field}: {self._where()} has no system {self.settings.system_id!r}; "
                    f"it has {members}"
                )
            return wanted
        if len(members) != 1:
            raise BmcConfigurationError(
                f"{field}: {self._where()} has {len(members)} systems {members}; "
                "set system_id to the one to drive"
            )
        return str(members[0])

    async def _get(self, path: str) -> dict[str, Any]:
        response = await self._request("GET", path, None)
        body = response.json()
        if not isinstance(body, dict):
            raise RetryablePowerError(f"{self._where()} answered {path} with non-object JSON")
        return body

    async def _send(self, method: str, path: str, payload: dict[str, Any]) -> None:
        await self._request(method, path, payload)

    async def _request(self, method: str, path: str, payload: dict[str, Any] | None) -> Any:
        s = self.settings
        try:
            async with httpx.AsyncClient(
                base_url=f"https://{s.address}:{s.port}",
                auth=httpx.BasicAuth(s.username, s.password.get_secret_value()),
                verify=s.verify_tls,
                timeout=self.retry.request_timeout_s,
                headers={"Accept": "application/json", "OData-Version": "4.0"},
            ) as client:
                response = await client.request(method, path, json=payload)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if response.is_error:
            raise self._status_error(method, path, response)
        return response

    def _transport_error(self, exc: httpx.TransportError) -> PowerError:
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, ssl.SSLCertVerificationError):
                return BmcConfigurationError(
                    f"{self._where()}: TLS certificate not trusted ({cause.verify_message}); "
                    f"install the BMC's CA or set nodes[{self.node_name}].bmc.verify_tls: false"
                )
            cause = cause.__cause__ or cause.__context__
        return RetryablePowerError(f"{type(exc).__name__}: {exc}")

    def _status_error(self, method: str, path: str, response: httpx.Response) -> PowerError:
        detail = f"{method} {path} -> HTTP {response.status_code}: {_redfish_message(response)}"
        if response.status_code in (401, 403):
            return BadCredentialsError(
                f"{self._where()} rejected user {self.settings.username!r} ({detail}); "
                f"check nodes[{self.node_name}].bmc.username and its password source"
            )
        if response.status_code == 404:
            return BmcConfigurationError(f"{self._where()}: {detail}; check bmc.system_id")
        if response.status_code in UNSUPPORTED_STATUS:
            return UnsupportedOperationError(f"{self._where()} refused {detail}")
        return RetryablePowerError(detail)


def _redfish_message(response: httpx.Response) -> str:
    """The Redfish error message if the body has one (DSP0266 error response), else a stub."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        return response.reason_phrase
    infos = [i.get("Message") for i in error.get("@Message.ExtendedInfo", []) if i.get("Message")]
    return "; ".join([str(error.get("message", response.reason_phrase)), *infos])
