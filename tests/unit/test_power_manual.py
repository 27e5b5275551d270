"""The manual driver: instructions for a person, confirmed through the board."""

from __future__ import annotations

import asyncio
import logging

import pytest

from plasmaboot.power import BootDevice, ManualConfirmations, OperatorTimeoutError, PowerState
from plasmaboot.power.manual import ManualDriver, ManualSettings


def manual(board: ManualConfirmations, timeout_s: float = 5.0) -> ManualDriver:
    settings = ManualSettings(address="rack 3, U12", confirm_timeout_s=timeout_s)
    return ManualDriver("n5", settings, confirmations=board)


async def test_power_on_waits_for_the_operator_and_then_reports_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    board = ManualConfirmations()
    driver = manual(board)
    assert await driver.power_state() is PowerState.UNKNOWN

    task = asyncio.create_task(driver.power_on())
    await asyncio.sleep(0.05)
    assert not task.done()
    instruction = board.pending()["n5"]
    assert "power ON" in instruction and "rack 3, U12" in instruction
    assert any(instruction in r.getMessage() for r in caplog.records)

    assert board.confirm("n5")
    await asyncio.wait_for(task, 1)
    assert await driver.power_state() is PowerState.ON
    assert board.pending() == {}


async def test_unconfirmed_step_times_out_and_is_withdrawn() -> None:
    board = ManualConfirmations()
    with pytest.raises(OperatorTimeoutError, match=r"nobody confirmed 'power OFF' for node 'n5'"):
        await manual(board, timeout_s=0.1).power_off()
    assert board.pending() == {}
    assert not board.confirm("n5")


async def test_boot_device_instruction_and_notify_callback() -> None:
    board = ManualConfirmations()
    told: list[tuple[str, str]] = []

    def operator_does_it_at_once(node: str, text: str) -> None:
        told.append((node, text))
        board.confirm(node)

    driver = ManualDriver(
        "n5",
        ManualSettings(address="10.1.0.5"),
        confirmations=board,
        notify=operator_does_it_at_once,
    )
    await asyncio.wait_for(driver.set_boot_device(BootDevice.PXE, uefi=False), 1)
    assert told and told[0][0] == "n5"
    assert "pxe (legacy BIOS, for the next boot only)" in told[0][1]
    assert await driver.power_state() is PowerState.UNKNOWN
