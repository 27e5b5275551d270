"""`plasmaboot node power` without a BMC: argument validation, unknown names, the manual
driver, the firmware mode chosen for the one-time boot, the concurrency bound and the
events recorded. The drivers themselves meet real BMC emulators in
tests/integration/test_node_power_bmc.py."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from plasmaboot.cli import app
from plasmaboot.inventory import Inventory, Node, parse_inventory
from plasmaboot.inventory.loader import InventoryError
from plasmaboot.operations.nodes import NodeOperations, OperationError, unknown_names
from plasmaboot.operations.power import PowerCommand, check_request, power_nodes
from plasmaboot.power import (
    BadCredentialsError,
    BootDevice,
    PowerDriver,
    PowerState,
    driver_for,
)
from plasmaboot.power.base import DriverSettings
from plasmaboot.store import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
SECRET = "pbp-unit-Secr3t-power"
runner = CliRunner()


def inventory_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples/lab/cluster.yaml").read_text())
    nodes = data["nodes"]
    nodes[0]["bmc"] = {"address": "10.9.0.1", "driver": "ipmi", "password_env": "PBP_N1_PW"}
    nodes[1]["bmc"] = {"address": "10.9.0.2", "driver": "redfish", "password_env": "PBP_N2_PW"}
    nodes[1]["firmware"] = "bios"
    nodes[2]["bmc"] = {"address": "rack 3, U12", "driver": "manual"}
    return data


class FakeSettings(DriverSettings):
    address: str


class FakeDriver(PowerDriver):
    """Records what it was asked; `running` counts the calls in flight at once."""

    name: ClassVar[str] = "fake"
    running = 0
    most_at_once = 0

    def __init__(self, node: str, state: PowerState = PowerState.OFF) -> None:
        super().__init__(node, FakeSettings(address="10.9.0.9"))
        self.state = state
        self.calls: list[Any] = []

    async def _step(self, call: Any) -> None:
        FakeDriver.running += 1
        FakeDriver.most_at_once = max(FakeDriver.most_at_once, FakeDriver.running)
        self.calls.append(call)
        await asyncio.sleep(0.02)
        FakeDriver.running -= 1

    async def power_on(self) -> None:
        await self._step("on")
        self.state = PowerState.ON

    async def power_off(self) -> None:
        await self._step("off")
        self.state = PowerState.OFF

    async def power_cycle(self) -> None:
        await self._step("cycle")
        self.state = PowerState.ON

    async def power_state(self) -> PowerState:
        return self.state

    async def set_boot_device(
        self, device: BootDevice, persistent: bool = False, uefi: bool = True
    ) -> None:
        await self._step((device, persistent, uefi))


@pytest.fixture
def inv() -> Inventory:
    return parse_inventory(inventory_data())


@pytest.fixture
def drivers() -> dict[str, FakeDriver]:
    FakeDriver.running = FakeDriver.most_at_once = 0
    return {}


@pytest.fixture
def ops(inv: Inventory, tmp_path: Path, drivers: dict[str, FakeDriver]) -> NodeOperations:
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(inv)

    def power(node: Node) -> PowerDriver:
        assert node.bmc is not None
        if node.bmc.driver == "manual":
            return driver_for(node.bmc, node.hostname)
        return drivers.setdefault(node.hostname, FakeDriver(node.hostname))

    return NodeOperations(inv, store, power=power)


@pytest.mark.parametrize("action", [PowerCommand.OFF, PowerCommand.STATUS])
def test_pxe_once_only_goes_with_on_or_cycle(action: PowerCommand) -> None:
    with pytest.raises(OperationError, match=f"--pxe-once .* not with `power {action.value}`"):
        check_request(action, pxe_once=True, parallel=4)
    check_request(PowerCommand.ON, pxe_once=True, parallel=4)
    check_request(PowerCommand.CYCLE, pxe_once=True, parallel=4)


@pytest.mark.parametrize("parallel", [0, 65])
def test_parallel_is_bounded(parallel: int) -> None:
    with pytest.raises(OperationError, match="--parallel must be between 1 and 64"):
        check_request(PowerCommand.ON, pxe_once=False, parallel=parallel)


def test_unknown_names_are_listed_at_once_with_the_closest_known() -> None:
    known = ["node01", "node02", "node03", "gateway"]
    assert unknown_names(["node01", "nod02", "zzz", "nod02"], known) == [
        "nod02 (did you mean node02 or node03 or node01?)",
        "zzz",
    ]


async def test_unknown_nodes_refuse_the_whole_request(
    ops: NodeOperations, drivers: dict[str, FakeDriver]
) -> None:
    with pytest.raises(OperationError) as refused:
        await power_nodes(ops, PowerCommand.OFF, ["node01", "node1", "nodeXX"])
    assert "node1 (did you mean node01" in str(refused.value)
    assert "nodeXX" in str(refused.value) and "nothing was done" in str(refused.value)
    assert drivers == {}
    assert [e.event for e in ops.store.events("node01")] == ["enroll"]


async def test_on_with_pxe_once_uses_each_nodes_firmware_and_records_an_event(
    ops: NodeOperations, drivers: dict[str, FakeDriver]
) -> None:
    results = await power_nodes(ops, PowerCommand.ON, ["node01", "node02"], pxe_once=True)

    assert [(r.node, r.ok, r.state, r.before, r.firmware) for r in results] == [
        ("node01", True, "on", "off", "uefi"),
        ("node02", True, "on", "off", "bios"),
    ]
    assert drivers["node01"].calls == [(BootDevice.PXE, False, True), "on"]
    assert drivers["node02"].calls == [(BootDevice.PXE, False, False), "on"]
    event = ops.store.events("node02")[-1]
    assert event.event == "power-on" and event.actor == "operator"
    assert event.detail["ok"] is True and event.detail["firmware"] == "bios"
    assert event.from_state == event.to_state == "enrolled"  # a record, not a transition
    assert "node02: on (was off; one-time network boot (bios) set)" in results[1].line()


async def test_status_reads_and_records_nothing(
    ops: NodeOperations, drivers: dict[str, FakeDriver]
) -> None:
    drivers["node01"] = FakeDriver("node01", PowerState.ON)
    [result] = await power_nodes(ops, PowerCommand.STATUS, ["node01"])
    assert (result.ok, result.state) == (True, "on")
    assert [e.event for e in ops.store.events("node01")] == ["enroll"]


async def test_power_on_of_a_machine_already_on_says_so(
    ops: NodeOperations, drivers: dict[str, FakeDriver]
) -> None:
    drivers["node01"] = FakeDriver("node01", PowerState.ON)
    [result] = await power_nodes(ops, PowerCommand.ON, ["node01"])
    assert result.ok and "already on, nothing sent" in result.line()


async def test_at_most_parallel_nodes_at_once(
    ops: NodeOperations, drivers: dict[str, FakeDriver]
) -> None:
    names = ["node01", "node02"]
    await power_nodes(ops, PowerCommand.CYCLE, names, parallel=1)
    assert FakeDriver.most_at_once == 1
    FakeDriver.most_at_once = 0
    for driver in drivers.values():
        driver.state = PowerState.OFF
    await power_nodes(ops, PowerCommand.ON, names, parallel=2)
    assert FakeDriver.most_at_once == 2


async def test_manual_bmc_fails_with_the_instruction_and_status_is_unknown(
    ops: NodeOperations,
) -> None:
    [cycle] = await power_nodes(ops, PowerCommand.CYCLE, ["node03"], pxe_once=True)
    assert not cycle.ok and cycle.error_kind == "manual"
    assert cycle.instruction == (
        "Operator: set the boot device to pxe (UEFI, for the next boot only), then "
        "power-cycle (off, then on) node 'node03' at rack 3, U12"
    )
    assert "plasmaboot did nothing" in cycle.line()
    assert ops.store.events("node03")[-1].detail["error_kind"] == "manual"

    [status] = await power_nodes(ops, PowerCommand.STATUS, ["node03"])
    assert (status.ok, status.state) == (True, "unknown")


async def test_a_node_without_bmc_fails_alone(
    ops: NodeOperations, drivers: dict[str, FakeDriver]
) -> None:
    results = await power_nodes(ops, PowerCommand.OFF, ["node04", "node01"])
    assert [r.ok for r in results] == [False, True]
    assert "add nodes[node04].bmc" in (results[0].error or "")


async def test_refused_credentials_name_the_password_source_not_the_password(
    ops: NodeOperations,
) -> None:
    class Refusing(FakeDriver):
        async def power_state(self) -> PowerState:
            raise BadCredentialsError(
                "BMC 10.9.0.1:623 of node 'node01' rejected user 'admin'; check "
                "nodes[node01].bmc.username and its password source"
            )

    ops.power = lambda node: Refusing(node.hostname)
    [result] = await power_nodes(ops, PowerCommand.ON, ["node01"])
    assert result.error_kind == "fatal"
    assert "nodes[node01].bmc.password_env (PBP_N1_PW)" in (result.error or "")


def test_firmware_must_be_bios_or_uefi_and_the_error_names_the_field() -> None:
    data = inventory_data()
    data["nodes"][0]["firmware"] = "efi"
    data["profiles"]["worker"]["firmware"] = "legacy"
    with pytest.raises(InventoryError) as failure:
        parse_inventory(data)
    text = str(failure.value)
    assert "nodes[0].firmware = 'efi'" in text and "'bios' or 'uefi'" in text
    assert "profiles.worker.firmware = 'legacy'" in text


def test_firmware_defaults_to_the_profile_then_uefi() -> None:
    data = inventory_data()
    data["profiles"]["worker"]["firmware"] = "bios"
    inv = parse_inventory(data)
    modes = {n.hostname: inv.firmware_of(n) for n in inv.nodes}
    assert modes == {"node01": "uefi", "node02": "bios", "node03": "uefi", "node04": "bios"}


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("evacuate {node} {flake}", "unknown placeholder(s) ['flake']"),
        ("evacuate {ip:>9}", "unknown placeholder(s) ['ip:>9']"),
        ("evacuate 'unclosed", "No closing quotation"),
        ("", "empty command"),
    ],
)
def test_drain_command_is_checked_at_load(command: str, message: str) -> None:
    data = inventory_data()
    data["server"]["drain"] = {"command": command}
    with pytest.raises(InventoryError) as failure:
        parse_inventory(data)
    assert "server.drain.command" in str(failure.value)
    assert message in str(failure.value)


def test_drain_timeout_must_be_positive() -> None:
    data = inventory_data()
    data["server"]["drain"] = {"command": "true", "timeout_s": 0}
    with pytest.raises(InventoryError, match=r"server\.drain\.timeout_s"):
        parse_inventory(data)


def write_inventory(tmp_path: Path) -> list[str]:
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(inventory_data()))
    state = ["-c", str(config), "--state-dir", str(tmp_path / "state")]
    imported = runner.invoke(app, ["inventory", "import", *state])
    assert imported.exit_code == 0, imported.output
    return state


def test_cli_refuses_bad_arguments_before_touching_a_bmc(tmp_path: Path) -> None:
    state = write_inventory(tmp_path)
    result = runner.invoke(app, ["node", "power", "off", "node01", "--pxe-once", *state])
    assert result.exit_code == 1 and "--pxe-once" in result.stderr

    result = runner.invoke(app, ["node", "power", "reboot", "node01", *state])
    assert result.exit_code == 2 and "reboot" in result.stderr

    result = runner.invoke(app, ["node", "power", "status", "node1", "node9x", *state])
    assert result.exit_code == 1
    assert "node1 (did you mean node01" in result.stderr and "node9x" in result.stderr


def test_cli_missing_password_is_a_per_node_failure_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = write_inventory(tmp_path)
    monkeypatch.delenv("PBP_N1_PW", raising=False)
    monkeypatch.setenv("PBP_N2_PW", SECRET)
    result = runner.invoke(app, ["node", "power", "on", "node01", "node03", "--json", *state])
    assert result.exit_code == 1
    assert SECRET not in result.output
    by_node = {r["node"]: r for r in json.loads(result.stdout)}
    assert "nodes[node01].bmc.password_env" in by_node["node01"]["error"]
    assert by_node["node01"]["error_kind"] == "fatal"
    assert by_node["node03"]["error_kind"] == "manual"
    assert "2 of 2 node(s) failed: node01, node03" in result.stderr
    shown = runner.invoke(app, ["node", "show", "node01", *state[2:]])
    assert "power-on failed" in " ".join(shown.stdout.split())
