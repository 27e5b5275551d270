"""Registry, declarative settings with secrets, and retry policy of the power drivers."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from plasmaboot.power import (
    DRIVERS,
    BmcConfigurationError,
    BmcUnreachableError,
    CredentialSourceError,
    PowerDriver,
    RetryPolicy,
    driver_for,
)
from plasmaboot.power.ipmi import IpmiDriver, IpmiSettings
from plasmaboot.power.manual import ManualDriver
from plasmaboot.power.redfish import RedfishDriver, RedfishSettings

SECRET = "pbp-unit-Secr3t-2718"
CLOSED_PORT = 17190


def bmc(**overrides: object) -> SimpleNamespace:
    fields: dict[str, object] = {
        "address": "127.0.0.1",
        "driver": "ipmi",
        "port": None,
        "username": "admin",
        "password_env": "PBP_UNIT_BMC_PW",
        "password_file": None,
        "system_id": None,
        "verify_tls": True,
    }
    fields.update(overrides)
    return SimpleNamespace(**fields)


@pytest.fixture(autouse=True)
def bmc_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PBP_UNIT_BMC_PW", SECRET)


@pytest.mark.parametrize(
    ("driver", "cls", "port"),
    [("ipmi", IpmiDriver, 623), ("redfish", RedfishDriver, 443), ("manual", ManualDriver, None)],
)
def test_registry_builds_the_named_driver_with_default_ports(
    driver: str, cls: type[PowerDriver], port: int | None
) -> None:
    built = driver_for(bmc(driver=driver), "n1")
    assert type(built) is cls
    assert DRIVERS[driver] is cls
    assert built.describe()["settings"].get("port") == port


def test_explicit_port_and_redfish_fields_are_kept() -> None:
    built = driver_for(bmc(driver="redfish", port=8443, system_id="s1", verify_tls=False), "n1")
    assert built.describe()["settings"] == {
        "address": "127.0.0.1",
        "port": 8443,
        "username": "admin",
        "system_id": "s1",
        "verify_tls": False,
    }


def test_unknown_driver_names_the_field_and_the_choices() -> None:
    with pytest.raises(BmcConfigurationError) as failure:
        driver_for(bmc(driver="ilo"), "n4")
    assert "nodes[n4].bmc.driver" in str(failure.value)
    assert "['ipmi', 'manual', 'redfish']" in str(failure.value)


def test_invalid_port_names_the_field() -> None:
    with pytest.raises(BmcConfigurationError, match=r"nodes\[n4\]\.bmc: port"):
        driver_for(bmc(port=70000), "n4")


def test_password_source_is_checked_when_the_driver_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PBP_UNIT_BMC_PW")
    with pytest.raises(CredentialSourceError, match=r"nodes\[n2\]\.bmc\.password_env"):
        driver_for(bmc(driver="redfish"), "n2")
    assert type(driver_for(bmc(driver="manual"), "n2")) is ManualDriver


@pytest.mark.parametrize("driver", ["ipmi", "redfish"])
def test_describe_and_repr_never_contain_the_password(driver: str) -> None:
    built = driver_for(bmc(driver=driver), "n1")
    described = built.describe()
    assert SECRET not in json.dumps(described)
    assert "password" not in described["settings"]
    assert described["secret_settings"] == ["password"]
    assert SECRET not in repr(built)
    assert SECRET not in str(built.settings)
    assert "**********" in repr(built)


def test_secret_fields_are_declared_on_the_settings() -> None:
    assert IpmiSettings.secret_fields() == {"password"}
    assert RedfishSettings.secret_fields() == {"password"}


async def test_failed_requests_log_and_raise_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    driver = driver_for(
        bmc(driver="redfish", port=CLOSED_PORT),
        "n1",
        retry=RetryPolicy(attempts=2, base_delay_s=0.01, max_delay_s=0.02, request_timeout_s=5),
    )

    with pytest.raises(BmcUnreachableError) as failure:
        await driver.power_on()

    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "attempt=2/2" in text
    assert SECRET not in text
    assert SECRET not in str(failure.value)
    assert "after 2 attempts" in str(failure.value)


def test_backoff_grows_but_stays_under_the_cap() -> None:
    policy = RetryPolicy(attempts=10, base_delay_s=0.5, max_delay_s=4.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0)]:
        delays = [policy.delay_after(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)


@pytest.mark.parametrize(
    "kwargs",
    [{"attempts": 0}, {"base_delay_s": 5.0, "max_delay_s": 1.0}, {"request_timeout_s": 0}],
)
def test_retry_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
