"""CLI for the node commands that change what a node runs or is: `plasmaboot node rollback`
(runbook 9.1), `node replace` (runbook 7.2) and `node adopt`. They act here (this
machine's store, inventory file and PKI); the procedures live in rollback.py,
replace.py and adopt.py, the shared options and helpers in cli.py."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.markup import escape

from plasmaboot.cli_common import (
    DEFAULT_STATE_DIR,
    ConfigOption,
    JsonOption,
    StateDirOption,
    StoreOption,
    err,
    out,
)
from plasmaboot.inventory import InventoryError
from plasmaboot.operations.adopt import adopt as adopt_machine
from plasmaboot.operations.cli import (
    ClusterConfig,
    Force,
    HealthTimeout,
    KeepMember,
    Nodes,
    NoGate,
    _gate,
    _open_store,
    _operations,
)
from plasmaboot.operations.nodes import NodeOperations, OperationError, unknown_names
from plasmaboot.operations.procedures import REFUSALS, outcome
from plasmaboot.operations.replace import Replace
from plasmaboot.operations.rollback import Rollback
from plasmaboot.operations.rollout import HEALTH_CHECK, over_ssh
from plasmaboot.provision.nodefiles import pki_dir

SshOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--ssh-option",
        help="Extra ssh -o OPTION for reaching the nodes, e.g. IdentityFile=KEY, Port=N.",
    ),
]


def _refuse_unknown(ops: NodeOperations, nodes: list[str]) -> None:
    """Every unknown name at once, with the closest known names; nothing is done."""
    known = [r.hostname for r in ops.store.list_nodes()] + [n.hostname for n in ops.inventory.nodes]
    unknown = unknown_names(nodes, known)
    if unknown:
        err.print(
            f"[red]refused:[/red] no such node: {escape(', '.join(unknown))}; nothing was done "
            "(`plasmaboot node list` shows the nodes)",
            highlight=False,
        )
        raise typer.Exit(1)


def rollback(
    nodes: Nodes, config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    health: Annotated[str | None, typer.Option(
        help="The node's health check, a command template ({node}, {ip}) run here. "
        f"Default: `{HEALTH_CHECK}` over the same SSH as the rollback.")] = None,
    health_timeout: HealthTimeout = 300, no_health_gate: NoGate = False,
    cluster_config: ClusterConfig = None, ssh_option: SshOptions = None,
    store_at: StoreOption = None, as_json: JsonOption = False,
) -> None:  # fmt: skip
    """Runbook 9.1: switch nodes back to their previous system, one at a time.

    Runs the inventory's server.rollback.command (default `nixos-rebuild switch
    --rollback`) as root over SSH, then the rollout's health gate (the node's health check,
    `cluster verify`); stops at the first failure. Output in the node's events."""
    ops = _operations(config, state_dir, None, store_at)
    if as_json:  # stdout is the JSON document alone; the steps go to stderr
        ops.log = lambda line: err.print(line, markup=False, highlight=False)
    _refuse_unknown(ops, nodes)
    options = ssh_option or []
    check = health or over_ssh(HEALTH_CHECK, options)
    gate = _gate(ops, state_dir, cluster_config, check, health_timeout, no_health_gate)
    try:
        result = asyncio.run(Rollback(ops, gate, options).run(nodes))
    except REFUSALS as exc:
        err.print(f"[red]{outcome(exc)}:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        ops.store.close()
    if as_json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        for node in result.nodes:
            line = "rolled back, healthy" if node.ok else f"failed: {node.reason}"
            out.print(f"{node.node}: {line} (now {node.state})", markup=False, highlight=False,
                      style=None if node.ok else "red", soft_wrap=True)  # fmt: skip
    if not result.ok:
        err.print(f"stopped; not started: {', '.join(result.not_started) or 'none'}",
                  markup=False, highlight=False)  # fmt: skip
        raise typer.Exit(1)


def replace(
    node: Annotated[str, typer.Argument(help="The node whose machine is replaced.")],
    mac: Annotated[list[str], typer.Option(
        "--mac", help="The new machine's MAC (repeat for each NIC the node had).")],
    config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    cluster_config: ClusterConfig = None, store_at: StoreOption = None,
    keep_member: KeepMember = False, force: Force = False,
    no_provision: Annotated[bool, typer.Option(
        "--no-provision", help="Move the identity only; `node provision` it later (after "
        "a running serve reloaded the inventory, say).")] = False,
) -> None:  # fmt: skip
    """Runbook 7.2: move a node's identity to new hardware and provision it.

    Removes the old member from the cluster store (refused, changing nothing, when that
    would break quorum, unless --force), writes the new MACs into cluster.yaml in place and
    the store (history kept), reissues the node certificate (same SANs, new key), then PXE
    boots the new machine once through the node's BMC. Refused if a MAC is another node's."""
    ops = _operations(config, state_dir, cluster_config, store_at, leaves_cluster=True,
                      keep_member=keep_member, force=force)  # fmt: skip
    _refuse_unknown(ops, [node])
    job = Replace(ops, config, pki_dir(state_dir), provision=not no_provision)
    try:
        asyncio.run(job.run(node, mac))
    except REFUSALS as exc:
        err.print(f"[red]{outcome(exc)}:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        ops.store.close()
    out.print(
        f"next: a running `plasmaboot serve` must reload {config} (SIGHUP, or POST "
        "/api/v1/inventory/reload) to lease the new MAC its address"
        + ("" if no_provision else f"; follow the install with `plasmaboot watch {node}`"),
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip


def adopt(
    mac: Annotated[str, typer.Argument(help="The discovered machine's MAC.")],
    name: Annotated[str, typer.Option("--name", help="Its host name, e.g. node07.")],
    profile: Annotated[str, typer.Option("--profile", help="One of the inventory's profiles.")],
    config: ConfigOption, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    ip: Annotated[str | None, typer.Option("--ip", help="Provisioning address. Default: the "
        "first free one of the provisioning network, outside the DHCP pool.")] = None,
    production_ip: Annotated[str | None, typer.Option("--production-ip")] = None,
    disk: Annotated[str | None, typer.Option("--disk", help="Install disk. Default: the "
        "smallest non-removable reported disk of at least 4 GiB.")] = None,
    store_at: StoreOption = None, as_json: JsonOption = False,
) -> None:  # fmt: skip
    """Turn a discovered machine into an inventory node.

    Its entry is written into cluster.yaml in place (comments and order kept), validated
    first (nothing changes when it is refused), then imported, so the discovered record
    becomes the node, its events and hardware facts with it."""
    store = _open_store(state_dir, store_at)
    try:
        adopted = adopt_machine(config, store, mac, name, profile, ip, production_ip, disk)
    except OperationError as exc:
        err.print(f"[red]refused:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except InventoryError as exc:
        err.print(f"[red]refused, {config} unchanged:[/red]", highlight=False)
        for problem in exc.problems:
            err.print(f"  - {problem.render(exc.source)}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    finally:
        store.close()
    if as_json:
        print(json.dumps(asdict(adopted), indent=2))
        return
    out.print(
        f"{adopted.discovered_as} is now {adopted.hostname} ({adopted.state}), written to "
        f"{config}: {json.dumps(adopted.entry)}. Next: reload a running serve, then "
        f"`plasmaboot node provision {adopted.hostname}`",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip


DAY2_COMMANDS = (rollback, replace, adopt)
