"""The two error families every power driver raises.

Callers decide what to do from the family alone: a ``FatalPowerError`` (bad credentials,
an operation the BMC does not support, a wrong system id) will fail the same way again, so
it is reported at once; a ``RetryablePowerError`` (timeout, BMC busy, connection refused)
may clear, so the driver retries it with bounded backoff before giving up with
``BmcUnreachableError``. Messages name the node and the inventory field to fix, never a
secret.
"""

from __future__ import annotations


class PowerError(Exception):
    """Any failure of a power operation."""


class FatalPowerError(PowerError):
    """Retrying cannot help: fix the inventory or the BMC first."""


class BadCredentialsError(FatalPowerError):
    """The BMC rejected the username or password."""


class CredentialSourceError(FatalPowerError):
    """The password could not be read from the environment variable or file named."""


class UnsupportedOperationError(FatalPowerError):
    """The BMC does not implement the requested operation or value."""


class BmcConfigurationError(FatalPowerError):
    """The inventory's BMC settings do not match the BMC (system id, TLS, driver)."""


class RetryablePowerError(PowerError):
    """A transient failure (no answer, BMC busy, 5xx): worth another attempt."""


class BmcUnreachableError(RetryablePowerError):
    """Every attempt failed with a transient error; raised once the retries are spent."""


class PowerStateTimeoutError(RetryablePowerError):
    """The BMC accepted the request but the machine did not reach the state in time."""


class OperatorTimeoutError(RetryablePowerError):
    """The operator did not confirm a manual power step in time."""
