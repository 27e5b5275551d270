"""The node procedures and jobs by name: what `plasmaboot node ...` and `rollout` run here,
and what the admin API runs on a server for a remote CLI (web/operations.py).

- `PROCEDURES` act on one node with no options of their own (`POST
  /api/v1/nodes/{hostname}/procedures/{NAME}`): provision, drain, decommission...
- `JOBS` take their own options (a pydantic model, the request body of `POST
  /api/v1/procedures/{NAME}`) and return a result the CLI prints: rollout, rollback and
  rotate (several nodes in turn, health-gated), rotate-ca (every node, phase by phase),
  replace and adopt (they edit the inventory file).

A new one is one entry here (and its CLI command): the API route and the remote client
take it from there. A job runs on a `Site`: the node operations, the inventory file, the
PKI, the cluster the health gate verifies, and, on a server, its own inventory reload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from plasmaboot.cluster.membership import StoreMembership, inventory_membership
from plasmaboot.firstboot.backends import ClusterUnreachable, MembershipError
from plasmaboot.lifecycle import IllegalTransition
from plasmaboot.operations.adopt import Adoption, adopt
from plasmaboot.operations.nodes import NodeOperations, OperationError, OperationFailed
from plasmaboot.operations.replace import Replace
from plasmaboot.operations.rollback import NodeRollback, Rollback, RollbackResult
from plasmaboot.operations.rollout import (
    DEFAULT_HEALTH_COMMAND,
    DEFAULT_UPDATE_COMMAND,
    HEALTH_CHECK,
    HealthGate,
    NodeByNode,
    Rollout,
    RolloutResult,
    over_ssh,
    ssh_options_refusal,
)
from plasmaboot.operations.rotate import (
    CaRotationReport,
    Delivery,
    NodeRotation,
    Rotate,
    RotateCa,
    RotationResult,
)
from plasmaboot.pki import PKIError
from plasmaboot.power import PowerError
from plasmaboot.provision import Provisioner
from plasmaboot.provision.nodefiles import pki_dir
from plasmaboot.store import UnknownNode

Run = Callable[[NodeOperations, str], Awaitable[None] | None]
# What the CLI reports as `refused:` (or `failed:`, OperationFailed) without a traceback.
REFUSALS = (OperationError, IllegalTransition, UnknownNode, PowerError, PKIError)


@dataclass(frozen=True)
class Procedure:
    run: Run
    leaves_cluster: bool = False  # changes the cluster membership: --keep-member, --force


PROCEDURES: Mapping[str, Procedure] = {
    "provision": Procedure(NodeOperations.provision),
    "reprovision": Procedure(NodeOperations.reprovision, leaves_cluster=True),
    "drain": Procedure(NodeOperations.drain),
    "maintenance": Procedure(NodeOperations.maintenance),
    "activate": Procedure(NodeOperations.activate),
    "decommission": Procedure(NodeOperations.decommission, leaves_cluster=True),
}


async def run_procedure(ops: NodeOperations, name: str, hostname: str) -> None:
    pending = PROCEDURES[name].run(ops, hostname)
    if pending is not None:
        await pending


def outcome(exc: BaseException) -> str:
    """How the CLI words a refusal: `failed` when a step ran and failed, else `refused`."""
    return "failed" if isinstance(exc, OperationFailed) else "refused"


@dataclass
class Site:
    """Where a job runs: here (the CLI) or on a server (the admin API)."""

    ops: NodeOperations
    inventory_file: Path | None  # None: a server started without one (in-process tests)
    pki: Path
    membership: StoreMembership  # the cluster store(s) the health gate verifies
    # A server's own inventory reload (SIGHUP's); None here: a running serve is the
    # operator's to reload.
    reload: Callable[[], list[str]] | None = None

    def inventory(self) -> Path:
        if self.inventory_file is None:
            raise OperationError("this server was started without an inventory file to edit")
        return self.inventory_file

    def edited(self) -> None:
        """A server takes its edited inventory in at once, as on SIGHUP: DHCP leases the
        new MACs their address and boot scripts find the node before the machine boots."""
        if self.reload is None:
            return
        problems = self.reload()
        if problems:
            raise OperationFailed(
                f"{self.inventory_file} was edited, but this server refused to reload it: "
                f"{'; '.join(problems)}. Fix the file, then POST /api/v1/inventory/reload"
            )
        self.ops.log(f"this server reloaded {self.inventory_file}")

    def gate(self, health: str, timeout_s: float, off: bool) -> HealthGate | None:
        """The node's health command, then `cluster verify` when the inventory runs a store."""
        if off:
            return None

        def cluster_check(hostname: str) -> list[str]:
            try:
                return self.membership.verify(hostname)
            except (MembershipError, ClusterUnreachable, OSError) as error:
                return [str(error)]

        check = cluster_check if self.membership.services else None
        return HealthGate(self.ops, health, check, timeout_s=timeout_s)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RolloutOptions(Options):
    nodes: list[str]
    command: str | None = None  # None: DEFAULT_UPDATE_COMMAND; else run where it runs
    health: str | None = None  # None: DEFAULT_HEALTH_COMMAND; else run where it runs
    health_timeout: float = Field(default=300.0, ge=1, le=24 * 3600)
    no_health_gate: bool = False
    timeout: float = Field(default=3600.0, ge=1, le=24 * 3600)


class RollbackOptions(Options):
    nodes: list[str]
    health: str | None = None  # None: `systemctl is-system-running` over the same SSH
    health_timeout: float = Field(default=300.0, ge=1, le=24 * 3600)
    no_health_gate: bool = False
    ssh_options: list[str] = []


class RotateOptions(Options):
    nodes: list[str]
    rotate_key: bool = False
    force: bool = False  # even when cluster verify fails before the first restart
    health_timeout: float = Field(default=300.0, ge=1, le=24 * 3600)
    no_health_gate: bool = False
    ssh_options: list[str] = []


class RotateCaOptions(Options):
    status: bool = False  # only report where a rotation is
    force: bool = False  # go on without the nodes SSH cannot reach, or in an unhealthy cluster
    rotate_key: bool = False
    health_timeout: float = Field(default=300.0, ge=1, le=24 * 3600)
    no_health_gate: bool = False
    ssh_options: list[str] = []


class ReplaceOptions(Options):
    node: str
    macs: list[str]
    provision: bool = True
    keep_member: bool = False
    force: bool = False


class AdoptOptions(Options):
    mac: str
    name: str
    profile: str
    ip: str | None = None
    production_ip: str | None = None
    disk: str | None = None


def _caller_commands(options: RolloutOptions | RollbackOptions) -> str | None:
    """A command given by the caller would run on the server as its user: a server runs
    only its inventory's commands and plasmaboot's defaults."""
    flags = (("--command", getattr(options, "command", None)), ("--health", options.health))
    given = [flag for flag, value in flags if value is not None]
    if not given:
        return None
    named = " and ".join(given)
    return (
        f"{named} with --server: the server would run a command given over the network; "
        "it runs only its inventory's commands and plasmaboot's defaults. Drop "
        f"{named}, or run this on the server"
    )


def _rollback_refusal(options: RollbackOptions) -> str | None:
    return _caller_commands(options) or ssh_options_refusal(options.ssh_options)


async def _rollout(site: Site, o: RolloutOptions) -> RolloutResult:
    gate = site.gate(o.health or DEFAULT_HEALTH_COMMAND, o.health_timeout, o.no_health_gate)
    job = Rollout(site.ops, o.command or DEFAULT_UPDATE_COMMAND, gate, timeout_s=o.timeout)
    return await job.run(o.nodes)


async def _rollback(site: Site, o: RollbackOptions) -> RollbackResult:
    health = o.health or over_ssh(HEALTH_CHECK, o.ssh_options)
    gate = site.gate(health, o.health_timeout, o.no_health_gate)
    return await Rollback(site.ops, gate, o.ssh_options).run(o.nodes)


def _delivery(site: Site, o: RotateOptions | RotateCaOptions) -> Delivery:
    """Certificates reach the nodes over the SSH a rollback uses, the same health gate."""
    gate = site.gate(over_ssh(HEALTH_CHECK, o.ssh_options), o.health_timeout, o.no_health_gate)
    return Delivery(site.ops, site.pki, gate, o.ssh_options)


async def _rotate(site: Site, o: RotateOptions) -> RotationResult:
    return await Rotate(_delivery(site, o), o.rotate_key, o.force).run(o.nodes)


def _ca_rotation_refusal(o: RotateCaOptions) -> str | None:
    """A server reports a CA rotation but does not run one: the rotation replaces the CA
    its own admin listener presents a certificate of, so the client asking for it through
    that listener would lose its trust in the listener halfway (it holds the old CA)."""
    if o.status:
        return None
    return ("a CA rotation replaces the CA of this server's own admin certificate: run "
            "`plasmaboot pki rotate-ca` on the provisioning server itself (`--status` works "
            "through the server)")  # fmt: skip


async def _rotate_ca(site: Site, o: RotateCaOptions) -> CaRotationReport | None:
    job = RotateCa(_delivery(site, o), o.force, o.rotate_key)
    return job.status() if o.status else await job.run()


async def _replace(site: Site, o: ReplaceOptions) -> None:
    job = Replace(site.ops, site.inventory(), site.pki, o.provision, edited=site.edited)
    await job.run(o.node, o.macs)


async def _adopt(site: Site, o: AdoptOptions) -> Adoption:
    adopted = adopt(site.inventory(), site.ops.store, o.mac, o.name, o.profile, o.ip,
                    o.production_ip, o.disk)  # fmt: skip
    site.edited()
    return adopted


@dataclass(frozen=True)
class Job:
    options: type[Options]
    run: Callable[[Site, Any], Coroutine[Any, Any, Any]]  # (site, options) -> a dataclass|None
    result: Callable[[Any], Any]  # the result again, from its JSON (`to_json`)
    summary: str  # the admin API route's
    # Refused through a server, with the reason: options that would run what the caller
    # gives on the server.
    remote_refusal: Callable[[Any], str | None] = lambda options: None
    leaves_cluster: bool = False


JOBS: Mapping[str, Job] = {
    "rollout": Job(
        RolloutOptions, _rollout, lambda found: RolloutResult(**found),
        "Runbook 7.4, `plasmaboot rollout`: update nodes one at a time, health-gated",
        _caller_commands,
    ),
    "rollback": Job(
        RollbackOptions, _rollback, NodeByNode.reader(NodeRollback),
        "Runbook 9.1, `node rollback`: each node back to its previous system, health-gated",
        _rollback_refusal,
    ),
    "rotate": Job(
        RotateOptions, _rotate, NodeByNode.reader(NodeRotation),
        "Runbook 10.2, `pki rotate`: new node certificates delivered over SSH, services "
        "restarted one node at a time, health-gated",
        lambda o: ssh_options_refusal(o.ssh_options),
    ),
    "rotate-ca": Job(
        RotateCaOptions, _rotate_ca,
        lambda found: None if found is None else CaRotationReport(**found),
        "Runbook 10.2, `pki rotate-ca`: a new CA, trusted beside the old one until every "
        "node has moved (resumable; `status` only reports; through a server, only status)",
        lambda o: ssh_options_refusal(o.ssh_options) or _ca_rotation_refusal(o),
    ),
    "replace": Job(
        ReplaceOptions, _replace, lambda found: None,
        "Runbook 7.2, `node replace`: a node's identity onto new hardware (edits and "
        "reloads this server's inventory), then provision it",
        leaves_cluster=True,
    ),
    "adopt": Job(
        AdoptOptions, _adopt, lambda found: Adoption(**found),
        "`node adopt`: a discovered machine into this server's inventory (edited, reloaded)",
    ),
}  # fmt: skip


def to_json(result: Any) -> Any:
    return asdict(result) if is_dataclass(result) and not isinstance(result, type) else None


def server_site(
    provisioner: Provisioner, log: Callable[[str], None],
    reload: Callable[[], list[str]] | None = None, *, leaves_cluster: bool = False,
    keep_member: bool = False, force: bool = False,
) -> Site:  # fmt: skip
    """What the CLI builds here, on a server's own store, lifecycle service (its
    transitions are counted and heard like any other), inventory file and reload; the
    membership from the inventory's store URLs and the server's operator certificate."""
    pki = pki_dir(provisioner.settings.state_dir)
    membership = inventory_membership(provisioner.inventory, pki)
    ops = NodeOperations(
        provisioner.inventory, provisioner.store,
        membership=membership if leaves_cluster and not keep_member else None,
        keep_member=keep_member, force=force, log=log, lifecycle=provisioner.lifecycle,
    )  # fmt: skip
    return Site(ops, provisioner.settings.inventory_file, pki, membership, reload)


def server_operations(
    provisioner: Provisioner, log: Callable[[str], None], *, leaves_cluster: bool = False,
    keep_member: bool = False, force: bool = False,
) -> NodeOperations:  # fmt: skip
    """`server_site`'s node operations, for the procedures and power."""
    return server_site(provisioner, log, leaves_cluster=leaves_cluster,
                       keep_member=keep_member, force=force).ops  # fmt: skip
