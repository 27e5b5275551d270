"""The redfish driver against ``sushy-emulator`` with its fake systems driver.

The emulator serves HTTPS with a certificate from a throw-away `plasmaboot pki` CA (trusted
by nothing) and HTTP basic auth from a bcrypt htpasswd file, on loopback. Its fake driver
applies power changes 1 to 11 s after the request, like real hardware, so the tests also
exercise the wait for the state.
Two fake systems make ``bmc.system_id`` matter.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from power_support import (
    assert_password_not_logged,
    attempts_logged,
    contract_bad_credentials_are_fatal_after_one_attempt,
    contract_unreachable_is_retried_then_fails_clearly,
    emulator_driver,
)

from plasmaboot.inventory.models import Bmc
from plasmaboot.pki import init_ca, issue_node_cert
from plasmaboot.power import (
    BmcConfigurationError,
    BootDevice,
    PowerDriver,
    PowerState,
    RetryPolicy,
    UnsupportedOperationError,
)

pytestmark = pytest.mark.integration

PORT = 17180
CLOSED_PORT = 17181
USER = "pbpadmin"
PASSWORD = "pbp-redfish-Secr3t-4711"
SYSTEM_ID = "8f6a3c2e-5b1d-4e7a-9c0f-000000000001"
OTHER_SYSTEM_ID = "8f6a3c2e-5b1d-4e7a-9c0f-000000000002"


@dataclass
class Emulator:
    base_url: str

    def system(self, system_id: str = SYSTEM_ID) -> dict[str, Any]:
        """Read the system back with an independent client, as an operator would."""
        response = httpx.get(
            f"{self.base_url}/redfish/v1/Systems/{system_id}",
            auth=(USER, PASSWORD),
            verify=False,
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


def emulator_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "sushy-emulator"
    return str(beside_python) if beside_python.exists() else shutil.which("sushy-emulator")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    binary = emulator_binary()
    if binary is None:
        pytest.skip("sushy-emulator not installed (Python package sushy-tools)")
    import bcrypt  # sushy-tools' own dependency, present whenever the emulator is

    base = tmp_path_factory.mktemp("pbp-redfish")
    init_ca(base, "pbp-test-bmc")  # a CA no system trusts: verify_tls must matter
    tls = issue_node_cert(base, "bmc", None, ["127.0.0.1"], days=1)
    htpasswd = base / "htpasswd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    htpasswd.write_text(f"{USER}:{hashed}\n")
    systems = [
        {"uuid": uuid, "name": name, "power_state": "Off", "nics": []}
        for uuid, name in ((SYSTEM_ID, "pbp-node-1"), (OTHER_SYSTEM_ID, "pbp-node-2"))
    ]
    config = base / "emulator.conf"
    config.write_text(
        "SUSHY_EMULATOR_FAKE_DRIVER = True\n"
        f"SUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
        "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n"
        f"SUSHY_EMULATOR_LISTEN_PORT = {PORT}\n"
        f"SUSHY_EMULATOR_AUTH_FILE = {str(htpasswd)!r}\n"
        f"SUSHY_EMULATOR_STATE_DIR = {str(base / 'state')!r}\n"
        f"SUSHY_EMULATOR_SSL_CERT = {str(tls.cert)!r}\n"
        f"SUSHY_EMULATOR_SSL_KEY = {str(tls.key)!r}\n"
    )
    log = (base / "emulator.log").open("wb")
    process = subprocess.Popen(
        [binary, "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        served = Emulator(f"https://127.0.0.1:{PORT}")
        wait_until_serving(served, process)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_until_serving(emulator: Emulator, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            emulator.system()
            return
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def make_driver(
    monkeypatch: pytest.MonkeyPatch,
    *,
    password: str = PASSWORD,
    port: int = PORT,
    system_id: str | None = SYSTEM_ID,
    verify_tls: bool = False,
    retry: RetryPolicy | None = None,
) -> PowerDriver:
    bmc = Bmc(
        address="127.0.0.1", driver="redfish", port=port, username=USER,
        password_env="PBP_TEST_REDFISH_PW", system_id=system_id, verify_tls=verify_tls,
    )  # fmt: skip
    return emulator_driver(monkeypatch, bmc, "rack2-n7", password, retry=retry)


async def test_redfish_reset_on_and_force_off_reach_the_system(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    driver = make_driver(monkeypatch)

    await driver.power_on()
    assert emulator.system()["PowerState"] == "On"
    assert await driver.power_state() is PowerState.ON

    await driver.power_off()
    assert emulator.system()["PowerState"] == "Off"
    assert await driver.power_state() is PowerState.OFF
    assert emulator.system(OTHER_SYSTEM_ID)["PowerState"] == "Off"
    assert_password_not_logged(caplog, PASSWORD)


async def test_redfish_power_cycle_ends_with_the_system_on(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(monkeypatch)
    await driver.power_cycle()
    assert emulator.system()["PowerState"] == "On"
    await driver.power_cycle()
    assert emulator.system()["PowerState"] == "On"


async def test_redfish_pxe_once_boot_source_override_uefi(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(monkeypatch)
    await driver.set_boot_device(BootDevice.DISK, persistent=True, uefi=False)
    boot = emulator.system()["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideMode"]) == ("Hdd", "Legacy")

    await driver.set_boot_device(BootDevice.PXE, persistent=False, uefi=True)

    boot = emulator.system()["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideMode"]) == ("Pxe", "UEFI")


async def test_redfish_boot_target_outside_allowable_values_is_unsupported(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    driver = make_driver(monkeypatch, retry=RetryPolicy(attempts=4))

    with pytest.raises(UnsupportedOperationError, match="BiosSetup"):
        await driver.set_boot_device(BootDevice.BIOS_SETUP)
    assert attempts_logged(caplog, "set_boot_device") == 1


async def test_redfish_wrong_password_is_fatal_and_not_retried(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "pbp-wrong-Passw0rd-99"
    driver = make_driver(monkeypatch, password=wrong, retry=RetryPolicy(attempts=5))
    error = await contract_bad_credentials_are_fatal_after_one_attempt(
        driver, "rack2-n7", wrong, caplog
    )
    assert "HTTP 401" in str(error)


async def test_redfish_unreachable_bmc_is_retried_then_fails_clearly(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    driver = make_driver(monkeypatch, port=CLOSED_PORT, retry=RetryPolicy(3, 0.05, 0.1, 5))
    address = f"127.0.0.1:{CLOSED_PORT}"
    await contract_unreachable_is_retried_then_fails_clearly(driver, address, 3, caplog)


async def test_redfish_untrusted_certificate_names_verify_tls(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(monkeypatch, verify_tls=True)

    with pytest.raises(BmcConfigurationError, match=r"nodes\[rack2-n7\]\.bmc\.verify_tls"):
        await driver.power_state()


async def test_redfish_system_id_required_when_the_bmc_has_several(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BmcConfigurationError, match="has 2 systems") as failure:
        await make_driver(monkeypatch, system_id=None).power_state()
    assert SYSTEM_ID in str(failure.value)
    assert OTHER_SYSTEM_ID in str(failure.value)

    with pytest.raises(BmcConfigurationError, match="no system 'nope'"):
        await make_driver(monkeypatch, system_id="nope").power_state()
