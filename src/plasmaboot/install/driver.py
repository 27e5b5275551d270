"""The installer driver: a node whose installer image called in gets installed.

It listens to lifecycle transitions; on `installer-booted` it assembles the node's files
(secrets, certificates, a fresh node credential: `provision/nodefiles.py`), runs the
inventory's install command (nixos-anywhere by default) for that node with them, streams
the output into the node's events in batches, and moves the node to `installed`, or to
`install-failed` with the tail of the output. The files are removed from the server when
the command ends. With no install command configured it does nothing: the installer image
then installs itself and reports its own stages (the lab's busybox miniature).
"""

from __future__ import annotations

import asyncio
import time

from plasmaboot.install import InstallRunner, split_command
from plasmaboot.lifecycle import Event, IllegalTransition, State
from plasmaboot.logs import get_logger
from plasmaboot.pki.authority import PKIError
from plasmaboot.provision import Provisioner
from plasmaboot.provision.nodefiles import assemble_node_files
from plasmaboot.store import EventRecord

log = get_logger("plasmaboot.install")

OUTPUT_BATCH_LINES = 50
OUTPUT_BATCH_S = 2.0


class InstallOutput:
    """Batches an installer's lines into `install-output` events (one store write per
    batch, not per line)."""

    def __init__(self, provisioner: Provisioner, hostname: str) -> None:
        self.provisioner = provisioner
        self.hostname = hostname
        self.lines: list[str] = []
        self.flushed_at = time.monotonic()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if len(self.lines) >= OUTPUT_BATCH_LINES or (
            time.monotonic() - self.flushed_at > OUTPUT_BATCH_S
        ):
            self.flush()

    def flush(self) -> None:
        if self.lines:
            self.provisioner.store.record(
                self.hostname, "install-output", "installer", {"lines": self.lines}
            )
            self.lines = []
        self.flushed_at = time.monotonic()


class InstallDriver:
    def __init__(self, provisioner: Provisioner) -> None:
        installer = provisioner.inventory.server.installer
        self.provisioner = provisioner
        self.runner = InstallRunner(installer.max_concurrent, installer.timeout_s)
        self.tasks: set[asyncio.Task[None]] = set()

    def __call__(self, record: EventRecord) -> None:
        if record.to_state != State.INSTALLER_BOOTED:
            return
        if self.provisioner.inventory.server.installer.command is None:
            return
        task = asyncio.get_running_loop().create_task(self.install(record.node))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def install(self, hostname: str) -> None:
        inv = self.provisioner.inventory
        installer = inv.server.installer
        node = inv.node(hostname)
        if node is None or installer.command is None:
            return
        try:
            self.provisioner.fire(
                hostname, Event.INSTALL_STARTED, "installer", {"command": installer.command}
            )
        except IllegalTransition as exc:  # the image reported first, or an operator acted
            log.info("install not started", node=hostname, reason=str(exc))
            return
        output = InstallOutput(self.provisioner, hostname)
        try:
            files = assemble_node_files(
                inv, node,
                state_dir=self.provisioner.settings.state_dir,
                plasmaboot_url=self.provisioner.settings.http_base,
                credential=self.provisioner.tokens.issue_node_credential(hostname),
            )  # fmt: skip
        except (OSError, PKIError) as exc:
            self.provisioner.fire(
                hostname, Event.FAIL, "installer", {"tail": [f"node files: {exc}"]}
            )
            return
        variables = {"node": hostname, "ip": str(node.provisioning_ip),
                     "flake": installer.flake or "", "extra_files": str(files.root)}  # fmt: skip
        try:
            result = await self.runner.run(
                hostname, split_command(installer.command), variables, output
            )
        finally:
            files.remove()
        output.flush()
        detail: dict[str, object] = {
            "returncode": result.returncode,
            "duration_s": round(result.duration_s, 1),
        }
        try:
            if result.ok:
                self.provisioner.fire(hostname, Event.INSTALLED, "installer", detail)
            else:
                detail |= {"timed_out": result.timed_out, "tail": result.tail}
                self.provisioner.fire(hostname, Event.FAIL, "installer", detail)
        except IllegalTransition as exc:
            log.warning("install finished but the node moved on", node=hostname, reason=str(exc))

    async def stop(self) -> None:
        """Cancel running installs (their process groups are killed by the runner)."""
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
