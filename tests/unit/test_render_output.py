"""The writer (atomic, 0600 secrets, unchanged files untouched) and the render command."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from plasmaboot.render.cli import render_command
from plasmaboot.render.output import is_secret, write_files

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secrets_are_0600_and_the_rest_0644(tmp_path: Path) -> None:
    write_files(
        tmp_path,
        {"a/cluster-config.json": "{}", "pki/node01.key": b"k", "dhcpd.conf": "x", "secrets/s": ""},
    )
    assert mode(tmp_path / "a/cluster-config.json") == 0o600
    assert mode(tmp_path / "pki/node01.key") == 0o600
    assert mode(tmp_path / "secrets/s") == 0o600
    assert mode(tmp_path / "dhcpd.conf") == 0o644


def test_key_names_are_secret() -> None:
    assert is_secret("node01-key.pem")
    assert not is_secret("node01-cert.pem")


def test_unchanged_files_are_not_rewritten(tmp_path: Path) -> None:
    first = write_files(tmp_path, {"x.conf": "one\n", "y.conf": "two\n"})
    inode = (tmp_path / "x.conf").stat().st_ino
    second = write_files(tmp_path, {"x.conf": "one\n", "y.conf": "changed\n"})
    assert first.written == ["x.conf", "y.conf"]
    assert second.unchanged == ["x.conf"] and second.written == ["y.conf"]
    assert (tmp_path / "x.conf").stat().st_ino == inode
    assert (tmp_path / "y.conf").read_text() == "changed\n"


def test_a_wrong_mode_is_repaired(tmp_path: Path) -> None:
    target = tmp_path / "n" / "cluster-config.json"
    target.parent.mkdir()
    target.write_text("{}")
    os.chmod(target, 0o644)
    assert write_files(tmp_path, {"n/cluster-config.json": "{}"}).written == [
        "n/cluster-config.json"
    ]
    assert mode(target) == 0o600


def test_no_temp_files_are_left_behind(tmp_path: Path) -> None:
    write_files(tmp_path, {"d/a": "1", "d/b": "2"})
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["a", "b"]


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/../../b"])
def test_paths_outside_the_output_are_refused_before_writing(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="outside the output directory"):
        write_files(tmp_path / "out", {"ok.conf": "x", bad: "y"})
    assert not (tmp_path / "out").exists()


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("render")(render_command)

    @app.callback()
    def main() -> None:
        """Test app registering only the render command."""

    return app


def test_render_command_writes_all_targets_then_reports_them_unchanged(tmp_path: Path) -> None:
    args = ["render", "all", "-c", str(EXAMPLES / "lab" / "cluster.yaml"), "-o", str(tmp_path)]
    first = CliRunner().invoke(_app(), args)
    assert first.exit_code == 0, first.output
    assert (tmp_path / "dhcpd" / "dhcpd.conf").is_file()
    assert mode(tmp_path / "cluster-config" / "node01" / "cluster-config.json") == 0o600
    second = CliRunner().invoke(_app(), args)
    assert " 0 file(s) written" in second.output


def test_a_broken_inventory_fails_before_anything_is_written(tmp_path: Path) -> None:
    broken = tmp_path / "cluster.yaml"
    text = (EXAMPLES / "lab" / "cluster.yaml").read_text()
    broken.write_text(text.replace("provisioning_ip: 10.77.0.51", "provisioning_ip: 10.77.0.50"))
    out = tmp_path / "out"
    result = CliRunner().invoke(_app(), ["render", "all", "-c", str(broken), "-o", str(out)])
    assert result.exit_code == 1
    assert "nodes[1].provisioning_ip" in result.output
    assert not out.exists()


def test_an_unknown_target_exits_2_naming_the_choices(tmp_path: Path) -> None:
    args = ["render", "bind", "-c", str(EXAMPLES / "lab" / "cluster.yaml"), "-o", str(tmp_path)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2
    assert "zones" in result.output
