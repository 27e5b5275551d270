"""Helpers shared by the BMC emulator tests (ipmi_sim, sushy-emulator), and the contract
every network power driver passes against its emulator; no tests in here."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from plasmaboot.inventory.models import Bmc
from plasmaboot.power import (
    BadCredentialsError,
    BmcUnreachableError,
    PowerDriver,
    RetryPolicy,
    driver_for,
)

FAST_RETRY = RetryPolicy(attempts=2, base_delay_s=0.1, max_delay_s=0.2)


def emulator_driver(
    monkeypatch: pytest.MonkeyPatch,
    bmc: Bmc,
    node: str,
    password: str,
    *,
    retry: RetryPolicy | None = None,
    settle_timeout_s: float = 30,
) -> PowerDriver:
    """The driver plasmaboot builds for `bmc`, its password in the env var the BMC names."""
    assert bmc.password_env is not None, "emulator BMCs take their password from the env"
    monkeypatch.setenv(bmc.password_env, password)
    return driver_for(bmc, node, retry=retry or FAST_RETRY, settle_timeout_s=settle_timeout_s)


def attempts_logged(caplog: pytest.LogCaptureFixture, operation: str = "") -> int:
    """BMC requests the driver logged, for one operation or (default) for all."""
    return sum(
        1
        for r in caplog.records
        if r.name == "plasmaboot.power"
        and "power request" in r.getMessage()
        and f"op={operation}" in r.getMessage()
    )


def assert_password_not_logged(caplog: pytest.LogCaptureFixture, password: str) -> None:
    assert caplog.records, "expected the driver to log its requests"
    for record in caplog.records:
        assert password not in record.getMessage()


async def contract_bad_credentials_are_fatal_after_one_attempt(
    driver: PowerDriver, node: str, wrong_password: str, caplog: pytest.LogCaptureFixture
) -> BadCredentialsError:
    """Refused credentials: one request, no retry, a fatal error naming the inventory field
    to fix and never the password. The driver must be built with several attempts allowed."""
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    with pytest.raises(BadCredentialsError) as failure:
        await driver.power_on()
    assert attempts_logged(caplog) == 1
    assert time.monotonic() - started < 5
    assert f"nodes[{node}].bmc.username" in str(failure.value)
    assert wrong_password not in str(failure.value)
    assert_password_not_logged(caplog, wrong_password)
    return failure.value


async def contract_unreachable_is_retried_then_fails_clearly(
    driver: PowerDriver, address: str, attempts: int, caplog: pytest.LogCaptureFixture
) -> BmcUnreachableError:
    """Nobody answers: exactly `attempts` requests (the retry policy's bound), then an
    error naming the BMC address, the attempts and the inventory field."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BmcUnreachableError) as failure:
        await asyncio.wait_for(driver.power_state(), timeout=60)
    message = str(failure.value)
    assert attempts_logged(caplog, "power_state") == attempts
    assert address in message and f"after {attempts} attempts" in message
    assert "bmc.address" in message
    return failure.value
