"""BMC power control behind one async interface: ipmi, redfish and manual drivers."""

from plasmaboot.power.base import (
    BootDevice,
    PowerDriver,
    PowerState,
    RetryPolicy,
)
from plasmaboot.power.credentials import resolve_password
from plasmaboot.power.errors import (
    BadCredentialsError,
    BmcConfigurationError,
    BmcUnreachableError,
    CredentialSourceError,
    FatalPowerError,
    OperatorTimeoutError,
    PowerError,
    PowerStateTimeoutError,
    RetryablePowerError,
    UnsupportedOperationError,
)
from plasmaboot.power.manual import (
    DEFAULT_CONFIRMATIONS,
    POWER_STEPS,
    ManualConfirmations,
    ManualDriver,
    boot_step,
)
from plasmaboot.power.registry import DRIVERS, driver_for

__all__ = [
    "DEFAULT_CONFIRMATIONS",
    "DRIVERS",
    "POWER_STEPS",
    "BadCredentialsError",
    "BmcConfigurationError",
    "BmcUnreachableError",
    "BootDevice",
    "CredentialSourceError",
    "FatalPowerError",
    "ManualConfirmations",
    "ManualDriver",
    "OperatorTimeoutError",
    "PowerDriver",
    "PowerError",
    "PowerState",
    "PowerStateTimeoutError",
    "RetryPolicy",
    "RetryablePowerError",
    "UnsupportedOperationError",
    "boot_step",
    "driver_for",
    "resolve_password",
]
