"""CLI for the runbook's node procedures: `plasmaboot node provision|reprovision|drain|
maintenance|activate|decommission|power`, and what every operations command shares.

The commands act here (the store, the inventory, the BMCs of this machine) or, with
--server, through a server's admin API (`operator`, operations/client.py); the output is
the same either way. The jobs (`rollout`, `node rollback|replace|adopt`) are in
day2_cli.py, so that each file reads in one sitting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
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
from plasmaboot.firstboot.config import ConfigError, load_config
from plasmaboot.inventory import Inventory
from plasmaboot.lifecycle import State
from plasmaboot.operations.client import LocalOperator, OperatorClient, RemoteOperator
from plasmaboot.operations.nodes import (
    NodeOperations,
    OperationError,
    unknown_names,
    watch_states,
)
from plasmaboot.operations.power import DEFAULT_PARALLEL, MAX_PARALLEL, PowerCommand
from plasmaboot.operations.procedures import REFUSALS, Site, outcome
from plasmaboot.provision.nodefiles import pki_dir
from plasmaboot.remote import AdminApi, admin_token, ca_file
from plasmaboot.store import NodeRecord, Store, StoreError, open_store

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


def _site(
    config: Path, state_dir: Path, cluster_config: Path | None, store_at: str | None,
    log: Callable[[str], None], *, leaves_cluster: bool = False, keep_member: bool = False,
    force: bool = False,
) -> Site:  # fmt: skip
    """This machine as a job's Site: the inventory file, the store, the PKI, the cluster
    membership (a running serve is the operator's to reload)."""
    inv = load_or_exit(config)
    membership = _membership(inv, state_dir, cluster_config)
    ops = NodeOperations(
        inv, _open_store(state_dir, store_at),
        membership=membership if leaves_cluster and not keep_member else None,
        keep_member=keep_member, force=force, log=log,
    )  # fmt: skip
    return Site(ops, config, pki_dir(state_dir), membership)


def _log(line: str) -> None:
    out.print(line, highlight=False)


def log_to_stderr(line: str) -> None:
    """A procedure's steps when stdout is a JSON document alone (--json)."""
    err.print(line, markup=False, highlight=False)


@contextmanager
def operator(
    state_dir: Path, store_at: str | None, server: str | None, token_file: Path | None,
    ca: Path | None, config: Path | None = None, *, needs_inventory: bool = True,
    cluster_config: Path | None = None, leaves_cluster: bool = False,
    keep_member: bool = False, force: bool = False, log: Callable[[str], None] | None = None,
) -> Iterator[OperatorClient]:  # fmt: skip
    """Where a node command acts: with --server, that server's admin API (it uses its own
    inventory, store, BMC credentials and cluster certificate); else the store here, with
    the inventory when the command drives machines or the lifecycle. Closed after; a
    server that cannot be used is one clear line and exit 1. `log` takes the procedure's
    steps (default: stdout)."""
    log = log or _log
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
            client = RemoteOperator(api, log, keep_member=keep_member, force=force)
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
            site = _site(config, state_dir, cluster_config, store_at, log,
                         leaves_cluster=leaves_cluster, keep_member=keep_member,
                         force=force)  # fmt: skip
            client = LocalOperator(site.ops.store, site)
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


def refuse_unknown(client: OperatorClient, nodes: list[str]) -> None:
    """Every unknown name at once, with the closest known names; nothing is done."""
    unknown = unknown_names(nodes, client.known())
    if unknown:
        err.print(
            f"[red]refused:[/red] no such node: {escape(', '.join(unknown))}; nothing was done "
            "(`plasmaboot node list` shows the nodes)",
            highlight=False,
        )
        raise typer.Exit(1)


def _each(client: OperatorClient, nodes: list[str], procedure: str) -> None:
    """Run one procedure per node; a refused step is a clear error and exit 1, never a
    traceback (nodes already handled stay handled). Unknown names are refused first."""
    refuse_unknown(client, nodes)
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
