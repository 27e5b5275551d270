"""The node procedures by name: what `plasmaboot node NAME` runs here, and what the admin
API's `POST /api/v1/nodes/{hostname}/procedures/{NAME}` runs on a server for a remote
CLI. A new procedure is one entry in `PROCEDURES` (and its CLI command): the API route
and the remote client take it from there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from plasmaboot.cluster.membership import inventory_membership
from plasmaboot.lifecycle import IllegalTransition
from plasmaboot.operations.nodes import NodeOperations, OperationError, OperationFailed
from plasmaboot.power import PowerError
from plasmaboot.provision import Provisioner
from plasmaboot.provision.nodefiles import pki_dir
from plasmaboot.store import UnknownNode

Run = Callable[[NodeOperations, str], Awaitable[None] | None]
# What the CLI reports as `refused:` (or `failed:`, OperationFailed) without a traceback.
REFUSALS = (OperationError, IllegalTransition, UnknownNode, PowerError)


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


def server_operations(
    provisioner: Provisioner, log: Callable[[str], None], *, leaves_cluster: bool = False,
    keep_member: bool = False, force: bool = False,
) -> NodeOperations:  # fmt: skip
    """What `plasmaboot node ...` builds here, on a server's own store and lifecycle
    service (its transitions are counted and heard like any other); the membership from
    the inventory's store URLs and the server's operator certificate."""
    membership = None
    if leaves_cluster and not keep_member:
        membership = inventory_membership(
            provisioner.inventory, pki_dir(provisioner.settings.state_dir)
        )
    return NodeOperations(
        provisioner.inventory, provisioner.store, membership=membership,
        keep_member=keep_member, force=force, log=log, lifecycle=provisioner.lifecycle,
    )  # fmt: skip
