"""Run an install command (default ``nixos-anywhere``) for a node, streaming its output.

The command is an argv template whose elements may hold ``{node}``, ``{ip}``, ``{flake}``
and ``{extra_files}`` (the node's files, see `provision/nodefiles.py`); values are
substituted per element and never re-split or given to a shell, so a node name cannot
inject arguments. Each run gets its own process group, so a timeout
kills the installer together with the ssh/nix children it spawned. A semaphore bounds how
many installs run at once; the caller moves the node to installed or install-failed from
the returned ``InstallResult``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shlex
import signal
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from plasmaboot.inventory.models import INSTALL_PLACEHOLDERS
from plasmaboot.logs import get_logger

log = get_logger("plasmaboot.install")

DEFAULT_INSTALL_COMMAND: tuple[str, ...] = (
    "nixos-anywhere",
    "--extra-files",
    "{extra_files}",
    "--flake",
    "{flake}#{node}",
    "root@{ip}",
)
MAX_LINE_BYTES = 64 * 1024
READ_CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class InstallResult:
    ok: bool
    returncode: int | None
    tail: list[str]
    duration_s: float
    timed_out: bool


def split_command(command: str) -> list[str]:
    """Split an inventory's install command string into an argv template (POSIX rules)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"install_command: cannot split {command!r}: {exc}") from None
    if not argv:
        raise ValueError("install_command: empty; give the installer and its arguments")
    return argv


def render_argv(template: Sequence[str], variables: Mapping[str, str]) -> list[str]:
    """Fill the placeholders of every argv element; unknown or missing ones are errors."""
    if not template:
        raise ValueError("install_command: empty; give the installer and its arguments")
    rendered = []
    for element in template:
        for _, name, spec, conversion in string.Formatter().parse(element):
            if name is None:
                continue
            if name not in INSTALL_PLACEHOLDERS or spec or conversion:
                raise ValueError(
                    f"install_command: {{{name}}} in {element!r} is not a placeholder; "
                    f"use {{node}}, {{ip}}, {{flake}} or {{extra_files}} "
                    "(write {{{{ }}}} for literal braces)"
                )
            if name not in variables:
                raise ValueError(f"install_command: no value for {{{name}}} in {element!r}")
        rendered.append(element.format_map(variables))
    return rendered


class InstallRunner:
    """Runs install commands, at most ``max_concurrent`` at a time, each within ``timeout_s``."""

    def __init__(
        self,
        max_concurrent: int,
        timeout_s: float,
        tail_lines: int = 40,
        kill_grace_s: float = 5.0,
        what: str = "install",
        setting: str = "install_command",
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = timeout_s
        self.tail_lines = tail_lines
        self.kill_grace_s = kill_grace_s
        # What the output and errors call the command and the setting that holds it.
        self.what, self.setting = what, setting
        self._slots = asyncio.Semaphore(max_concurrent)

    async def run(
        self,
        node_name: str,
        argv_template: Sequence[str],
        variables: Mapping[str, str],
        on_line: Callable[[str], None],
        stdin: bytes | None = None,
    ) -> InstallResult:
        """`stdin`: what the command reads (a secret goes there, never into its argv,
        which is logged and visible in ps)."""
        argv = render_argv(argv_template, {"node": node_name, **variables})
        async with self._slots:
            return await self._run(node_name, argv, on_line, stdin)

    async def _run(
        self, node_name: str, argv: list[str], on_line: Callable[[str], None],
        stdin: bytes | None = None,
    ) -> InstallResult:  # fmt: skip
        tail: collections.deque[str] = collections.deque(maxlen=self.tail_lines)
        started = time.monotonic()
        log.info("install starting", node=node_name, argv=shlex.join(argv))
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            message = f"cannot start {argv[0]!r}: {exc.strerror}; install it or fix {self.setting}"
            log.error("install failed to start", node=node_name, error=message)
            return InstallResult(False, None, [message], time.monotonic() - started, False)

        def emit(line: str) -> None:
            tail.append(line)
            try:
                on_line(line)
            except Exception:
                log.exception("install output callback failed", node=node_name)

        assert process.stdout is not None
        pump = asyncio.create_task(_pump(process.stdout, emit))
        timed_out = False
        try:
            async with asyncio.timeout(self.timeout_s):
                if stdin is not None:
                    await _feed(process, stdin)
                await _exited(process)
                # A child left behind (a daemon it started, say) may keep the pipe open
                # after the installer exited: read on only briefly, then end the group.
                await asyncio.wait({pump}, timeout=self.kill_grace_s)
        except TimeoutError:
            timed_out = True
        finally:
            await self._stop_group(process)
            await asyncio.wait({pump}, timeout=self.kill_grace_s)
            pump.cancel()
        if timed_out:
            emit(f"plasmaboot: {self.what} timed out after {self.timeout_s:g}s; killed")
        duration = time.monotonic() - started
        ok = not timed_out and process.returncode == 0
        (log.info if ok else log.error)(
            "install finished",
            node=node_name,
            ok=ok,
            returncode=process.returncode,
            timed_out=timed_out,
            duration_s=round(duration, 1),
        )
        return InstallResult(ok, process.returncode, list(tail), duration, timed_out)

    async def _stop_group(self, process: asyncio.subprocess.Process) -> None:
        """End the whole group (leftovers too): SIGTERM, a grace period, then SIGKILL."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        if process.returncode is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_exited(process), self.kill_grace_s)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await _exited(process)


async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
    """Write the command's input and close it; one that exits without reading it all
    fails by its exit status, not here."""
    assert process.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        process.stdin.write(data)
        await process.stdin.drain()
    process.stdin.close()


async def _exited(process: asyncio.subprocess.Process) -> None:
    """Wait for the exit itself: ``Process.wait()`` (3.11) also waits for the pipes to close."""
    while process.returncode is None:
        await asyncio.sleep(0.1)


async def _pump(reader: asyncio.StreamReader, emit: Callable[[str], None]) -> None:
    """Emit decoded lines, read in large chunks; an over-long line comes out in pieces."""
    pending = b""
    while chunk := await reader.read(READ_CHUNK_BYTES):
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            emit(_decode(line))
        while len(pending) > MAX_LINE_BYTES:
            emit(_decode(pending[:MAX_LINE_BYTES]))
            pending = pending[MAX_LINE_BYTES:]
    if pending:
        emit(_decode(pending))


def _decode(chunk: bytes) -> str:
    return chunk.decode("utf-8", errors="replace").rstrip("\r\n")
