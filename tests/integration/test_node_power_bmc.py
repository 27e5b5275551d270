"""`plasmaboot node power` as an operator runs it, against the real BMC emulators of the
driver tests: OpenIPMI's ipmi_sim (lanplus, a chassis program recording what the BMC did
to the machine) and sushy-emulator (Redfish over HTTPS, fake systems). The emulators are
started by conftest.py (ipmi_sim, once per run) and test_power_redfish_sushy.py.

Checked: on/off/cycle/status change (or read) the machine behind the BMC, --pxe-once sets
a one-time network boot in the node's firmware mode, every action is an event of the node,
several nodes are driven in one call, a refused password is fatal at once and named by
its field (never printed), and an unreachable BMC is retried within the drivers' bound.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import test_power_ipmi_sim as ipmi_sim
import test_power_redfish_sushy as sushy
import yaml
from power_support import attempts_logged
from typer.testing import CliRunner

from plasmaboot.cli import app
from plasmaboot.inventory import Node, parse_inventory
from plasmaboot.operations.nodes import NodeOperations
from plasmaboot.operations.power import PowerCommand, power_nodes
from plasmaboot.power import PowerDriver, RetryPolicy, driver_for
from plasmaboot.store import open_store

pytestmark = pytest.mark.integration

# sushy-emulator, started for this module by the Redfish driver tests' fixture.
redfish = sushy.emulator

IPMI_ENV, REDFISH_ENV = "PBP_IT_NODE01_BMC_PW", "PBP_IT_NODE02_BMC_PW"
runner = CliRunner()


def inventory() -> dict[str, Any]:
    """node01: ipmi_sim (uefi); node02: sushy-emulator (bios); node03: a Redfish BMC that
    does not answer; node04: an IPMI BMC that does not answer; node05: a manual BMC."""
    bmcs = [
        {"address": "127.0.0.1", "driver": "ipmi", "port": ipmi_sim.SIM_PORT,
         "username": ipmi_sim.USER, "password_env": IPMI_ENV},
        {"address": "localhost", "driver": "redfish", "port": sushy.PORT,
         "username": sushy.USER, "password_env": REDFISH_ENV, "system_id": sushy.SYSTEM_ID,
         "verify_tls": False},
        {"address": "127.0.0.3", "driver": "redfish", "port": sushy.CLOSED_PORT,
         "password_env": REDFISH_ENV, "verify_tls": False},
        {"address": "127.0.0.4", "driver": "ipmi", "port": ipmi_sim.CLOSED_PORT,
         "password_env": IPMI_ENV},
        {"address": "rack 3, U12", "driver": "manual"},
    ]  # fmt: skip
    nodes = [
        {"hostname": f"node0{i}", "macs": [f"52:54:00:00:00:0{i}"], "profile": "control",
         "provisioning_ip": f"10.88.0.{10 + i}", "bootstrap": i <= 3, "bmc": bmc}
        for i, bmc in enumerate(bmcs, start=1)
    ]  # fmt: skip
    nodes[1]["firmware"] = "bios"
    return {
        "cluster": {"name": "bmc", "domain": "bmc.internal"},
        "networks": [{"name": "provisioning", "vlan": 100, "subnet": "10.88.0.0/24"}],
        "server": {"provisioning_ip": "10.88.0.1"},
        "profiles": {"control": {"role": "control-plane", "services": ["chainfire"],
                                 "image": "img"}},
        "images": {"img": {"kernel": "k", "initrd": "i"}},
        "nodes": nodes,
    }  # fmt: skip


@pytest.fixture
def args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(inventory()))
    args = ["-c", str(config), "--state-dir", str(tmp_path / "state")]
    assert runner.invoke(app, ["inventory", "import", *args]).exit_code == 0
    monkeypatch.setenv(IPMI_ENV, ipmi_sim.PASSWORD)
    monkeypatch.setenv(REDFISH_ENV, sushy.PASSWORD)
    return args


def power(args: list[str], *words: str) -> Any:
    result = runner.invoke(app, ["node", "power", *words, *args])
    for secret in (ipmi_sim.PASSWORD, sushy.PASSWORD):
        assert secret not in result.output
    return result


def events(args: list[str], node: str) -> list[dict[str, Any]]:
    listed = runner.invoke(app, ["node", "events", node, "--json", *args[2:]])
    return [e for e in json.loads(listed.stdout) if e["event"].startswith("power-")]


def test_ipmi_on_off_cycle_status_reach_the_machine(
    ipmi_machine: ipmi_sim.Machine, args: list[str]
) -> None:
    assert power(args, "on", "node01").exit_code == 0
    assert ipmi_machine.read("power") == "1"

    off = power(args, "off", "node01")
    assert off.exit_code == 0, off.output
    assert "node01: off (was on) [ipmi 127.0.0.1:17123]" in off.stdout
    assert ipmi_machine.read("power") == "0"

    status = power(args, "status", "node01", "--json")
    assert [(r["node"], r["ok"], r["state"]) for r in json.loads(status.stdout)] == [
        ("node01", True, "off")
    ]

    ipmi_machine.forget_calls()
    cycled = power(args, "cycle", "node01", "--pxe-once")
    assert cycled.exit_code == 0, cycled.output
    assert ipmi_machine.read("boot") == "pxe"
    assert ipmi_machine.read("power") == "1"
    sets = [c for c in ipmi_machine.calls() if c.startswith("set")]
    assert sets.index("set boot pxe") < sets.index("set power 1")

    recorded = events(args, "node01")
    assert [e["event"] for e in recorded] == ["power-on", "power-off", "power-cycle"]
    assert recorded[-1]["detail"] | {"duration_s": 0} == {
        "ok": True, "state": "on", "before": "off", "driver": "ipmi",
        "bmc": "127.0.0.1:17123", "pxe_once": True, "firmware": "uefi", "duration_s": 0,
    }  # fmt: skip


def test_redfish_on_off_and_a_legacy_one_time_boot_for_a_bios_node(
    redfish: sushy.Emulator, args: list[str]
) -> None:
    on = power(args, "on", "node02", "--pxe-once")
    assert on.exit_code == 0, on.output
    assert redfish.system()["PowerState"] == "On"
    boot = redfish.system()["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideMode"]) == (
        "Pxe",
        "Legacy",
    )
    assert "one-time network boot (bios) set" in on.stdout

    assert power(args, "off", "node02").exit_code == 0
    assert redfish.system()["PowerState"] == "Off"
    assert [e["event"] for e in events(args, "node02")] == ["power-on", "power-off"]


def test_several_bmcs_in_one_call(
    ipmi_machine: ipmi_sim.Machine, redfish: sushy.Emulator, args: list[str]
) -> None:
    result = power(args, "cycle", "node01", "node02", "--json")
    assert result.exit_code == 0, result.output
    assert [(r["node"], r["state"], r["driver"]) for r in json.loads(result.stdout)] == [
        ("node01", "on", "ipmi"),
        ("node02", "on", "redfish"),
    ]
    assert ipmi_machine.read("power") == "1"
    assert redfish.system()["PowerState"] == "On"


@pytest.mark.parametrize(
    ("node", "env", "where", "field"),
    [
        ("node01", IPMI_ENV, "127.0.0.1:17123", f"nodes[node01].bmc.password_env ({IPMI_ENV})"),
        ("node02", REDFISH_ENV, "localhost:17180", "nodes[node02].bmc.password_env"),
    ],
)
def test_wrong_password_is_fatal_names_the_field_and_never_the_password(
    ipmi_machine: ipmi_sim.Machine,
    redfish: sushy.Emulator,
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    node: str,
    env: str,
    where: str,
    field: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "pbpWrongPassw0"
    monkeypatch.setenv(env, wrong)
    started = time.monotonic()

    result = power(args, "on", node)

    assert result.exit_code == 1
    assert time.monotonic() - started < 10
    line = result.stdout.strip()
    assert line.startswith(f"{node}: FAILED power on")
    assert where in line and f"nodes[{node}].bmc.username" in line and field in line
    assert f"1 of 1 node(s) failed: {node}" in result.stderr
    assert wrong not in result.output
    assert all(wrong not in r.getMessage() for r in caplog.records)
    assert attempts_logged(caplog) == 1  # refused credentials are never retried
    [event] = events(args, node)
    assert (event["detail"]["ok"], event["detail"]["error_kind"]) == (False, "fatal")
    assert wrong not in json.dumps(event)


def test_unreachable_redfish_bmc_is_retried_within_the_bound_then_named(
    args: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()

    result = power(args, "status", "node03")

    assert result.exit_code == 1
    assert time.monotonic() - started < 30
    line = " ".join(result.stdout.split())
    assert "node03: FAILED power status" in line
    assert f"127.0.0.3:{sushy.CLOSED_PORT}" in line and "after 3 attempts" in line
    assert "bmc.address" in line
    assert attempts_logged(caplog, "power_state") == RetryPolicy().attempts


async def test_unreachable_ipmi_bmc_fails_alone_while_the_others_are_driven(
    ipmi_machine: ipmi_sim.Machine, redfish: sushy.Emulator, args: list[str]
) -> None:
    fast = RetryPolicy(attempts=2, base_delay_s=0.1, max_delay_s=0.2, request_timeout_s=5)

    def power_factory(node: Node) -> PowerDriver:
        assert node.bmc is not None
        return driver_for(node.bmc, node.hostname, retry=fast)

    inv = parse_inventory(inventory())
    store = open_store(Path(args[3]))
    try:
        ops = NodeOperations(inv, store, power=power_factory)
        results = await power_nodes(
            ops, PowerCommand.ON, ["node04", "node01", "node02", "node05"], parallel=4
        )
    finally:
        store.close()

    by_node = {r.node: r for r in results}
    assert (by_node["node01"].ok, by_node["node02"].ok) == (True, True)
    unreachable = by_node["node04"]
    assert (unreachable.ok, unreachable.error_kind) == (False, "retryable")
    assert f"127.0.0.4:{ipmi_sim.CLOSED_PORT}" in (unreachable.error or "")
    assert "after 2 attempts" in (unreachable.error or "")
    manual = by_node["node05"]
    assert (manual.ok, manual.error_kind) == (False, "manual")
    assert "power ON node 'node05' at rack 3, U12" in (manual.instruction or "")
    assert ipmi_machine.read("power") == "1"
