"""InstallRunner with real child processes (python and sh stand in for nixos-anywhere)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from plasmaboot.install import (
    DEFAULT_INSTALL_COMMAND,
    InstallResult,
    InstallRunner,
    render_argv,
    split_command,
)

PY = sys.executable


def process_is_gone(pid: int) -> bool:
    """True once the pid has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


async def wait_gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while not process_is_gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def test_default_command_renders_to_nixos_anywhere_argv() -> None:
    variables = {"node": "n1", "ip": "10.0.0.5", "flake": "/srv/cluster", "extra_files": "/f"}
    argv = render_argv(DEFAULT_INSTALL_COMMAND, variables)
    assert argv == [
        "nixos-anywhere", "--extra-files", "/f", "--flake", "/srv/cluster#n1", "root@10.0.0.5"
    ]  # fmt: skip


def test_values_stay_one_argument_and_never_reach_a_shell() -> None:
    argv = render_argv(["installer", "--name={node}"], {"node": "x; rm -rf / --force"})
    assert argv == ["installer", "--name=x; rm -rf / --force"]


def test_split_command_follows_posix_quoting() -> None:
    assert split_command("nixos-anywhere --flake '{flake}#{node}' root@{ip}") == [
        "nixos-anywhere",
        "--flake",
        "{flake}#{node}",
        "root@{ip}",
    ]
    with pytest.raises(ValueError, match="install_command: cannot split"):
        split_command("installer 'unterminated")
    with pytest.raises(ValueError, match="install_command: empty"):
        split_command("   ")


@pytest.mark.parametrize("element", ["{host}", "{ip.real}", "{ip:>20}", "{ip!r}", "{0}"])
def test_unknown_or_fancy_placeholders_are_rejected_with_the_fix(element: str) -> None:
    with pytest.raises(ValueError, match=r"use \{node\}, \{ip\}, \{flake\} or \{extra_files\}"):
        render_argv(["installer", element], {"node": "n1", "ip": "10.0.0.5", "flake": "f"})


def test_missing_value_and_literal_braces() -> None:
    with pytest.raises(ValueError, match=r"no value for \{flake\}"):
        render_argv(["installer", "{flake}"], {"node": "n1"})
    assert render_argv(["echo", "{{node}}={node}"], {"node": "n1"}) == ["echo", "{node}=n1"]


@pytest.mark.parametrize(("concurrent", "timeout"), [(0, 10.0), (1, 0.0)])
def test_runner_rejects_nonsense_limits(concurrent: int, timeout: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        InstallRunner(max_concurrent=concurrent, timeout_s=timeout)


async def test_output_is_streamed_line_by_line_while_the_installer_runs() -> None:
    script = (
        "import sys, time\n"
        "for i in range(3):\n"
        "    print('step', i, 'on', sys.argv[1], 'at', sys.argv[2], flush=True)\n"
        "    time.sleep(0.3)\n"
    )
    seen: list[tuple[float, str]] = []
    started = time.monotonic()

    result = await InstallRunner(max_concurrent=1, timeout_s=30).run(
        "n1",
        [PY, "-c", script, "{node}", "{ip}"],
        {"ip": "10.0.0.5", "flake": "unused"},
        lambda line: seen.append((time.monotonic() - started, line)),
    )

    assert result.ok and result.returncode == 0 and not result.timed_out
    assert [line for _, line in seen] == [f"step {i} on n1 at 10.0.0.5" for i in range(3)]
    assert seen[0][0] < result.duration_s - 0.4, "first line arrived only at the end"
    assert result.tail == [line for _, line in seen]


async def test_stdin_reaches_the_command_and_never_its_argv() -> None:
    """A secret (a node key on its way) goes in on stdin: argv is logged and shown by ps."""
    secret = b"-----BEGIN PRIVATE KEY-----\n" * 5000  # more than a pipe buffer
    lines: list[str] = []

    result = await InstallRunner(max_concurrent=1, timeout_s=30).run(
        "n1", ["sh", "-c", "wc -c; echo args: $#"], {}, lines.append, stdin=secret
    )

    assert result.ok, result.tail
    assert [line.strip() for line in lines] == [str(len(secret)), "args: 0"]


async def test_failure_reports_returncode_and_only_the_tail() -> None:
    # No braces in the script: they would be read as placeholders.
    script = "import sys\nfor i in range(100): print('line', i)\nsys.exit(3)\n"
    lines: list[str] = []

    result = await InstallRunner(max_concurrent=1, timeout_s=30, tail_lines=10).run(
        "n1", [PY, "-c", script], {}, lines.append
    )

    assert (result.ok, result.returncode, result.timed_out) == (False, 3, False)
    assert result.tail == [f"line {i}" for i in range(90, 100)]
    assert len(lines) == 100


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = f"sleep 300 & echo $! > {pid_file}; echo started; wait"

    result = await InstallRunner(max_concurrent=1, timeout_s=1.0, kill_grace_s=0.5).run(
        "n1", ["sh", "-c", script], {}, lambda _: None
    )

    assert result.timed_out and not result.ok
    assert result.returncode is not None and result.returncode < 0
    assert result.tail[0] == "started"
    assert "timed out after 1s" in result.tail[-1]
    assert 1.0 <= result.duration_s < 5
    assert await wait_gone(int(pid_file.read_text())), "the installer's child survived"


async def test_a_leftover_child_holding_the_output_does_not_hang_the_run(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "leftover.pid"
    script = f"sleep 300 & echo $! > {pid_file}; echo installed"

    result = await InstallRunner(max_concurrent=1, timeout_s=20, kill_grace_s=0.5).run(
        "n1", ["sh", "-c", script], {}, lambda _: None
    )

    assert result.ok and result.tail == ["installed"]
    assert result.duration_s < 5
    assert await wait_gone(int(pid_file.read_text()))


async def test_concurrency_is_bounded() -> None:
    # each child runs 1 s: long enough that start-up skew never hides the overlap
    script = "import time\nprint('start', flush=True)\ntime.sleep(1.0)\nprint('end', flush=True)\n"
    active = 0
    peak = 0

    def track(line: str) -> None:
        nonlocal active, peak
        active += 1 if line == "start" else -1
        peak = max(peak, active)

    runner = InstallRunner(max_concurrent=2, timeout_s=30)
    results = await asyncio.gather(
        *(runner.run(f"n{i}", [PY, "-c", script], {}, track) for i in range(5))
    )

    assert all(r.ok for r in results)
    assert peak == 2


async def test_a_missing_installer_fails_cleanly() -> None:
    result = await InstallRunner(max_concurrent=1, timeout_s=5).run(
        "n1", ["pbp-no-such-installer", "{node}"], {}, lambda _: None
    )
    assert result == InstallResult(False, None, result.tail, result.duration_s, False)
    assert "pbp-no-such-installer" in result.tail[0]
    assert "install_command" in result.tail[0]


async def test_a_failing_output_callback_does_not_abort_the_install() -> None:
    def broken(line: str) -> None:
        raise RuntimeError("event store down")

    result = await InstallRunner(max_concurrent=1, timeout_s=10).run(
        "n1", [PY, "-c", "print('a'); print('b')"], {}, broken
    )
    assert result.ok and result.tail == ["a", "b"]


async def test_an_overlong_line_arrives_in_pieces() -> None:
    script = "import sys\nsys.stdout.write('x' * 200000 + '\\nend\\n')\n"
    lines: list[str] = []

    result = await InstallRunner(max_concurrent=1, timeout_s=10).run(
        "n1", [PY, "-c", script], {}, lines.append
    )

    assert result.ok
    assert "".join(lines[:-1]) == "x" * 200000
    assert lines[-1] == "end"


async def test_cancelling_an_install_kills_its_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    runner = InstallRunner(max_concurrent=1, timeout_s=60, kill_grace_s=0.5)
    task = asyncio.create_task(
        runner.run("n1", ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], {}, print)
    )
    async with asyncio.timeout(10):
        while not pid_file.exists() or not pid_file.read_text().strip():
            await asyncio.sleep(0.05)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await wait_gone(int(pid_file.read_text()))
