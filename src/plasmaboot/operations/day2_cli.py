"""CLI for the jobs: `plasmaboot rollout` (runbook 7.4), `node rollback` (9.1), `node
replace` (7.2), `node adopt` and `pki rotate|rotate-ca` (10.2). Like the node procedures
they act here (this machine's store, inventory file and PKI) or, with --server, through a
server's admin API, which runs the same job (operations/procedures.py `JOBS`) on its own
inventory and reloads it after an edit. The options a server refuses (a command given by
the caller, ssh settings that run one) are refused here first, with the reason.

These are apart from cli.py (the procedures, power, and what every command shares) only
so that each file reads in one sitting.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.markup import escape

from plasmaboot.cli_common import (
    DEFAULT_STATE_DIR,
    CaOption,
    JsonOption,
    ServerOption,
    StateDirOption,
    StoreOption,
    TokenFileOption,
    err,
    out,
)
from plasmaboot.operations.adopt import Adoption, InventoryRefused
from plasmaboot.operations.cli import (
    ClusterConfig,
    Config,
    Force,
    KeepMember,
    Nodes,
    log_to_stderr,
    operator,
    refuse_unknown,
)
from plasmaboot.operations.client import OperatorClient
from plasmaboot.operations.procedures import (
    JOBS,
    REFUSALS,
    AdoptOptions,
    Options,
    ReplaceOptions,
    RollbackOptions,
    RolloutOptions,
    RotateCaOptions,
    RotateOptions,
    outcome,
)
from plasmaboot.operations.rollback import RollbackResult
from plasmaboot.operations.rollout import (
    DEFAULT_HEALTH_COMMAND,
    DEFAULT_UPDATE_COMMAND,
    HEALTH_CHECK,
    RolloutResult,
)
from plasmaboot.operations.rotate import CaRotationReport, RotationResult

HealthTimeout = Annotated[float, typer.Option(help="Seconds a node has to pass the health gate.")]
NoGate = Annotated[
    bool,
    typer.Option(
        "--no-health-gate",
        help="Skip the node health check and cluster verify (not recommended).",
    ),
]
SshOptions = Annotated[
    list[str] | None,
    typer.Option(
        "--ssh-option",
        help="Extra ssh -o OPTION for reaching the nodes, e.g. IdentityFile=KEY, Port=N "
        "(with --server: only settings that run no command).",
    ),
]


def _local_only(server: str | None, name: str, options: Options) -> None:
    """Options a server would refuse: one line, exit 2, before anything is asked."""
    reason = JOBS[name].remote_refusal(options) if server else None
    if reason is not None:
        err.print(f"[red]refused:[/red] {escape(reason)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)


def _job(client: OperatorClient, name: str, options: Options) -> Any:
    """Run the job here or there; a refusal is a clear error and exit 1."""
    try:
        return client.job(name, options)
    except InventoryRefused as exc:
        err.print(f"[red]refused, {escape(exc.file)} unchanged:[/red]", highlight=False)
        for problem in exc.problems:
            err.print(f"  - {problem}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    except REFUSALS as exc:
        err.print(f"[red]{outcome(exc)}:[/red] {escape(str(exc))}", highlight=False,
                  soft_wrap=True)  # fmt: skip
        raise typer.Exit(1) from None


def rollout(
    nodes: Nodes, config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    command: Annotated[str | None, typer.Option(show_default=False, help="Update command "
        f"template. Default: `{DEFAULT_UPDATE_COMMAND}`. Not with --server.")] = None,
    health: Annotated[str | None, typer.Option(show_default=False, help="The node's health "
        f"check, a command template ({{node}}, {{ip}}). Default: `{DEFAULT_HEALTH_COMMAND}`. "
        "Not with --server.")]
        = None,
    health_timeout: HealthTimeout = 300, no_health_gate: NoGate = False,
    cluster_config: ClusterConfig = None,
    timeout: Annotated[float, typer.Option(help="Seconds allowed per node update.")] = 3600,
    store_at: StoreOption = None, server: ServerOption = None,
    token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Runbook 7.4: update nodes one at a time; stop at the first failure.

    After each node's update: its health check (default over SSH: systemctl
    is-system-running) and `cluster verify` (one leader, every store member healthy and
    voting), both within --health-timeout; only then the next node. With --server the
    server runs the default commands."""
    options = RolloutOptions(nodes=nodes, command=command, health=health,
                             health_timeout=health_timeout, no_health_gate=no_health_gate,
                             timeout=timeout)  # fmt: skip
    _local_only(server, "rollout", options)
    with operator(state_dir, store_at, server, token_file, ca, config,
                  cluster_config=cluster_config) as client:  # fmt: skip
        refuse_unknown(client, nodes)
        result: RolloutResult = _job(client, "rollout", options)
    out.print(f"updated: {', '.join(result.updated) or 'none'}")
    if not result.ok:
        err.print(
            f"[red]stopped at {result.failed}:[/red] {escape(result.reason)}; it is left "
            f"draining. Not started: {', '.join(result.not_started) or 'none'}",
            highlight=False,
        )
        raise typer.Exit(1)


def rollback(
    nodes: Nodes, config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    health: Annotated[str | None, typer.Option(
        help="The node's health check, a command template ({node}, {ip}) run here. "
        f"Default: `{HEALTH_CHECK}` over the same SSH as the rollback. Not with --server.")]
        = None,
    health_timeout: HealthTimeout = 300, no_health_gate: NoGate = False,
    cluster_config: ClusterConfig = None, ssh_option: SshOptions = None,
    store_at: StoreOption = None, as_json: JsonOption = False, server: ServerOption = None,
    token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Runbook 9.1: switch nodes back to their previous system, one at a time.

    Runs the inventory's server.rollback.command (default `nixos-rebuild switch
    --rollback`) as root over SSH, then the rollout's health gate (the node's health check,
    `cluster verify`); stops at the first failure. Output in the node's events."""
    options = RollbackOptions(
        nodes=nodes, health=health, health_timeout=health_timeout,
        no_health_gate=no_health_gate, ssh_options=ssh_option or [],
    )  # fmt: skip
    _local_only(server, "rollback", options)
    with operator(state_dir, store_at, server, token_file, ca, config,
                  cluster_config=cluster_config,
                  log=log_to_stderr if as_json else None) as client:  # fmt: skip
        refuse_unknown(client, nodes)
        result: RollbackResult = _job(client, "rollback", options)
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
    config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    cluster_config: ClusterConfig = None, store_at: StoreOption = None,
    keep_member: KeepMember = False, force: Force = False,
    no_provision: Annotated[bool, typer.Option(
        "--no-provision", help="Move the identity only; `node provision` it later (after "
        "a running serve reloaded the inventory, say).")] = False,
    server: ServerOption = None, token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Runbook 7.2: move a node's identity to new hardware and provision it.

    Removes the old member from the cluster store (refused, changing nothing, when that
    would break quorum, unless --force), writes the new MACs into cluster.yaml in place and
    the store (history kept), reissues the node certificate (same SANs, new key), then PXE
    boots the new machine once through the node's BMC. Refused if a MAC is another node's.
    With --server the server edits its own inventory and reloads it before the boot."""
    options = ReplaceOptions(node=node, macs=mac, provision=not no_provision,
                             keep_member=keep_member, force=force)  # fmt: skip
    with operator(state_dir, store_at, server, token_file, ca, config,
                  cluster_config=cluster_config, leaves_cluster=True,
                  keep_member=keep_member, force=force) as client:  # fmt: skip
        refuse_unknown(client, [node])
        _job(client, "replace", options)
    follow = "" if no_provision else f"follow the install with `plasmaboot watch {node}`"
    if server:
        done = follow or f"`plasmaboot node provision {node}` when the machine is ready"
    else:
        done = (f"a running `plasmaboot serve` must reload {config} (SIGHUP, or POST "
                "/api/v1/inventory/reload) to lease the new MAC its address"
                + (f"; {follow}" if follow else ""))  # fmt: skip
    out.print(f"next: {done}", markup=False, highlight=False, soft_wrap=True)


def adopt(
    mac: Annotated[str, typer.Argument(help="The discovered machine's MAC.")],
    name: Annotated[str, typer.Option("--name", help="Its host name, e.g. node07.")],
    profile: Annotated[str, typer.Option("--profile", help="One of the inventory's profiles.")],
    config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    ip: Annotated[str | None, typer.Option("--ip", help="Provisioning address. Default: the "
        "first free one of the provisioning network, outside the DHCP pool.")] = None,
    production_ip: Annotated[str | None, typer.Option("--production-ip")] = None,
    disk: Annotated[str | None, typer.Option("--disk", help="Install disk. Default: the "
        "smallest non-removable reported disk of at least 4 GiB.")] = None,
    store_at: StoreOption = None, as_json: JsonOption = False, server: ServerOption = None,
    token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Turn a discovered machine into an inventory node.

    Its entry is written into cluster.yaml in place (comments and order kept), validated
    first (nothing changes when it is refused), then imported, so the discovered record
    becomes the node, its events and hardware facts with it. With --server, into the
    server's inventory, which it reloads."""
    options = AdoptOptions(mac=mac, name=name, profile=profile, ip=ip,
                           production_ip=production_ip, disk=disk)  # fmt: skip
    with operator(state_dir, store_at, server, token_file, ca, config,
                  log=log_to_stderr if as_json else None) as client:  # fmt: skip
        adopted: Adoption = _job(client, "adopt", options)
    if as_json:
        print(json.dumps(asdict(adopted), indent=2))
        return
    then = "" if server else "reload a running serve, then "
    out.print(
        f"{adopted.discovered_as} is now {adopted.hostname} ({adopted.state}), written to "
        f"{adopted.inventory}: {json.dumps(adopted.entry)}. Next: {then}"
        f"`plasmaboot node provision {adopted.hostname}`",
        markup=False, highlight=False, soft_wrap=True,
    )  # fmt: skip


RotateKey = Annotated[bool, typer.Option(
    "--rotate-key", help="New private keys too (default: keep each node's key).")]  # fmt: skip
RotateForce = Annotated[bool, typer.Option(
    "--force", help="Restart services even when `cluster verify` fails first (a member "
    "down: a restart may cost the quorum).")]  # fmt: skip


def rotate(
    nodes: Nodes, config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    rotate_key: RotateKey = False, force: RotateForce = False,
    health_timeout: HealthTimeout = 300, no_health_gate: NoGate = False,
    cluster_config: ClusterConfig = None, ssh_option: SshOptions = None,
    store_at: StoreOption = None, as_json: JsonOption = False, server: ServerOption = None,
    token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Runbook 10.2: new node certificates, delivered and loaded one node at a time.

    Per node: reached over SSH as root, its certificate reissued from STATE_DIR/pki (same
    SANs), the CA file, certificate and key written in place atomically, the services that
    read them restarted, then the rollout's health gate; stops at the first failure,
    naming the node and the step. Events in the node's history. Refused while `cluster
    verify` fails, unless --force (--no-health-gate skips that check too)."""
    options = RotateOptions(
        nodes=nodes, rotate_key=rotate_key, force=force, health_timeout=health_timeout,
        no_health_gate=no_health_gate, ssh_options=ssh_option or [],
    )  # fmt: skip
    _local_only(server, "rotate", options)
    with operator(state_dir, store_at, server, token_file, ca, config,
                  cluster_config=cluster_config,
                  log=log_to_stderr if as_json else None) as client:  # fmt: skip
        refuse_unknown(client, nodes)
        result: RotationResult = _job(client, "rotate", options)
    if as_json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        for node in result.nodes:
            line = (f"new certificate {node.serial}, delivered, healthy" if node.ok
                    else f"stopped at {node.step}: {node.reason}")  # fmt: skip
            out.print(f"{node.node}: {line}", markup=False, highlight=False,
                      style=None if node.ok else "red", soft_wrap=True)  # fmt: skip
    if not result.ok:
        err.print(f"stopped; not started: {', '.join(result.not_started) or 'none'}",
                  markup=False, highlight=False)  # fmt: skip
        raise typer.Exit(1)


def _ca_report(report: CaRotationReport) -> None:
    out.print(f"CA rotation: {report.phase} (old CA {report.old_ca}, new CA {report.new_ca})",
              markup=False, highlight=False)  # fmt: skip
    for phase, done in report.finished.items():
        out.print(f"  {phase}: {', '.join(done) or 'no node yet'}", markup=False,
                  highlight=False)  # fmt: skip
    if report.skipped:
        out.print(f"  skipped (--force): {', '.join(report.skipped)}", markup=False,
                  highlight=False)  # fmt: skip
    if report.reissued_here:
        out.print(f"  reissued here from the new CA: {', '.join(report.reissued_here)}; "
                  "restart a running serve for its admin certificate", markup=False,
                  highlight=False, soft_wrap=True)  # fmt: skip


def rotate_ca(
    config: Config = None, state_dir: StateDirOption = DEFAULT_STATE_DIR,
    status: Annotated[bool, typer.Option(
        "--status", help="Only report where a CA rotation is.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Go on without the nodes SSH cannot reach (they keep only the CA "
        "they have), or while `cluster verify` fails.")] = False,
    rotate_key: RotateKey = False, health_timeout: HealthTimeout = 300,
    no_health_gate: NoGate = False, cluster_config: ClusterConfig = None,
    ssh_option: SshOptions = None, store_at: StoreOption = None, as_json: JsonOption = False,
    server: ServerOption = None, token_file: TokenFileOption = None, ca: CaOption = None,
) -> None:  # fmt: skip
    """Runbook 10.2: a new cluster CA, trusted beside the old one until every node moved.

    Phases, each on every installed node (one at a time, health-gated) before the next:
    bundle (the nodes trust the old and the new CA), reissue (node certificates from the
    new CA), drop-old (the new CA alone). Progress is kept in STATE_DIR/pki: run it again
    to resume after a failure. A node SSH cannot reach stops it unless --force."""
    options = RotateCaOptions(status=status, force=force, rotate_key=rotate_key,
                              health_timeout=health_timeout, no_health_gate=no_health_gate,
                              ssh_options=ssh_option or [])  # fmt: skip
    _local_only(server, "rotate-ca", options)
    with operator(state_dir, store_at, server, token_file, ca, config,
                  cluster_config=cluster_config,
                  log=log_to_stderr if as_json else None) as client:  # fmt: skip
        report: CaRotationReport | None = _job(client, "rotate-ca", options)
    if as_json:
        print(json.dumps(asdict(report) if report else None, indent=2))
    elif report is None:
        out.print("no CA rotation in progress", highlight=False)
    else:
        _ca_report(report)
    if report is not None and not report.ok:
        err.print(f"stopped at {report.failed} ({report.step}): {report.reason}. Fix it, then "
                  "run `plasmaboot pki rotate-ca` again to resume", markup=False,
                  highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1)


JOB_COMMANDS = (rollback, replace, adopt)  # `node ...`; rollout, `pki rotate|rotate-ca` apart
