"""InstallRunner driving a real ``ssh`` client against a real ``sshd`` on loopback.

nixos-anywhere is an ssh client at heart (``root@{ip}``); these tests run the same shape of
command, an argv template whose ``{ip}`` and ``{node}`` the runner fills, so the output
streaming, exit codes, timeouts and an ssh control master left running are checked with
the real programs rather than with a stand-in.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from ssh_support import SshHost, missing_sshd, running_sshd

from plasmaboot.install import InstallRunner

pytestmark = pytest.mark.integration

SSHD_PORT = 17122


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHost]:
    reason = missing_sshd()
    if reason:
        pytest.skip(reason)
    with running_sshd(tmp_path_factory.mktemp("pbp-sshd"), SSHD_PORT) as host:
        yield host


async def test_install_over_ssh_streams_the_remote_output(ssh_host: SshHost) -> None:
    remote = "echo installing {node}; for i in 1 2 3; do echo step $i; sleep 0.2; done"
    lines: list[str] = []

    result = await InstallRunner(max_concurrent=2, timeout_s=60).run(
        "rack1-n1", ssh_host.command(remote), {"ip": "127.0.0.1", "flake": "x"}, lines.append
    )

    assert result.ok, result.tail
    assert lines == ["installing rack1-n1", "step 1", "step 2", "step 3"]


async def test_install_over_ssh_failure_reports_the_remote_exit_code_and_stderr(
    ssh_host: SshHost,
) -> None:
    remote = "echo partitioning; echo 'disko: /dev/vda: no such disk' >&2; exit 7"

    result = await InstallRunner(max_concurrent=1, timeout_s=60).run(
        "rack1-n1", ssh_host.command(remote), {"ip": "127.0.0.1"}, lambda _: None
    )

    assert (result.ok, result.returncode, result.timed_out) == (False, 7, False)
    assert result.tail == ["partitioning", "disko: /dev/vda: no such disk"]


async def test_install_over_ssh_timeout_kills_the_client(ssh_host: SshHost) -> None:
    remote = "echo started; sleep 300"

    result = await InstallRunner(max_concurrent=1, timeout_s=8, kill_grace_s=1).run(
        "rack1-n1", ssh_host.command(remote), {"ip": "127.0.0.1"}, lambda _: None
    )

    assert result.timed_out and not result.ok
    assert result.tail[0] == "started"
    assert 8 <= result.duration_s < 20  # killed at the timeout, not at `sleep 300`


async def test_a_persisting_ssh_control_master_does_not_hold_the_install(
    ssh_host: SshHost,
) -> None:
    control = ssh_host.directory / "cm-%C"
    options = (
        "-o",
        "ControlMaster=auto",
        "-o",
        "ControlPersist=120",
        "-o",
        f"ControlPath={control}",
    )
    command = ssh_host.command("echo installed", *options)
    try:
        result = await InstallRunner(max_concurrent=1, timeout_s=60, kill_grace_s=1).run(
            "rack1-n1", command, {"ip": "127.0.0.1"}, lambda _: None
        )
        assert result.ok, result.tail
        assert result.tail == ["installed"]
        assert result.duration_s < 10
    finally:
        subprocess.run(
            [*command[:-2], "-O", "exit", "root@127.0.0.1"], capture_output=True, timeout=10
        )
