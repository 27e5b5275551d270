"""`plasmaboot node drain` with real drain commands (shell scripts standing in for the
operator's evacuate-and-leave-the-load-balancer step): one that succeeds, one that fails,
one that sleeps past the deadline; their output in the node's events, the states after."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from plasmaboot.cli import app
from plasmaboot.inventory import parse_inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.operations.nodes import NodeOperations, OperationError
from plasmaboot.store import SqliteStore, open_store

ROOT = Path(__file__).resolve().parents[2]
TO_ACTIVE = (Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALLED, Event.FIRST_BOOT,
             Event.JOINED)  # fmt: skip
runner = CliRunner()

SCRIPTS = {
    "evacuate-ok": 'echo "evacuating VMs of $1 ($2)"\necho "left the load balancer"\nexit 0\n',
    "evacuate-fails": 'echo "moving vm-7 off $1"\necho "no capacity left for vm-7" >&2\nexit 3\n',
    "evacuate-hangs": 'echo "waiting for vm-7 to stop"\nexec sleep 30\n',
}


def script(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + SCRIPTS[name])
    path.chmod(0o755)
    return str(path)


def inventory_data(command: str | None, timeout_s: int = 30) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples/lab/cluster.yaml").read_text())
    if command is not None:
        data["server"]["drain"] = {"command": command, "timeout_s": timeout_s}
    return data


def operations(tmp_path: Path, command: str | None, timeout_s: int = 30) -> NodeOperations:
    inv = parse_inventory(inventory_data(command, timeout_s))
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(inv)
    for event in TO_ACTIVE:
        store.transition("node01", event, "test")
    return NodeOperations(inv, store)


def state(ops: NodeOperations, name: str = "node01") -> State:
    record = ops.store.get_node(name)
    assert record is not None
    return record.state


def drain_events(ops: NodeOperations) -> list[tuple[str, dict[str, Any]]]:
    events = ops.store.events("node01")
    start = max(i for i, e in enumerate(events) if e.event == "drain")
    return [(e.event, e.detail) for e in events[start:]]


async def test_a_drain_command_that_succeeds_reaches_maintenance(tmp_path: Path) -> None:
    ops = operations(tmp_path, f"{script(tmp_path, 'evacuate-ok')} {{node}} {{ip}}")

    await ops.drain("node01")

    assert state(ops) is State.MAINTENANCE
    events = drain_events(ops)
    assert [name for name, _ in events] == ["drain", "drain-output", "drained"]
    assert events[1][1]["lines"] == [
        "evacuating VMs of node01 (10.77.0.50)",
        "left the load balancer",
    ]
    assert events[2][1]["returncode"] == 0

    ops.activate("node01")
    assert state(ops) is State.ACTIVE


async def test_a_drain_command_that_fails_leaves_the_node_active(tmp_path: Path) -> None:
    ops = operations(tmp_path, f"{script(tmp_path, 'evacuate-fails')} {{node}}")

    with pytest.raises(OperationError, match="exited with status 3; the node is active again"):
        await ops.drain("node01")

    assert state(ops) is State.ACTIVE
    events = drain_events(ops)
    assert [name for name, _ in events] == ["drain", "drain-output", "drain-failed", "activate"]
    assert events[1][1]["lines"] == ["moving vm-7 off node01", "no capacity left for vm-7"]
    failed = events[2][1]
    assert (failed["returncode"], failed["timed_out"]) == (3, False)
    assert failed["tail"][-1] == "no capacity left for vm-7"
    assert events[3][1]["reason"] == "drain failed"


async def test_a_drain_command_past_its_deadline_is_killed(tmp_path: Path) -> None:
    ops = operations(tmp_path, script(tmp_path, "evacuate-hangs"), timeout_s=1)
    started = time.monotonic()

    with pytest.raises(OperationError, match=r"did not finish within 1 s \(server.drain"):
        await ops.drain("node01")

    assert time.monotonic() - started < 10
    assert state(ops) is State.ACTIVE
    events = drain_events(ops)
    assert [name for name, _ in events] == ["drain", "drain-output", "drain-failed", "activate"]
    lines = [line for name, detail in events if name == "drain-output" for line in detail["lines"]]
    assert lines == ["waiting for vm-7 to stop", "plasmaboot: drain timed out after 1s; killed"]
    assert events[2][1]["timed_out"] is True


async def test_a_missing_drain_program_is_named(tmp_path: Path) -> None:
    ops = operations(tmp_path, str(tmp_path / "no-such-evacuate") + " {node}")

    with pytest.raises(OperationError, match="could not be started") as failure:
        await ops.drain("node01")

    assert "no-such-evacuate" in str(failure.value)
    assert "server.drain.command" in str(failure.value)
    assert state(ops) is State.ACTIVE


async def test_without_a_drain_command_the_node_is_only_marked(tmp_path: Path) -> None:
    said: list[str] = []
    ops = operations(tmp_path, None)
    ops.log = said.append

    await ops.drain("node01")

    assert state(ops) is State.MAINTENANCE
    assert [name for name, _ in drain_events(ops)] == ["drain", "drained"]
    assert any("no server.drain.command" in line and "nothing was moved" in line for line in said)


async def test_a_node_already_draining_is_refused(tmp_path: Path) -> None:
    ops = operations(tmp_path, f"{script(tmp_path, 'evacuate-ok')} {{node}}")
    ops.store.transition("node01", Event.DRAIN, "test")

    with pytest.raises(OperationError, match="already draining"):
        await ops.drain("node01")
    assert state(ops) is State.DRAINING


async def test_decommission_stops_when_the_drain_fails(tmp_path: Path) -> None:
    ops = operations(tmp_path, script(tmp_path, "evacuate-fails"))

    with pytest.raises(OperationError, match="drain command exited with status 3"):
        await ops.decommission("node01")
    assert state(ops) is State.ACTIVE


def test_cli_drain_prints_the_reason_and_activate_reverses_it(tmp_path: Path) -> None:
    for name in ("evacuate-ok", "evacuate-fails"):
        script(tmp_path, name)
    config = tmp_path / "cluster.yaml"
    args = ["-c", str(config), "--state-dir", str(tmp_path / "state")]

    def with_command(name: str) -> None:
        config.write_text(yaml.safe_dump(inventory_data(f"{tmp_path / name} {{node}}")))

    with_command("evacuate-fails")
    assert runner.invoke(app, ["inventory", "import", *args]).exit_code == 0
    store = open_store(tmp_path / "state")
    for event in TO_ACTIVE:
        store.transition("node01", event, "test")
    store.close()

    failed = runner.invoke(app, ["node", "drain", "node01", *args])
    assert failed.exit_code == 1
    said = " ".join(failed.stderr.split())
    assert "failed: node01: the drain command exited with status 3" in said

    with_command("evacuate-ok")
    drained = runner.invoke(app, ["node", "drain", "node01", *args])
    assert drained.exit_code == 0, drained.output
    shown = runner.invoke(app, ["node", "show", "node01", "--json", *args[2:]])
    assert '"state": "maintenance"' in shown.stdout

    activated = runner.invoke(app, ["node", "activate", "node01", *args])
    assert activated.exit_code == 0
    shown = runner.invoke(app, ["node", "show", "node01", "--json", *args[2:]])
    assert '"state": "active"' in shown.stdout
