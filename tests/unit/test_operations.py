"""Runbook procedures as lifecycle actions: drain/maintenance/activate, refusals that change
nothing, and the rolling update with real subprocesses (stop at the first failure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from plasmaboot.inventory import load_inventory
from plasmaboot.lifecycle import Event, IllegalTransition, State
from plasmaboot.operations.nodes import NodeOperations, OperationError
from plasmaboot.operations.rollout import HealthGate, Rollout
from plasmaboot.store import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
TO_ACTIVE = (Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALLED, Event.FIRST_BOOT,
             Event.JOINED)  # fmt: skip


@pytest.fixture
def ops(tmp_path: Path) -> NodeOperations:
    inv = load_inventory(ROOT / "examples/lab/miniature.yaml")
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(inv)
    for name in ("node01", "node02", "node03"):
        for event in TO_ACTIVE:
            store.transition(name, event, "test")
    return NodeOperations(inv, store, poll_s=0.01)


def state(ops: NodeOperations, name: str) -> State:
    record = ops.store.get_node(name)
    assert record is not None
    return record.state


async def test_drain_then_activate(ops: NodeOperations) -> None:
    await ops.drain("node01")
    assert state(ops, "node01") is State.MAINTENANCE
    assert [e.event for e in ops.store.events("node01")][-2:] == ["drain", "drained"]
    ops.activate("node01")
    assert state(ops, "node01") is State.ACTIVE


def test_maintenance_of_a_node_that_never_joined_is_refused(ops: NodeOperations) -> None:
    before = ops.store.events("node04")
    with pytest.raises(IllegalTransition, match="enrolled"):
        ops.maintenance("node04")
    assert ops.store.events("node04") == before


async def test_provision_refuses_a_confirmed_install(ops: NodeOperations) -> None:
    with pytest.raises(OperationError, match="reprovision"):
        await ops.provision("node01")


async def test_provision_without_a_bmc_names_the_fix(ops: NodeOperations) -> None:
    with pytest.raises(OperationError, match="no bmc"):
        await ops.provision("node04")
    assert state(ops, "node04") is State.ENROLLED


async def test_decommission_without_bmc_keeps_history(ops: NodeOperations) -> None:
    await ops.decommission("node02")
    assert state(ops, "node02") is State.DECOMMISSIONED
    events = [e.event for e in ops.store.events("node02")]
    assert events[:6] == ["enroll", *[e.value for e in TO_ACTIVE]]
    assert events[-3:] == ["drain", "drained", "decommission"]


async def test_watch_stops_on_a_failed_state(ops: NodeOperations) -> None:
    ops.store.transition("node04", Event.PXE_BOOT, "test")
    ops.store.transition("node04", Event.FAIL, "test")
    final = await ops.watch(["node04"], State.ACTIVE, 5)
    assert final == {"node04": State.BOOT_FAILED}


async def test_rollout_updates_one_at_a_time_and_stops_at_the_first_failure(
    ops: NodeOperations, tmp_path: Path
) -> None:
    log = tmp_path / "order"
    update = f"sh -c 'echo {{node}} >> {log}; test {{node}} != node02'"
    result = await Rollout(ops, update).run(["node01", "node02", "node03"])
    assert result.updated == ["node01"] and result.failed == "node02"
    assert result.not_started == ["node03"]
    assert log.read_text().split() == ["node01", "node02"]
    assert state(ops, "node01") is State.ACTIVE
    assert state(ops, "node02") is State.DRAINING  # left for the operator to decide
    assert state(ops, "node03") is State.ACTIVE
    assert ops.store.events("node02")[-1].event == "rollout-update"


async def test_rollout_is_health_gated(ops: NodeOperations) -> None:
    gate = HealthGate(ops, "false", timeout_s=0.3, poll_s=0.1)
    result = await Rollout(ops, "true", gate).run(["node01", "node02"])
    assert result.failed == "node01" and "health check" in result.reason
    assert state(ops, "node02") is State.ACTIVE


async def test_rollout_refuses_a_node_that_is_not_active(ops: NodeOperations) -> None:
    with pytest.raises(OperationError, match="not active"):
        await Rollout(ops, "true").run(["node04"])
