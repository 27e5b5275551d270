"""`plasmaboot agent` is the same program as `python3 -m plasmaboot.agent`: same options,
same exit codes (2: bad command line, nothing sent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_agent_facts import build_machine

from plasmaboot.agent import facts


def plasmaboot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plasmaboot", *args], capture_output=True, text=True, timeout=60
    )


def test_the_cli_command_passes_its_arguments_to_the_agent(tmp_path: Path) -> None:
    sys_root, proc_root = build_machine(tmp_path)
    result = plasmaboot(
        "agent", "--print-facts", "--sys-root", str(sys_root), "--proc-root", str(proc_root)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == facts.collect(sys_root, proc_root)


def test_the_cli_help_is_the_agents(tmp_path: Path) -> None:
    result = plasmaboot("agent", "--help")
    assert result.returncode == 0
    assert "usage: plasmaboot agent" in result.stdout and "--session-file" in result.stdout
    assert "2 bad command line" in " ".join(result.stdout.split())


def test_bad_command_lines_exit_2(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("BOOT_IMAGE=/vmlinuz root=/dev/sda1 plasmaboot.token=secret-boot\n")
    result = plasmaboot("agent", "--cmdline", str(cmdline))
    assert result.returncode == 2
    assert result.stdout == (
        f"plasmaboot-agent: bad command line: no plasmaboot.url= on the kernel command line "
        f"({cmdline})\n"
    )
    cmdline.write_text("plasmaboot.url=http://127.0.0.1:9 plasmaboot.token=t plasmaboot.stage=x\n")
    result = plasmaboot("agent", "--cmdline", str(cmdline))
    assert result.returncode == 2 and "plasmaboot.stage=x is not an installer boot" in result.stdout
    wrong_options = (["--attempts", "0"], ["--retry-delay", "-1"], ["--timeout", "inf"],
                     ["--retry-delay", "nan"], ["--no-such-option"])  # fmt: skip
    for wrong in wrong_options:
        result = plasmaboot("agent", "--cmdline", str(cmdline), *wrong)
        assert result.returncode == 2 and "usage: plasmaboot agent" in result.stderr, wrong
