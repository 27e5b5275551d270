"""CLI for the runbook's node procedures: `plasmaboot node provision|reprovision|drain|
maintenance|activate|decommission|power` and `plasmaboot rollout`.

The node commands act here (the store, the inventory, the BMCs of this machine) or, with
--server, through a server's admin API (`operator`, operations/client.py); the output is
the same either way. `rollout` runs its commands over SSH from here: it is local only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from plasmaboot.cli_common import (
    DEFAULT_STATE_DIR,
    CaOption,
    ConfigOption,
    JsonOption,
    ServerOption,
    StateDirOption,
    StoreOption,
    TokenFileOption,
    err,
    load_or_exit,
    out,
    remote_errors,
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
from plasmaboot.operations.client import LocalOperator, OperatorClient, RemoteOperator
from plasmaboot.operations.nodes import (
    NodeOperations,
    OperationError,
    unknown_names,
    watch_states,
)
from plasmaboot.operations.power import DEFAULT_PARALLEL, MAX_PARALLEL, PowerCommand
from plasmaboot.operations.procedures import REFUSALS, outcome
from plasmaboot.operations.rollout import (
    DEFAULT_HEALTH_COMMAND,
    DEFAULT_UPDATE_COMMAND,
    HealthGate,
    Rollout,
)
from plasmaboot.provision.nodefiles import pki_dir
from plasmaboot.remote import AdminApi, admin_token, ca_file
from plasmaboot.store import NodeRecord, Store, StoreError, UnknownNode, open_store

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
Config = Annotated[
    Path | None,
    typer.Option(
        "-c", "--config", show_default=False,
        help="The inventory (cluster.yaml); needed to act here, not with --server (the "
        "server's own is used).",
    ),
]  # fmt: skip


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
        inv, store, membership=membership, keep_member=keep_member, force=force, log=_log,
    )  # fmt: skip


def _log(line: str) -> None:
    out.print(line, highlight=False)


@contextmanager
def operator(
    state_dir: Path, store_at: str | None, server: str | None, token_file: Path | None,
    ca: Path | None, config: Path | None = None, *, needs_inventory: bool = True,
    cluster_config: Path | None = None, leaves_cluster: bool = False,
    keep_member: bool = False, force: bool = False,
) -> Iterator[OperatorClient]:  # fmt: skip
    """Where a node command acts: with --server, that server's admin API (it uses its own
    inventory, store, BMC credentials and cluster certificate); else the store here, with
    the inventory when the command drives machines or the lifecycle. Closed after; a
    server that cannot be used is one clear line and exit 1."""
    with remote_errors():
        client: OperatorClient
        if server:
            here = [f for f, given in (("-c/--config", config),
                                       ("--cluster-config", cluster_config)) if given]  # fmt: skip
            if here:
                err.print(
                    f"[red]refused:[/red] {' and '.join(here)} with --server: the server "
                    "acts with its own inventory and cluster settings; drop "
                    f"{' and '.join(here)}, or drop --server to act here",
                    highlight=False, soft_wrap=True,
                )  # fmt: skip
                raise typer.Exit(2)
            api = AdminApi(server, admin_token(token_file), ca_file(ca, state_dir))
            client = RemoteOperator(api, _log, keep_member=keep_member, force=force)
        elif not needs_inventory:
            client = LocalOperator(_open_store(state_dir, store_at))
        elif config is None:
            err.print(
                "[red]refused:[/red] -c/--config CLUSTER.yaml is needed to act here, or "
                "--server URL to act through a server",
                highlight=False, soft_wrap=True,
            )  # fmt: skip
            raise typer.Exit(2)
        else:
            ops = _operations(config, state_dir, cluster_config, store_at,
                              leaves_cluster=leaves_cluster, keep_member=keep_member,
                              force=force)  # fmt: skip
            client = LocalOperator(ops.store, ops)
        try:
            yield client
        finally:
            client.close()


def _open_store(state_dir: Path, store_at: str | None) -> Store:
    try:
        return open_store(store_location(store_at, state_dir))
    except StoreError as exc:
        err.print(f"[red]store:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _each(client: OperatorClient, nodes: list[str], procedure: str) -> None:
    """Run one procedure per node; a refused step is a clear error and exit 1, never a
    traceback (nodes already handled stay handled). Unknown names are refused first, all
    at once, with the closest known names."""
    unknown = unknown_names(nodes, client.known())
    if unknown:
        err.print(
            f"[red]refused:[/red] no such node: {escape(', '.join(unknown))}; nothing was done "
            "(`plasmaboot node list` shows the nodes)",
            highlight=False,
        )
        raise typer.Exit(1)
    for name in nodes:
        try:
            client.run(procedure, name)
        except REFUSALS as exc:
            err.print(f"[red]{outcome(exc)}:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None


def _watch(client: OperatorClient, nodes: list[str], seconds: float) -> None:
    if seconds <= 0:
        return

    def table(records: list[NodeRecord]) -> Table:
        view = Table("node", "state", "target")
        for r in records:
            view.add_row(r.hostname, r.state.value, r.target.value if r.target else "")
        return view

    with Live(console=out, refresh_per_second=2) as live:
        final = asyncio.run(
            watch_states(client.node, nodes, State.ACTIVE, seconds,
                         on_tick=lambda rs: live.update(table(rs)))
        )  # fmt: skip
    stuck = {n: s.value for n, s in final.items() if s is not State.ACTIVE}
    if stuck:
        err.print(f"[red]not active:[/red] {stuck}; see `plasmaboot node events NODE`")
        raise typer.Exit(1)


def provision(
    nodes: Nodes, config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    watch: Watch = 1800, store_at: StoreOption = None, server: ServerOption = None,
    token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Runbook 5.2: set PXE boot once, power cycle, and watch each node to active."""
    with operator(state_dir, store_at, server, token_file, ca, config) as client:
        _each(client, nodes, "provision")
        _watch(client, nodes, watch)


def reprovision(
    nodes: Nodes, config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    cluster_config: ClusterConfig = None, watch: Watch = 1800, store_at: StoreOption = None,
    keep_member: KeepMember = False, force: Force = False, server: ServerOption = None,
    token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Runbook 9.2: remove from the cluster, netboot and reinstall.

    The node leaves the cluster store first (refused, changing nothing, when that would
    break quorum, unless --force); the output says what was done per store service."""
    with operator(state_dir, store_at, server, token_file, ca, config,
                  cluster_config=cluster_config, leaves_cluster=True,
                  keep_member=keep_member, force=force) as client:  # fmt: skip
        _each(client, nodes, "reprovision")
        _watch(client, nodes, watch)


def drain(
    nodes: Nodes, config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None, server: ServerOption = None,
    token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Runbook 7.5: run the inventory's drain command (server.drain.command), then hold
    the node in maintenance; a failed or late drain leaves it active. One node at a time,
    stopping at the first failure."""
    with operator(state_dir, store_at, server, token_file, ca, config) as client:
        _each(client, nodes, "drain")


def maintenance(
    nodes: Nodes, config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None, server: ServerOption = None,
    token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Put active nodes in maintenance at once (no drain)."""
    with operator(state_dir, store_at, server, token_file, ca, config) as client:
        _each(client, nodes, "maintenance")


def activate(
    nodes: Nodes, config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None, server: ServerOption = None,
    token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Bring nodes back from maintenance (or an interrupted drain) to active."""
    with operator(state_dir, store_at, server, token_file, ca, config) as client:
        _each(client, nodes, "activate")


def decommission(
    nodes: Nodes, config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    cluster_config: ClusterConfig = None, store_at: StoreOption = None,
    keep_member: KeepMember = False, force: Force = False, server: ServerOption = None,
    token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Runbook 7.6: drain, leave the cluster, power off, mark decommissioned (history kept).

    Leaving the cluster store is checked before the drain: a removal that would break
    quorum is refused, changing nothing, unless --force."""
    with operator(state_dir, store_at, server, token_file, ca, config,
                  cluster_config=cluster_config, leaves_cluster=True,
                  keep_member=keep_member, force=force) as client:  # fmt: skip
        _each(client, nodes, "decommission")


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
    nodes: Nodes, config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None, as_json: JsonOption = False,
    pxe_once: Annotated[bool, typer.Option(
        "--pxe-once", help="First set a one-time network boot (in the node's firmware "
        "mode, bios or uefi); with on and cycle.")] = False,
    parallel: Annotated[int, typer.Option(
        help=f"Nodes driven at once (1 to {MAX_PARALLEL}).")] = DEFAULT_PARALLEL,
    server: ServerOption = None, token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Power nodes on, off or cycle them through their BMCs, or read their power state.

    One line per node; exit 1 if any node failed (the line names it and why). on, off and
    cycle are recorded in the node's events. With --server the server drives the BMCs."""
    with operator(state_dir, store_at, server, token_file, ca, config) as client:
        try:
            results = client.power(action, nodes, pxe_once=pxe_once, parallel=parallel)
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
