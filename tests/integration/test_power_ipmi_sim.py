"""The ipmi driver against OpenIPMI's ``ipmi_sim`` (IPMI 2.0 lanplus on loopback).

ipmi_sim hands chassis control to an external program (``chassis_control`` in lan.conf);
this program records every power and boot-device change in files, which stand in for the
machine the BMC drives: the tests check that side, not what the driver says. One sim serves
the whole run (conftest.py's ``ipmi_machine``).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from power_support import (
    assert_password_not_logged,
    contract_bad_credentials_are_fatal_after_one_attempt,
    contract_unreachable_is_retried_then_fails_clearly,
    emulator_driver,
)

from plasmaboot.inventory.models import Bmc
from plasmaboot.lab.bmc import EMU_COMMANDS, LAN_CONF
from plasmaboot.power import (
    BootDevice,
    PowerDriver,
    PowerState,
    RetryPolicy,
)

pytestmark = pytest.mark.integration

SIM_PORT = 17123
CLOSED_PORT = 17124
USER = "pbpadmin"
PASSWORD = "pbpIpmiS3cr3t"  # ipmi_sim keeps at most 16 bytes

# Called as: chassis <mc> get <parm>... | chassis <mc> set <parm> <value> [...]
CHASSIS_PROGRAM = """\
#!/bin/sh
dir={machine}
mc=$1; op=$2; shift 2
echo "$op $*" >> "$dir/calls"
if [ "$op" = get ]; then
  for parm in "$@"; do
    case $parm in
      power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)";;
      boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)";;
    esac
  done
else
  while [ $# -ge 2 ]; do
    case $1 in
      power) echo "$2" > "$dir/power";;
      boot) echo "$2" > "$dir/boot";;
    esac
    shift 2
  done
fi
"""


@dataclass
class Machine:
    """What the simulated BMC did to the machine behind it."""

    directory: Path

    def calls(self) -> list[str]:
        path = self.directory / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def forget_calls(self) -> None:
        (self.directory / "calls").write_text("")

    def reset(self) -> None:
        """Off, default boot device, no calls: a machine no test has touched."""
        (self.directory / "power").write_text("0\n")
        (self.directory / "boot").unlink(missing_ok=True)
        self.forget_calls()

    def read(self, name: str) -> str:
        return (self.directory / name).read_text().strip()


def make_driver(
    monkeypatch: pytest.MonkeyPatch,
    port: int = SIM_PORT,
    password: str = PASSWORD,
    retry: RetryPolicy | None = None,
) -> PowerDriver:
    bmc = Bmc(
        address="127.0.0.1", driver="ipmi", port=port, username=USER,
        password_env="PBP_TEST_IPMI_PW",
    )  # fmt: skip
    return emulator_driver(monkeypatch, bmc, "rack1-n1", password, retry=retry, settle_timeout_s=15)


@contextmanager
def running_sim(base: Path, port: int = SIM_PORT) -> Iterator[Machine]:
    """ipmi_sim answering on 127.0.0.1:`port`, its files in `base`."""
    binary = shutil.which("ipmi_sim")
    if binary is None:
        pytest.skip("ipmi_sim not installed (Debian package openipmi)")
    machine_dir = base / "machine"
    machine_dir.mkdir()
    (base / "state").mkdir()
    chassis = base / "chassis"
    chassis.write_text(CHASSIS_PROGRAM.format(machine=machine_dir))
    chassis.chmod(0o755)
    (base / "lan.conf").write_text(
        LAN_CONF.format(name="pbpsim", port=port, chassis=chassis, user=USER, password=PASSWORD)
    )
    (base / "sim.emu").write_text(EMU_COMMANDS)
    log = (base / "ipmi_sim.log").open("wb")
    sim = subprocess.Popen(
        [binary, "-c", "lan.conf", "-f", "sim.emu", "-s", "state", "-n"],
        cwd=base,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until_answering(port)
        yield Machine(machine_dir)
    finally:
        sim.terminate()
        try:
            sim.wait(5)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait()
        log.close()


def wait_until_answering(port: int = SIM_PORT) -> None:
    from pyghmi.ipmi import command

    deadline = time.monotonic() + 10
    while True:
        try:
            command.Command(
                bmc="127.0.0.1", userid=USER.encode(), password=PASSWORD.encode(), port=port
            ).get_power()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


async def test_ipmi_power_off_then_on_changes_the_machine(
    ipmi_machine: Machine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    driver = make_driver(monkeypatch)
    await driver.power_on()
    ipmi_machine.forget_calls()

    await driver.power_off()
    assert ipmi_machine.read("power") == "0"
    assert await driver.power_state() is PowerState.OFF

    await driver.power_on()
    assert ipmi_machine.read("power") == "1"
    assert await driver.power_state() is PowerState.ON
    sets = [c for c in ipmi_machine.calls() if c.startswith("set")]
    assert sets == ["set power 0", "set power 1"]
    assert_password_not_logged(caplog, PASSWORD)


async def test_ipmi_power_on_of_a_machine_already_on_sends_nothing(
    ipmi_machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(monkeypatch)
    await driver.power_on()
    ipmi_machine.forget_calls()

    await driver.power_on()

    assert ipmi_machine.calls() == ["get power"]


async def test_ipmi_power_cycle_turns_the_machine_off_then_on(
    ipmi_machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(monkeypatch)
    await driver.power_on()
    ipmi_machine.forget_calls()

    await driver.power_cycle()

    sets = [c for c in ipmi_machine.calls() if c.startswith("set power")]
    assert sets == ["set power 0", "set power 1"]
    assert await driver.power_state() is PowerState.ON


async def test_ipmi_power_cycle_of_an_off_machine_powers_it_on(
    ipmi_machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(monkeypatch)
    await driver.power_off()
    ipmi_machine.forget_calls()

    await driver.power_cycle()

    assert [c for c in ipmi_machine.calls() if c.startswith("set power")] == ["set power 1"]
    assert ipmi_machine.read("power") == "1"


async def test_ipmi_pxe_once_boot_device_reaches_the_machine(
    ipmi_machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = make_driver(monkeypatch)
    await driver.set_boot_device(BootDevice.CDROM)
    assert ipmi_machine.read("boot") == "cdrom"

    await driver.set_boot_device(BootDevice.PXE, persistent=False, uefi=True)

    assert ipmi_machine.read("boot") == "pxe"


async def test_ipmi_wrong_password_is_fatal_and_not_retried(
    ipmi_machine: Machine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "pbpWrongPassw0"
    driver = make_driver(monkeypatch, password=wrong, retry=RetryPolicy(attempts=5))
    await contract_bad_credentials_are_fatal_after_one_attempt(driver, "rack1-n1", wrong, caplog)


async def test_ipmi_unreachable_bmc_is_retried_then_fails_clearly(
    ipmi_machine: Machine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    policy = RetryPolicy(attempts=2, base_delay_s=0.1, max_delay_s=0.2, request_timeout_s=10)
    driver = make_driver(monkeypatch, port=CLOSED_PORT, retry=policy)
    address = f"127.0.0.1:{CLOSED_PORT}"
    await contract_unreachable_is_retried_then_fails_clearly(driver, address, 2, caplog)
    assert_password_not_logged(caplog, PASSWORD)
