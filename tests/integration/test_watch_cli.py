"""`plasmaboot watch` as a real process (stdout a pipe: plain lines), while this test
moves nodes through the Provisioner: from the local store (SQLite, the way the other
node commands read it) and through a server's event stream (`--server`, admin token)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from events_support import ADMIN, LAB, TO_ACTIVE, Server, serve

from plasmaboot.lifecycle import Event
from plasmaboot.store import SqliteStore

pytestmark = pytest.mark.integration

RUN_TIMEOUT_S = 60


@dataclass
class Watch:
    proc: asyncio.subprocess.Process
    lines: list[str]

    @classmethod
    async def start(cls, *args: str, env: dict[str, str] | None = None) -> Watch:
        argv = [sys.executable, "-m", "plasmaboot", "watch", *args]
        environ = {k: v for k, v in os.environ.items() if k != "PLASMABOOT_ADMIN_TOKEN"}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env={**environ, **(env or {}), "COLUMNS": "200"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc, [])

    async def line_with(self, text: str, timeout: float = 20) -> str:
        """Read stdout until a line containing `text` (kept in `lines`)."""
        assert self.proc.stdout is not None

        async def find() -> str:
            assert self.proc.stdout is not None
            while True:
                raw = await self.proc.stdout.readline()
                assert raw, f"watch ended before {text!r}: {self.lines}"
                self.lines.append(raw.decode().rstrip("\n"))
                if text in self.lines[-1]:
                    return self.lines[-1]

        return await asyncio.wait_for(find(), timeout)

    async def finish(self) -> tuple[int, str, str]:
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), RUN_TIMEOUT_S)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            pytest.fail(f"watch did not end: {self.lines}")
        assert self.proc.returncode is not None
        stdout = "\n".join([*self.lines, out.decode()])
        return self.proc.returncode, stdout, err.decode()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    running = await serve(SqliteStore.in_dir(tmp_path / "state"), tmp_path / "state")
    yield running
    await running.stop()
    running.store.close()


async def to_active(server: Server, hostname: str, *, pause: float = 0.2) -> None:
    for event in TO_ACTIVE[1:]:
        await asyncio.sleep(pause)
        server.fire(hostname, event)


def local(server: Server) -> tuple[str, ...]:
    return ("--state-dir", str(server.provisioner.settings.state_dir))


async def test_watch_ends_with_0_when_the_nodes_reach_active(server: Server) -> None:
    for hostname in ("node01", "node02"):
        server.fire(hostname, Event.PXE_BOOT)
    watch = await Watch.start("node01", "node02", *local(server), "--timeout", "30")
    assert await watch.line_with("2 nodes: pxe-booting 2")
    await watch.line_with("node02 pxe-booting (stage pxe-boot")  # a row per node
    await to_active(server, "node01")
    server.store.record("node02", "install-output", "installer", {"line": "partitioning vda"})
    await to_active(server, "node02")
    code, stdout, stderr = await watch.finish()
    assert code == 0, stdout + stderr
    assert "node01 installed -> first-boot (first-boot by test)" in stdout  # one per change
    assert "node02 pxe-booting (install-output by installer): partitioning vda" in stdout
    assert "2 nodes: active 2" in stdout
    assert stdout.rstrip().endswith("all 2 watched nodes are active")
    assert "\x1b[" not in stdout, "not a terminal: plain lines"


async def test_watch_ends_with_1_naming_the_nodes_not_active(server: Server) -> None:
    server.fire("node03", Event.PXE_BOOT)
    server.fire("node03", Event.FAIL, reason="no DHCP answer")
    server.fire("node01", Event.PXE_BOOT)
    watch = await Watch.start("node01", "node03", *local(server), "--timeout", "30")
    await watch.line_with("2 nodes:")
    first, second = [await watch.line_with(name) for name in ("node", "node")]
    assert first.startswith("node03 boot-failed") and "failed" in first  # failed first
    assert second.startswith("node01 pxe-booting")
    await to_active(server, "node01")
    code, stdout, stderr = await watch.finish()
    assert code == 1
    assert "not active: node03 boot-failed (stage fail" in stderr
    assert "node01 first-boot -> active" in stdout


async def test_watch_marks_overdue_nodes_and_times_out(server: Server, tmp_path: Path) -> None:
    doc = yaml.safe_load(LAB.read_text())
    doc.setdefault("server", {})["deadlines"] = {"pxe-booting": 1}
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(doc))
    server.fire("node01", Event.PXE_BOOT)
    watch = await Watch.start("node01", *local(server), "-c", str(config), "--timeout", "3")
    line = await watch.line_with("overdue in pxe-booting")
    assert "node01" in line and "stage pxe-boot" in line
    code, _, stderr = await watch.finish()
    assert code == 1
    assert "timed out after 3 s, still moving: node01 pxe-booting" in " ".join(stderr.split())


async def test_watch_an_unknown_node_is_a_clear_error(server: Server) -> None:
    watch = await Watch.start("node99", *local(server))
    code, _, stderr = await watch.finish()
    assert code == 1 and "no node named node99" in stderr and "Traceback" not in stderr


async def test_watch_through_the_event_stream(server: Server, tmp_path: Path) -> None:
    server.fire("node02", Event.PXE_BOOT)
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN + "\n")
    token_file.chmod(0o600)
    args = ("node02", "--server", server.base, "--timeout", "30")
    by_file = await Watch.start(*args, "--token-file", str(token_file))
    by_env = await Watch.start(*args, env={"PLASMABOOT_ADMIN_TOKEN": ADMIN})
    for watch in (by_file, by_env):
        await watch.line_with("node02 pxe-booting (stage pxe-boot")
    await asyncio.sleep(0.5)  # both are on the stream (what they missed would be replayed)
    await to_active(server, "node02")
    for watch in (by_file, by_env):
        code, stdout, stderr = await watch.finish()
        assert code == 0, stdout + stderr
        assert "node02 installer-booted -> installed (installed by test)" in stdout
        assert "all 1 watched nodes are active" in stdout


async def test_watch_refuses_a_token_others_can_read_or_the_server_refuses(
    server: Server, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN + "\n")
    token_file.chmod(0o644)
    watch = await Watch.start("--server", server.base, "--token-file", str(token_file))
    code, _, stderr = await watch.finish()
    assert code == 1
    assert "mode 0644" in stderr and f"chmod 600 {token_file}" in " ".join(stderr.split())

    wrong = await Watch.start(
        "--server", server.base, env={"PLASMABOOT_ADMIN_TOKEN": "not-the-token"}
    )
    code, _, stderr = await wrong.finish()
    assert code == 1 and "refused the admin token (HTTP 401: unknown or revoked" in stderr
