"""The CLI as an operator runs it: check, import, list, show, events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plasmaboot.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.mark.parametrize("example", ["plasmacloud", "lab"])
def test_inventory_check_passes_on_shipped_examples(example: str) -> None:
    result = runner.invoke(
        app, ["inventory", "check", "-c", str(ROOT / f"examples/{example}/cluster.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert "OK" in result.output


def test_inventory_check_reports_every_error_of_a_broken_copy(tmp_path: Path) -> None:
    text = (ROOT / "examples/plasmacloud/cluster.yaml").read_text()
    broken = (
        text.replace('macs: ["52:54:00:12:34:57"]', 'macs: ["52:54:00:12:34:56"]')
        .replace("provisioning_ip: 10.0.100.62", "provisioning_ip: 10.0.100.150")
        .replace(
            "profile: worker\n    provisioning_ip: 10.0.100.61",
            "profile: storage\n    provisioning_ip: 10.0.100.61",
        )
    )
    path = tmp_path / "cluster.yaml"
    path.write_text(broken)
    result = runner.invoke(app, ["inventory", "check", "-c", str(path)])
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "3 problem(s)" in output
    for field in ("nodes[1].macs[0]", "nodes[5].provisioning_ip", "nodes[4].profile"):
        assert field in output


def test_import_list_show_events(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path)]
    lab = str(ROOT / "examples/lab/miniature.yaml")
    first = runner.invoke(app, ["inventory", "import", "-c", lab, *state])
    assert first.exit_code == 0 and "added: node01, node02, node03, node04" in first.output
    again = runner.invoke(app, ["inventory", "import", "-c", lab, *state])
    assert "4 unchanged" in again.output and "added" not in again.output

    listed = json.loads(runner.invoke(app, ["node", "list", "--json", *state]).output)
    assert [(n["hostname"], n["state"]) for n in listed] == [
        (f"node0{i}", "enrolled") for i in range(1, 5)
    ]
    shown = json.loads(runner.invoke(app, ["node", "show", "node02", "--json", *state]).output)
    assert shown["macs"] == ["52:54:00:12:34:57"]
    events = json.loads(runner.invoke(app, ["node", "events", "node02", "--json", *state]).output)
    assert [(e["event"], e["to_state"]) for e in events] == [("enroll", "enrolled")]


def test_unknown_node_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["node", "show", "ghost", "--state-dir", str(tmp_path)])
    assert result.exit_code == 1 and "node list" in result.output


def test_node_procedures_refuse_clearly(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path)]
    lab = ["-c", str(ROOT / "examples/lab/miniature.yaml")]
    runner.invoke(app, ["inventory", "import", *lab, *state])
    refused = runner.invoke(app, ["node", "maintenance", "node01", *lab, *state])
    assert refused.exit_code == 1
    message = " ".join(refused.output.split())
    assert "refused" in message and "enrolled" in message
    no_bmc = runner.invoke(app, ["node", "provision", "node01", *lab, *state, "--watch", "0"])
    assert no_bmc.exit_code == 1 and "no bmc" in " ".join(no_bmc.output.split())
    decommissioned = runner.invoke(app, ["node", "decommission", "node02", *lab, *state])
    assert decommissioned.exit_code == 0, decommissioned.output
    shown = json.loads(runner.invoke(app, ["node", "show", "node02", "--json", *state]).output)
    assert shown["state"] == "decommissioned"
