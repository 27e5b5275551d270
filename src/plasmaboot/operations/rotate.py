"""Runbook 10.2, certificate rotation on the nodes: `plasmaboot pki rotate NODE...` and
`plasmaboot pki rotate-ca`.

The runbook's script copies new files with scp, then restarts every node 30 s apart
whatever happens. Here each node, one at a time:

1. is reached over SSH as root (as `node rollback` reaches it) before anything changes;
2. gets its certificate reissued here with the same SANs (`pki.renew`; the key is kept
   unless --rotate-key);
3. receives the CA file, its certificate and key at the paths its cluster-config.json names
   (`render.cluster_config.tls_paths`) as one tar on the SSH session's input, never on a
   command line (logged, visible in ps): unpacked into a temporary directory beside them,
   then renamed into place (the key 0600), so no service ever reads half a file;
4. restarts the services that load them (`units`: etcd.service with store etcd, else the
   chainfire, flaredb and iam units it runs; systemd hands etcd the files again at start);
5. passes the rollout's health gate (`rollout.HealthGate`: the node's health check, then
   `cluster verify`).

Before the first node, `cluster verify` must pass: a restart while a member is already
down could cost the quorum (--force goes on anyway). The first failure stops the rest,
naming the node and the step. Events, in the node's history: `pki-rotate-reach`,
`pki-rotate-issued` (serial, key rotated or not), `pki-rotate-delivered`,
`pki-rotate-restarted`, the gate's `pki-rotate-health` / `-cluster-verified`, then
`pki-rotated` or `pki-rotate-failed` (step, reason).

A CA rotation (phases and state: `pki/rotation.py`) runs steps 1 and 3 to 5 on every
installed node in each phase, and step 2 in its `reissue` phase; events `ca-rotate-*`. A
node it cannot reach refuses the phase, changing nothing, unless --force passes it over:
recorded as skipped, it keeps only the CA it had and must get the files later by hand or
a reinstall. An unhealthy cluster refuses it the same way.
"""

from __future__ import annotations

import asyncio
import io
import posixpath
import shlex
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plasmaboot.inventory import Inventory, Node
from plasmaboot.operations.nodes import ACTOR, NodeOperations, OperationError
from plasmaboot.operations.rollback import TAKES
from plasmaboot.operations.rollout import HealthGate, NodeByNode, over_ssh, run_step
from plasmaboot.pki import PKIError, cert_info, node_cert_paths, renew
from plasmaboot.pki import rotation as ca_rotation
from plasmaboot.render.cluster_config import tls_paths
from plasmaboot.render.common import services_of
from plasmaboot.render.etcd import ETCD_UNIT, runs_etcd

STEP_TIMEOUT_S = 120  # reaching, delivering, restarting: each within this
_FILES = (("ca_cert_path", 0o644), ("node_key_path", 0o600), ("node_cert_path", 0o644))


def units(inv: Inventory, node: Node) -> list[str]:
    """The node's units that load its certificate: restarted after a delivery."""
    if inv.cluster.store == "etcd":
        return [ETCD_UNIT] if runs_etcd(inv, node) else []
    return [f"{s}.service" for s in ("chainfire", "flaredb", "iam") if s in services_of(inv, node)]


def payload(pki: Path, node: Node) -> bytes:
    """A tar of the node's CA file, certificate and key, named and moded as on the node."""
    here = node_cert_paths(pki, node.hostname)
    sources = {"ca_cert_path": here.ca_cert, "node_key_path": here.key,
               "node_cert_path": here.cert}  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key, mode in _FILES:
            data = sources[key].read_bytes()
            info = tarfile.TarInfo(posixpath.basename(tls_paths(node)[key]))
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def install_script(node: Node) -> str:
    """The node's side of a delivery: unpack beside the files, rename each into place."""
    targets = [tls_paths(node)[key] for key, _mode in _FILES]
    directory = posixpath.dirname(targets[0])
    assert all(posixpath.dirname(t) == directory for t in targets), targets
    where = shlex.quote(directory)
    moves = "; ".join(f'mv -f "$t"/{shlex.quote(posixpath.basename(t))} {shlex.quote(t)}'
                      for t in targets)  # fmt: skip
    return (
        f"set -e; umask 077; mkdir -p {where}; t=$(mktemp -d {where}/.plasmaboot-rotate.XXXXXX)"
        f'; trap \'rm -rf "$t"\' EXIT; tar -x -p --no-same-owner -C "$t" -f -; {moves}'
    )


@dataclass
class Delivery:
    """Reaching a node, then delivering its files, restarting its units and the gate."""

    ops: NodeOperations
    pki: Path
    gate: HealthGate | None  # None: ungated (the CLI gates unless --no-health-gate)
    ssh_options: Sequence[str] = ()

    def check(self, hostname: str) -> None:
        """Refuse a node that runs no installed system or has no certificate here."""
        state = self.ops._record(hostname).state
        if state not in TAKES:
            raise OperationError(
                f"{hostname} is {state.value}: certificates are rotated on a node whose "
                "installed system runs (active, draining or maintenance); a node installed "
                "later gets the current certificate and CA at install"
            )
        if not node_cert_paths(self.pki, hostname).cert.exists():
            raise OperationError(
                f"{hostname}: no certificate in {self.pki} to rotate; it gets one at install"
            )

    async def healthy_before(self, hostname: str, force: bool) -> None:
        """Refuse to restart anything in a cluster that is unhealthy already, unless force."""
        check = self.gate.cluster_check if self.gate is not None else None
        problems = await asyncio.to_thread(check, hostname) if check is not None else []
        if problems and not force:
            raise OperationError(
                f"cluster verify fails before any restart: {'; '.join(problems)}. Restarting "
                "a member now could cost the quorum; nothing was done. Fix the cluster "
                "first, or pass --force"
            )

    async def reachable(self, hostname: str, what: str) -> bool:
        ssh = over_ssh("true", self.ssh_options)
        return await run_step(self.ops, hostname, ssh, f"{what}-reach", STEP_TIMEOUT_S)

    async def apply(self, hostname: str, what: str) -> tuple[str, str] | None:
        """Deliver, restart, gate: the (step, reason) of the first failure, or None."""
        node = self.ops._spec(hostname)
        events = f"`plasmaboot node events {hostname}`"
        deliver = over_ssh(install_script(node), self.ssh_options)
        if not await run_step(self.ops, hostname, deliver, f"{what}-delivered", STEP_TIMEOUT_S,
                              stdin=payload(self.pki, node)):  # fmt: skip
            return "deliver", f"writing the files over SSH failed; its output: {events}"
        restart = units(self.ops.inventory, node)
        command = f"systemctl restart {' '.join(restart)}"
        if restart and not await run_step(
            self.ops, hostname, over_ssh(command, self.ssh_options), f"{what}-restarted",
            STEP_TIMEOUT_S,
        ):  # fmt: skip
            return "restart", f"`{command}` failed; its output: {events}"
        if self.gate is not None:
            unhealthy = await self.gate.failure(hostname, what=what)
            if unhealthy is not None:
                return "health gate", unhealthy
        return None


@dataclass
class NodeRotation:
    """One node's outcome, as `--json` prints it."""

    node: str
    ok: bool
    serial: str = ""  # the new certificate's, hex
    step: str = ""  # where it stopped: reach, issue, deliver, restart, health gate
    reason: str = ""


RotationResult = NodeByNode[NodeRotation]


@dataclass
class Rotate:
    """`pki rotate NODE...`: new certificates from the current CA, node by node."""

    delivery: Delivery
    rotate_key: bool = False
    force: bool = False  # restart even in a cluster that fails `cluster verify`

    async def run(self, hostnames: list[str]) -> RotationResult:
        """Every node is checked before the first starts, so a refusal changes nothing."""
        pki = self.delivery.pki
        if ca_rotation.load(pki) is not None:
            raise OperationError(
                "a CA rotation is in progress: finish it first (`plasmaboot pki rotate-ca`); "
                "a certificate from the new CA would be refused by a node that does not "
                "trust it yet"
            )
        for hostname in hostnames:
            self.delivery.check(hostname)
        if hostnames:
            await self.delivery.healthy_before(hostnames[0], self.force)
        result = RotationResult()
        for position, hostname in enumerate(hostnames):
            outcome = await self._one(hostname)
            result.nodes.append(outcome)
            if not outcome.ok:
                detail = {"step": outcome.step, "reason": outcome.reason}
                self.delivery.ops.store.record(hostname, "pki-rotate-failed", ACTOR, detail)
                result.not_started = hostnames[position + 1 :]
                break
        return result

    async def _one(self, hostname: str) -> NodeRotation:
        ops, pki = self.delivery.ops, self.delivery.pki
        if not await self.delivery.reachable(hostname, "pki-rotate"):
            return NodeRotation(hostname, False, step="reach", reason=(
                "cannot log in over SSH as root; nothing was changed. Its output: "
                f"`plasmaboot node events {hostname}`"))  # fmt: skip
        try:
            paths = renew(pki, hostname, rotate_key=self.rotate_key)
        except PKIError as exc:
            return NodeRotation(hostname, False, step="issue", reason=str(exc))
        serial = cert_info(paths.cert).serial
        ops.store.record(hostname, "pki-rotate-issued", ACTOR,
                         {"serial": serial, "key_rotated": self.rotate_key})  # fmt: skip
        failed = await self.delivery.apply(hostname, "pki-rotate")
        if failed is not None:
            return NodeRotation(hostname, False, serial, *failed)
        ops.store.record(hostname, "pki-rotated", ACTOR, {"serial": serial})
        ops.log(f"{hostname}: new certificate {serial} delivered, services restarted, healthy")
        return NodeRotation(hostname, True, serial)


@dataclass
class CaRotationReport:
    """Where a CA rotation is (`--status`), and how a run of it ended."""

    phase: str  # the phase to finish next; "done" once every node trusts the new CA alone
    old_ca: str
    new_ca: str
    finished: dict[str, list[str]]  # phase -> nodes that finished it
    skipped: list[str]
    failed: str | None = None  # the node the run stopped at
    step: str = ""
    reason: str = ""
    reissued_here: list[str] = field(default_factory=list)  # drop-old: other certificates

    @property
    def ok(self) -> bool:
        return self.failed is None


@dataclass
class RotateCa:
    """`pki rotate-ca`: start or resume a CA rotation and take it as far as it goes."""

    delivery: Delivery
    force: bool = False  # pass unreachable nodes over; go on in an unhealthy cluster
    rotate_key: bool = False  # new node keys in the reissue phase

    def _report(self, state: ca_rotation.CaRotation, **outcome: Any) -> CaRotationReport:
        return CaRotationReport(state.phase, state.old_ca, state.new_ca, state.done,
                                state.skipped, **outcome)  # fmt: skip

    def status(self) -> CaRotationReport | None:
        state = ca_rotation.load(self.delivery.pki)
        return None if state is None else self._report(state)

    def _installed(self) -> list[str]:
        ops = self.delivery.ops
        return [n.hostname for n in ops.inventory.nodes
                if (r := ops.store.get_node(n.hostname)) is not None and r.state in TAKES
                and node_cert_paths(self.delivery.pki, n.hostname).cert.exists()]  # fmt: skip

    async def _unreachable(self, hostnames: list[str], phase: str) -> list[str]:
        """The nodes SSH cannot log in to; a refusal unless --force."""
        lost = [h for h in hostnames if not await self.delivery.reachable(h, "ca-rotate")]
        if lost and not self.force:
            raise OperationError(
                f"cannot log in over SSH as root to {', '.join(lost)}; nothing was done in "
                f"phase {phase}. Make them reachable, or pass --force to go on without them "
                "(they keep only the CA they have and need the files later, or a reinstall)"
            )
        return lost

    async def run(self) -> CaRotationReport:
        pki, ops = self.delivery.pki, self.delivery.ops
        state = ca_rotation.load(pki)
        nodes = self._installed() if state is None else state.nodes
        if nodes:
            await self.delivery.healthy_before(nodes[0], self.force)
        lost: list[str] | None = None  # reached already in this phase
        if state is None:
            for hostname in nodes:
                self.delivery.check(hostname)
            lost = await self._unreachable(nodes, ca_rotation.PHASES[0])
            state = ca_rotation.begin(pki, ops.inventory.cluster.name, nodes)
            ops.log(f"new CA {state.new_ca} signs from now on; the nodes trust it and the "
                    f"old CA {state.old_ca} together until every node has moved")  # fmt: skip
        reissued: list[str] = []
        while state.phase in ca_rotation.PHASES:
            if lost is None:
                lost = await self._unreachable(state.pending(), state.phase)
            self._skip(state, lost)
            lost = None
            if state.phase == "drop-old":
                reissued = ca_rotation.drop_old(pki)
            while pending := self._pending(state):
                hostname = pending[0]
                failed = await self._move(state.phase, hostname)
                if failed is not None:
                    ops.store.record(hostname, "ca-rotate-failed", ACTOR,
                                     {"phase": state.phase, "step": failed[0],
                                      "reason": failed[1]})  # fmt: skip
                    return self._report(state, failed=hostname, step=failed[0],
                                        reason=failed[1], reissued_here=reissued)  # fmt: skip
                state.done[state.phase].append(hostname)
                state.save(pki)
                ops.store.record(hostname, "ca-rotate-phase", ACTOR, {"phase": state.phase})
                ops.log(f"{hostname}: phase {state.phase} done")
            following = ca_rotation.PHASES.index(state.phase) + 1
            if following == len(ca_rotation.PHASES):
                break
            state.phase = ca_rotation.PHASES[following]
            state.save(pki)
        ca_rotation.finish(pki)
        state.phase = "done"
        ops.log(f"CA rotation done: every node trusts the new CA {state.new_ca} alone")
        return self._report(state, reissued_here=reissued)

    def _pending(self, state: ca_rotation.CaRotation) -> list[str]:
        """The phase's nodes still to do, asked again before each: a node installed while
        the rotation runs joins it."""
        joined = state.enlist(self._installed())
        for hostname in joined:
            self.delivery.ops.store.record(hostname, "ca-rotate-joined", ACTOR,
                                           {"phase": state.phase})  # fmt: skip
            self.delivery.ops.log(f"{hostname}: installed during the rotation, joins it in "
                                  f"phase {state.phase}")  # fmt: skip
        if joined:
            state.save(self.delivery.pki)
        return state.pending()

    def _skip(self, state: ca_rotation.CaRotation, lost: list[str]) -> None:
        for hostname in lost:
            state.skipped.append(hostname)
            self.delivery.ops.store.record(hostname, "ca-rotate-skipped", ACTOR,
                                           {"phase": state.phase, "forced": True})  # fmt: skip
        state.save(self.delivery.pki)

    async def _move(self, phase: str, hostname: str) -> tuple[str, str] | None:
        if phase == "reissue":
            try:
                paths = renew(self.delivery.pki, hostname, rotate_key=self.rotate_key)
            except PKIError as exc:
                return "issue", str(exc)
            self.delivery.ops.store.record(hostname, "ca-rotate-issued", ACTOR,
                                           {"serial": cert_info(paths.cert).serial,
                                            "key_rotated": self.rotate_key})  # fmt: skip
        return await self.delivery.apply(hostname, "ca-rotate")
