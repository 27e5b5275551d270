"""Helpers shared by the BMC emulator tests (ipmi_sim, sushy-emulator); no tests in here."""

from __future__ import annotations

import pytest

from plasmaboot.inventory.models import Bmc
from plasmaboot.power import PowerDriver, RetryPolicy, driver_for

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
