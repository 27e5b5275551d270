"""``firstboot`` as a process: config and TLS problems exit 3 with every error named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from plasmaboot.firstboot.cli import firstboot_command

VALID = {
    "node_id": "node04",
    "node_role": "worker",
    "bootstrap": False,
    "cluster_name": "prod-cluster",
    "leader_url": "https://node01.example.com:2379",
    "raft_addr": "10.0.200.20:2380",
}


def run(config: Path, state: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "plasmaboot.firstboot", "--config", str(config)]
    return subprocess.run(
        [*argv, "--state-dir", str(state)], capture_output=True, text=True, timeout=60
    )


def test_invalid_config_exits_3_with_one_json_error_line_per_problem(tmp_path: Path) -> None:
    config = tmp_path / "cluster-config.json"
    config.write_text(json.dumps({**VALID, "raft_addr": "10.0.200.20", "bootstrap": "no"}))
    result = run(config, tmp_path / "state")
    assert result.returncode == 3
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["level"] for line in lines] == ["ERROR", "ERROR"]
    assert "$.bootstrap" in lines[0]["message"] and "$.raft_addr" in lines[1]["message"]
    assert not (tmp_path / "state").exists()


def test_missing_or_malformed_file_exits_3(tmp_path: Path) -> None:
    assert run(tmp_path / "absent.json", tmp_path).returncode == 3
    broken = tmp_path / "broken.json"
    broken.write_text('{"node_id": "node04",')
    result = run(broken, tmp_path)
    assert result.returncode == 3
    assert "line 1 column" in result.stdout


def test_unreadable_tls_files_exit_3_naming_the_fix(tmp_path: Path) -> None:
    config = tmp_path / "cluster-config.json"
    tls = {
        "enabled": True,
        "ca_cert_path": str(tmp_path / "missing-ca.crt"),
        "node_cert_path": str(tmp_path / "node04.crt"),
        "node_key_path": str(tmp_path / "node04.key"),
    }
    config.write_text(json.dumps({**VALID, "tls": tls}))
    app = typer.Typer()
    app.command()(firstboot_command)
    result = CliRunner().invoke(app, ["--config", str(config), "--state-dir", str(tmp_path)])
    assert result.exit_code == 3
    assert "fix the tls paths" in result.stdout
