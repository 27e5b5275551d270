"""Pick and build the power driver an inventory node's ``bmc`` block asks for."""

from __future__ import annotations

from typing import Protocol

from pydantic import ValidationError

from plasmaboot.power.base import PowerDriver, RetryPolicy
from plasmaboot.power.credentials import BmcCredentialSource, resolve_password
from plasmaboot.power.errors import BmcConfigurationError
from plasmaboot.power.ipmi import IpmiDriver, IpmiSettings
from plasmaboot.power.manual import (
    DEFAULT_CONFIRMATIONS,
    ManualConfirmations,
    ManualDriver,
    ManualSettings,
)
from plasmaboot.power.redfish import RedfishDriver, RedfishSettings

DRIVERS: dict[str, type[PowerDriver]] = {
    IpmiDriver.name: IpmiDriver,
    RedfishDriver.name: RedfishDriver,
    ManualDriver.name: ManualDriver,
}
DEFAULT_PORTS = {IpmiDriver.name: 623, RedfishDriver.name: 443}


class BmcRecord(BmcCredentialSource, Protocol):
    """The inventory's ``Bmc`` model, as far as the drivers need it."""

    @property
    def address(self) -> str: ...

    @property
    def driver(self) -> str: ...

    @property
    def port(self) -> int | None: ...

    @property
    def username(self) -> str: ...

    @property
    def system_id(self) -> str | None: ...

    @property
    def verify_tls(self) -> bool: ...


def driver_for(
    bmc: BmcRecord,
    node_name: str,
    *,
    retry: RetryPolicy | None = None,
    settle_timeout_s: float = 60.0,
    confirmations: ManualConfirmations = DEFAULT_CONFIRMATIONS,
) -> PowerDriver:
    """The driver for one node; reads the BMC password now so a bad source fails early."""
    field = f"nodes[{node_name}].bmc"
    try:
        if bmc.driver == ManualDriver.name:
            return ManualDriver(
                node_name, ManualSettings(address=bmc.address), confirmations=confirmations
            )
        if bmc.driver not in DEFAULT_PORTS:
            raise BmcConfigurationError(
                f"{field}.driver: unknown power driver {bmc.driver!r}; use one of {sorted(DRIVERS)}"
            )
        common = {
            "address": bmc.address,
            "port": bmc.port or DEFAULT_PORTS[bmc.driver],
            "username": bmc.username,
            "password": resolve_password(bmc, node_name),
        }
        if bmc.driver == IpmiDriver.name:
            return IpmiDriver(
                node_name, IpmiSettings(**common), retry, settle_timeout_s=settle_timeout_s
            )
        settings = RedfishSettings(**common, system_id=bmc.system_id, verify_tls=bmc.verify_tls)
        return RedfishDriver(node_name, settings, retry, settle_timeout_s=settle_timeout_s)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise BmcConfigurationError(f"{field}: {problems}") from None
