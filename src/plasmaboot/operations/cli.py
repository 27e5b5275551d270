"""CLI for the runbook's node procedures: `plasmaboot node provision|reprovision|drain|
maintenance|activate|decommission|power` and `plasmaboot rollout`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from plasmaboot.cli_common import (
    DEFAULT_STATE_DIR,
    ConfigOption,
    JsonOption,
    StateDirOption,
    StoreOption,
    err,
    load_or_exit,
    out,
    store_location,
)
from plasmaboot.cluster.membership import (
    StoreMembership,
    config_membership,
    inventory_membership,
)
from plasmaboot.firstboot.backends import ClusterUnreachable, MembershipError
from plasmaboot.firstboot.config import ConfigError, load_config
from plasmaboot.inventory import Inventory
from plasmaboot.lifecycle import IllegalTransition, State
from plasmaboot.operations.nodes import (
    NodeOperations,
    OperationError,
    OperationFailed,
    unknown_names,
)
from plasmaboot.operations.power import (
    DEFAULT_PARALLEL,
    MAX_PARALLEL,
    PowerCommand,
    power_nodes,
)
from plasmaboot.operations.rollout import (
    DEFAULT_HEALTH_COMMAND,
    DEFAULT_UPDATE_COMMAND,
    HealthGate,
    Rollout,
)
from plasmaboot.power import PowerError
from plasmaboot.provision.nodefiles import pki_dir
from plasmaboot.store import NodeRecord, StoreError, UnknownNode, open_store

Nodes = Annotated[list[str], typer.Argument(help="Node host names.")]
ClusterConfig = Annotated[
    Path | None,
    typer.Option(
        "--cluster-config",
        help="A member's cluster-config.json (URLs + TLS) for the membership change, "
        "instead of the inventory's store URLs and plasmaboot's operator certificate.",
    ),
]
KeepMember = Annotated[
    bool,
    typer.Option(
        "--keep-member",
        help="Leave the cluster membership unchanged (default: remove the node from it).",
    ),
]
Force = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Remove the node from the cluster even when that leaves no quorum of healthy "
        "voting members, or no member at all.",
    ),
]
Watch = Annotated[float, typer.Option(help="Seconds to watch the nodes reach active (0: no).")]


def _membership(inv: Inventory, state_dir: Path, cluster_config: Path | None) -> StoreMembership:
    """The cluster-config.json's URLs and TLS when given, else the inventory's store URLs
    with plasmaboot's operator certificate (issued from its PKI on first use)."""
    if cluster_config is None:
        return inventory_membership(inv, pki_dir(state_dir))
    try:
        return config_membership(load_config(cluster_config), inv)
    except ConfigError as exc:
        err.print(f"[red]refused:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _operations(
    config: Path, state_dir: Path, cluster_config: Path | None, store_at: str | None = None,
    *, leaves_cluster: bool = False, keep_member: bool = False, force: bool = False,
) -> NodeOperations:  # fmt: skip
    inv = load_or_exit(config)
    membership = None
    if leaves_cluster and not keep_member:
        membership = _membership(inv, state_dir, cluster_config)
    try:
        store = open_store(store_location(store_at, state_dir))
    except StoreError as exc:
        err.print(f"[red]store:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    return NodeOperations(
        inv, store, membership=membership, keep_member=keep_member, force=force,
        log=lambda line: out.print(line, highlight=False),
    )  # fmt: skip


Procedure = Callable[[NodeOperations, str], Coroutine[Any, Any, None] | None]


def _each(ops: NodeOperations, nodes: list[str], procedure: Procedure) -> None:
    """Run one procedure per node; a refused step is a clear error and exit 1, never a
    traceback (nodes already handled stay handled). Unknown names are refused first, all
    at once, with the closest known names."""
    known = [r.hostname for r in ops.store.list_nodes()] + [n.hostname for n in ops.inventory.nodes]
    unknown = unknown_names(nodes, known)
    if unknown:
        err.print(
            f"[red]refused:[/red] no such node: {escape(', '.join(unknown))}; nothing was done "
            "(`plasmaboot node list` shows the nodes)",
            highlight=False,
        )
        raise typer.Exit(1)
    for name in nodes:
        try:
            pending = procedure(ops, name)
            if pending is not None:
                asyncio.run(pending)
        except (OperationError, IllegalTransition, UnknownNode, PowerError) as exc:
            what = "failed" if isinstance(exc, OperationFailed) else "refused"
            err.print(f"[red]{what}:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None


def _watch(ops: NodeOperations, nodes: list[str], seconds: float) -> None:
    if seconds <= 0:
        return

    def table(records: list[NodeRecord]) -> Table:
        view = Table("node", "state", "target")
        for r in records:
            view.add_row(r.hostname, r.state.value, r.target.value if r.target else "")
        return view

    with Live(console=out, refresh_per_second=2) as live:
        final = asyncio.run(
            ops.watch(nodes, State.ACTIVE, seconds, on_tick=lambda rs: live.update(table(rs)))
        )
    stuck = {n: s.value for n, s in final.items() if s is not State.ACTIVE}
    if stuck:
        err.print(f"[red]not active:[/red] {stuck}; see `plasmaboot node events NODE`")
        raise typer.Exit(1)


def provision(
    nodes: Nodes, config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    watch: Watch = 1800, store_at: StoreOption = None,
) -> None:  # fmt: skip
    """Runbook 5.2: set PXE boot once, power cycle, and watch each node to active."""
    ops = _operations(config, state_dir, None, store_at)
    _each(ops, nodes, NodeOperations.provision)
    _watch(ops, nodes, watch)


def reprovision(
    nodes: Nodes, config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    cluster_config: ClusterConfig = None, watch: Watch = 1800, store_at: StoreOption = None,
    keep_member: KeepMember = False, force: Force = False,
) -> None:  # fmt: skip
    """Runbook 9.2: remove from the cluster, netboot and reinstall.

    The node leaves the cluster store first (refused, changing nothing, when that would
    break quorum, unless --force); the output says what was done per store service."""
    ops = _operations(config, state_dir, cluster_config, store_at, leaves_cluster=True,
                      keep_member=keep_member, force=force)  # fmt: skip
    _each(ops, nodes, NodeOperations.reprovision)
    _watch(ops, nodes, watch)


def drain(
    nodes: Nodes, config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
) -> None:  # fmt: skip
    """Runbook 7.5: run the inventory's drain command (server.drain.command), then hold
    the node in maintenance; a failed or late drain leaves it active. One node at a time,
    stopping at the first failure."""
    ops = _operations(config, state_dir, None, store_at)
    _each(ops, nodes, NodeOperations.drain)


def maintenance(
    nodes: Nodes, config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
) -> None:  # fmt: skip
    """Put active nodes in maintenance at once (no drain)."""
    ops = _operations(config, state_dir, None, store_at)
    _each(ops, nodes, NodeOperations.maintenance)


def activate(
    nodes: Nodes, config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
) -> None:  # fmt: skip
    """Bring nodes back from maintenance (or an interrupted drain) to active."""
    ops = _operations(config, state_dir, None, store_at)
    _each(ops, nodes, NodeOperations.activate)


def decommission(
    nodes: Nodes, config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    cluster_config: ClusterConfig = None, store_at: StoreOption = None,
    keep_member: KeepMember = False, force: Force = False,
) -> None:  # fmt: skip
    """Runbook 7.6: drain, leave the cluster, power off, mark decommissioned (history kept).

    Leaving the cluster store is checked before the drain: a removal that would break
    quorum is refused, changing nothing, unless --force."""
    ops = _operations(config, state_dir, cluster_config, store_at, leaves_cluster=True,
                      keep_member=keep_member, force=force)  # fmt: skip
    _each(ops, nodes, NodeOperations.decommission)


Health = Annotated[
    str,
    typer.Option(help="The node's health check, a command template ({node}, {ip}) run here."),
]
HealthTimeout = Annotated[float, typer.Option(help="Seconds a node has to pass the health gate.")]
NoGate = Annotated[
    bool,
    typer.Option(
        "--no-health-gate",
        help="Skip the node health check and cluster verify (not recommended).",
    ),
]


def _gate(
    ops: NodeOperations, state_dir: Path, cluster_config: Path | None, health: str,
    timeout: float, off: bool,
) -> HealthGate | None:  # fmt: skip
    """The node's health command, then `cluster verify` through the inventory's store URLs
    (or a cluster-config.json's) when the inventory runs a store."""
    if off:
        return None
    membership = _membership(ops.inventory, state_dir, cluster_config)

    def cluster_check(hostname: str) -> list[str]:
        try:
            return membership.verify(hostname)
        except (MembershipError, ClusterUnreachable, OSError) as error:
            return [str(error)]

    check = cluster_check if membership.services else None
    return HealthGate(ops, health, check, timeout_s=timeout)


def rollout(
    nodes: Nodes, config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    command: Annotated[str, typer.Option(help="Update command template.")] = DEFAULT_UPDATE_COMMAND,
    health: Health = DEFAULT_HEALTH_COMMAND, health_timeout: HealthTimeout = 300,
    no_health_gate: NoGate = False, cluster_config: ClusterConfig = None,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per node update.")] = 3600,
    store_at: StoreOption = None,
) -> None:  # fmt: skip
    """Runbook 7.4: update nodes one at a time; stop at the first failure.

    After each node's update: its health check (default over SSH: systemctl
    is-system-running) and `cluster verify` (one leader, every store member healthy and
    voting), both within --health-timeout; only then the next node."""
    ops = _operations(config, state_dir, None, store_at)
    gate = _gate(ops, state_dir, cluster_config, health, health_timeout, no_health_gate)
    job = Rollout(ops, command, gate, timeout_s=timeout)
    try:
        result = asyncio.run(job.run(nodes))
    except (OperationError, IllegalTransition, UnknownNode) as exc:
        err.print(f"[red]refused:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    out.print(f"updated: {', '.join(result.updated) or 'none'}")
    if not result.ok:
        err.print(
            f"[red]stopped at {result.failed}:[/red] {result.reason}; it is left draining. "
            f"Not started: {', '.join(result.not_started) or 'none'}",
            highlight=False,
        )
        raise typer.Exit(1)


def power(
    action: Annotated[PowerCommand, typer.Argument(help="on | off | cycle | status")],
    nodes: Nodes, config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None, as_json: JsonOption = False,
    pxe_once: Annotated[bool, typer.Option(
        "--pxe-once", help="First set a one-time network boot (in the node's firmware "
        "mode, bios or uefi); with on and cycle.")] = False,
    parallel: Annotated[int, typer.Option(
        help=f"Nodes driven at once (1 to {MAX_PARALLEL}).")] = DEFAULT_PARALLEL,
) -> None:  # fmt: skip
    """Power nodes on, off or cycle them through their BMCs, or read their power state.

    One line per node; exit 1 if any node failed (the line names it and why). on, off and
    cycle are recorded in the node's events."""
    ops = _operations(config, state_dir, None, store_at)
    try:
        results = asyncio.run(power_nodes(ops, action, nodes, pxe_once=pxe_once, parallel=parallel))
    except OperationError as exc:
        err.print(f"[red]refused:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    failed = [r.node for r in results if not r.ok]
    if as_json:
        print(json.dumps([r.as_json() for r in results], indent=2))
    else:
        for r in results:
            out.print(r.line(), style=None if r.ok else "red", markup=False, highlight=False,
                      soft_wrap=True)  # fmt: skip
    if failed:
        err.print(
            f"power {action.value}: {len(failed)} of {len(results)} node(s) failed: "
            f"{', '.join(failed)}",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(1)


NODE_COMMANDS = (provision, reprovision, drain, maintenance, activate, decommission, power)
