"""``plasmaboot cluster``: verify (members, leader, health, cert expiry), remove, backup
and restore (runbook 9.3/9.4)."""

from __future__ import annotations

import datetime as dt
import enum
import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from plasmaboot.cli_common import (
    DEFAULT_STATE_DIR,
    CaOption,
    ServerOption,
    StateDirOption,
    StoreOption,
    TokenFileOption,
    load_or_exit,
    remote_errors,
    store_location,
)
from plasmaboot.cluster.archive import MANIFEST, ArchiveError, ServerSources, restore_server_state
from plasmaboot.cluster.backup import BackupError, ProgressCallback, take_backup
from plasmaboot.cluster.membership import QuorumRefused, config_membership
from plasmaboot.cluster.restore import (
    LocalRunner,
    NodeRunner,
    RestoreError,
    RestoreMember,
    SshRunner,
    plan_restore,
    restore_members,
    run_plan,
    verify_backup,
)
from plasmaboot.cluster.verify import report_json, verify_cluster, verify_services
from plasmaboot.firstboot.backends import ClusterUnreachable, MembershipError, make_backend
from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.firstboot.config import ConfigError, FirstBootConfig, load_config
from plasmaboot.firstboot.retry import Backoff
from plasmaboot.remote import AdminApi, admin_token, ca_file
from plasmaboot.render.etcd import STORE_SERVICE
from plasmaboot.store.dump import DumpError

app = typer.Typer(help="Check and change cluster membership; back up and restore the store.")

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="A node's cluster-config.json (URLs + TLS).")
]
ServiceOption = Annotated[
    list[str] | None,
    typer.Option("--service", help="chainfire and/or flaredb (default: every configured one)."),
]


def _load(config: Path) -> FirstBootConfig:
    try:
        return load_config(config)
    except ConfigError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=3) from error


def _client(plan: FirstBootConfig, config: Path) -> httpx.Client:
    try:
        return http_client(plan.tls)
    except OSError as error:
        typer.echo(f"error: {config}: cannot load the tls files: {error}; fix the paths", err=True)
        raise typer.Exit(code=3) from error


def _print(report: dict[str, Any], console: Console) -> None:
    """One service's report (`report_json`'s shape: the same here and from a server)."""
    table = Table("name", "id", "peer URLs", "role", "health", title=report["service"])
    for m in report["members"]:
        role = "leader" if m["is_leader"] else "learner" if m["is_learner"] else "follower"
        health = {True: "healthy", False: "UNHEALTHY", None: "?"}[m["healthy"]]
        table.add_row(m["name"] or "(unstarted)", m["id"], ", ".join(m["peer_urls"]), role, health)
    console.print(table)
    for cert in report["certs"]:
        not_after = dt.datetime.fromisoformat(cert["not_after"])
        days = (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400
        console.print(f"certificate {cert['path']}: expires {not_after:%Y-%m-%d} ({days:.0f} days)")


def _local_only(command: str, server: str | None, instead: str) -> None:
    """These commands use files here (a member's cluster-config.json and TLS files, a
    backup directory, SSH keys); a server cannot do them for this machine."""
    if server:
        typer.echo(f"error: `plasmaboot cluster {command}` runs only here: {instead}", err=True)
        raise typer.Exit(code=2)


LocalOnly = Annotated[
    str | None,
    typer.Option("--server", hidden=True, help="Refused: this command runs only here."),
]


@app.command("verify")
def verify_command(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", show_default=False,
                     help="A node's cluster-config.json (URLs + TLS); not with --server."),
    ] = None,
    service: ServiceOption = None,
    expect_members: Annotated[int | None, typer.Option("--expect-members", min=1)] = None,
    min_cert_days: Annotated[float, typer.Option("--min-cert-days")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    ca: CaOption = None,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
) -> None:  # fmt: skip
    """List members, leader, health and cert expiry; exit 1 if any check fails.

    With --server the server checks, through its inventory's store URLs and its operator
    certificate (whose expiry is the one checked)."""
    if server:
        if config is not None:
            typer.echo("error: -c with --server: the server uses its inventory's store "
                       "URLs and certificate; drop -c, or drop --server", err=True)  # fmt: skip
            raise typer.Exit(code=2)
        params = {"service": service or [], "min_cert_days": min_cert_days,
                  **({"expect_members": expect_members} if expect_members else {})}  # fmt: skip
        with remote_errors():
            api = AdminApi(server, admin_token(token_file), ca_file(ca, state_dir))
            try:
                payload = api.get("/api/v1/cluster/verify", params)
            finally:
                api.close()
    elif config is None:
        typer.echo("error: -c CLUSTER-CONFIG.json is needed here, or --server URL", err=True)
        raise typer.Exit(code=2)
    else:
        plan = _load(config)
        try:
            reports = verify_services(plan.services, plan.tls, service or (), expect_members,
                                      min_cert_days)  # fmt: skip
        except OSError as error:
            typer.echo(
                f"error: {config}: cannot load the tls files: {error}; fix the paths", err=True
            )
            raise typer.Exit(code=3) from error
        payload = [report_json(r) for r in reports]
    if as_json:
        typer.echo(json.dumps(payload))
    else:
        console = Console()
        for report in payload:
            _print(report, console)
            for problem in report["problems"]:
                console.print(f"[red]problem:[/red] {problem}")
    raise typer.Exit(code=0 if all(r["ok"] for r in payload) else 1)


@app.command("remove")
def remove_command(
    config: ConfigOption,
    name: Annotated[str, typer.Argument(help="Member (node) name, e.g. node02.")],
    service: ServiceOption = None,
    wait_s: Annotated[
        float, typer.Option("--wait-s", help="Keep retrying while the cluster refuses.")
    ] = 30.0,
    force: Annotated[
        bool, typer.Option("--force", help="Remove it even when that breaks the quorum.")
    ] = False,
    server: LocalOnly = None,
) -> None:
    """Remove a member (runbook 7.2/7.6) from each configured service's cluster.

    A removal that would leave the cluster without a healthy quorum (or end it) is refused,
    changing nothing, unless --force. etcd refuses reconfiguration until every voting
    member has been connected for a few seconds (``unhealthy cluster``), so the removal is
    retried with backoff for ``--wait-s``. Local only (a member's cluster-config.json and
    TLS files here).
    """
    _local_only("remove", server, "it needs a member's cluster-config.json and TLS files "
                "on this machine. Through a server, `plasmaboot node decommission NODE "
                "--server URL` (or reprovision) removes the node from the cluster")  # fmt: skip
    membership = config_membership(_load(config), wait_s=wait_s, services=service)
    try:
        membership.check(name, force=force)  # every service first: all or none is removed
    except QuorumRefused as error:
        typer.echo(f"error: {error}; nothing was removed (--force removes it anyway)", err=True)
        raise typer.Exit(code=1) from error
    except OSError as error:
        typer.echo(f"error: {config}: cannot load the tls files: {error}; fix the paths", err=True)
        raise typer.Exit(code=3) from error
    except (ClusterUnreachable, MembershipError) as error:
        typer.echo(f"error: {error}; nothing was removed", err=True)
        raise typer.Exit(code=1) from error
    try:
        removals = membership.remove(name, force=force)
    except (ClusterUnreachable, MembershipError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    for removal in removals:
        typer.echo(f"{name}: {removal.line(name)}")


@app.command("backup")
def backup_command(
    config: ConfigOption,
    out: Annotated[Path, typer.Option("--out", help="The archive to write (a new file).")],
    inventory: Annotated[
        Path | None,
        typer.Option("--inventory", dir_okay=False, help="The inventory (cluster.yaml); required."),
    ] = None,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store: StoreOption = None,
    service: ServiceOption = None,
    server: LocalOnly = None,
) -> None:
    """Runbook 9.4: one archive of the cluster store's snapshot (taken through its API) and
    the provisioning server's own store (copied online), PKI and inventory, with a manifest.

    The snapshot comes from the leader (else a healthy member) and is checked against its
    sha256 trailer and with etcdctl when installed; every file is listed with its sha256; a
    failure leaves nothing. The archive holds the CA key: it is 0600, keep it that way.
    Local only (the snapshot is taken here, with a member's cluster-config.json and TLS).
    """
    _local_only("backup", server, "it writes the archive on this machine with a member's "
                "cluster-config.json and TLS files; run it where those are, without "
                "--server")  # fmt: skip
    if inventory is None:  # checked after --server, whose refusal says more
        typer.echo("error: --inventory cluster.yaml is required: the archive holds the "
                   "inventory with the store's snapshot", err=True)  # fmt: skip
        raise typer.Exit(code=2)
    plan = _load(config)
    inv = load_or_exit(inventory)
    if plan.cluster_name and plan.cluster_name != inv.cluster.name:
        typer.echo(f"error: {config} is for cluster {plan.cluster_name}, {inventory} describes "
                   f"{inv.cluster.name}; pass the matching inventory", err=True)  # fmt: skip
        raise typer.Exit(code=1)
    sources = ServerSources(inventory, state_dir, store_location(store, state_dir))
    console = Console(stderr=True)
    columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
    with (
        _client(plan, config) as client,
        Progress(*columns, console=console, transient=True) as progress,
    ):

        def track(name: str) -> ProgressCallback:
            task = progress.add_task(f"{name} snapshot", total=None)
            return lambda done, total: progress.update(task, completed=done, total=total)

        try:
            result = take_backup(plan, client, out, sources, service, track)
        except (BackupError, OSError) as error:
            typer.echo(f"error: {error}; nothing was written to {out}", err=True)
            raise typer.Exit(code=1) from error
    for entry in result.manifest["snapshots"]:
        member, status = entry["member"], entry["etcdctl_status"]
        checked = "sha256 trailer" + (
            f", etcdctl snapshot status (revision {status['revision']}, "
            f"{status['total_keys']} keys)"
            if status
            else " (etcdctl not installed)"
        )
        typer.echo(
            f"{entry['service']}: {entry['size']} bytes from {member['name']} "
            f"({member['role']}, {member['client_url']}), cluster {entry['cluster_id']}, "
            f"revision {entry['revision']}; verified: {checked}; sha256 {entry['sha256']}"
        )
    kept = result.manifest["plasmaboot"]["store"]
    typer.echo(f"plasmaboot: its {kept['kind']} store (schema {kept['schema_version']}), "
               "PKI and inventory")  # fmt: skip
    files = result.manifest["files"]
    typer.echo(f"backup written to {result.archive} ({len(files)} files, each with its sha256 "
               f"in {MANIFEST}; it holds the CA key: keep it 0600)")  # fmt: skip


class RunnerKind(enum.StrEnum):
    ssh = "ssh"
    local = "local"


def _wait_verified(verify_config: Path, expect: int, wait_s: float) -> bool:
    plan = _load(verify_config)
    svc = next((s for s in plan.services if s.service == STORE_SERVICE), None)
    if svc is None:
        typer.echo(f"error: {verify_config}: no {STORE_SERVICE} service in it", err=True)
        return False
    problems: list[str] = []
    with _client(plan, verify_config) as client:
        backend = make_backend(svc, client)
        for _ in Backoff(1.0, 5.0).until(wait_s):
            urls = [svc.client_url, *svc.candidate_urls()]
            report = verify_cluster(svc.service, backend, urls, expect)
            if report.ok:
                names = ", ".join(sorted(m.name for m in report.members))
                typer.echo(f"verified: {len(report.members)} healthy members ({names}), 1 leader")
                return True
            problems = report.problems
    typer.echo(f"error: not healthy within {wait_s:.0f}s: {'; '.join(problems)}", err=True)
    return False


def _node_runner(
    runner: RunnerKind, local_root: Path | None, ssh_option: list[str] | None
) -> NodeRunner:
    if runner is RunnerKind.ssh:
        return SshRunner(ssh_option or ())
    if local_root is None:
        typer.echo("error: --runner local needs --local-root DIR", err=True)
        raise typer.Exit(code=2)
    return LocalRunner(local_root)


def _restore(
    backup: Path,
    scratch: Path,
    inventory: Path | None,
    yes: bool,
    server_state: Path | None,
    store: str | None,
    node_runner: NodeRunner,
) -> list[RestoreMember]:
    """Verify the archive (extracted into `scratch`), then rebuild: the provisioning
    server's state when asked, then every store member. Returns the members."""
    try:
        verified = verify_backup(backup, scratch)
    except RestoreError as error:
        typer.echo(f"error: {error}; nothing was touched", err=True)
        raise typer.Exit(code=1) from error
    inv = load_or_exit(inventory or verified.inventory)
    try:
        members = restore_members(inv)
    except RestoreError as error:
        typer.echo(f"error: {error}; nothing was touched", err=True)
        raise typer.Exit(code=1) from error
    if verified.cluster_name and verified.cluster_name != inv.cluster.name:
        typer.echo(
            f"error: {backup} is a backup of cluster {verified.cluster_name}, "
            f"{inventory or verified.inventory} "
            f"describes {inv.cluster.name}; pass the matching inventory; nothing was touched",
            err=True,
        )
        raise typer.Exit(code=1)
    entry = verified.entry
    typer.echo(
        f"backup {backup}: {STORE_SERVICE} snapshot of revision {entry.get('revision')} from "
        f"{entry.get('member', {}).get('name')}, taken {verified.created}; every file's "
        "sha256 verified"
    )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    steps = plan_restore(members, verified.snapshot, stamp)
    if not yes:
        if server_state is not None:
            typer.echo(f"  [server] rebuild plasmaboot's store, PKI, inventory in {server_state}")
        for step in steps:
            typer.echo(f"  [{step.phase}] {step.member.name}: {step.what}")
        typer.echo(
            f"refused: this replaces the data of {', '.join(m.name for m in members)} with the "
            f"backup (every write since {verified.created} is lost); pass --yes to do it",
            err=True,
        )
        raise typer.Exit(code=1)
    try:
        if server_state is not None:
            for line in restore_server_state(verified.directory, verified.manifest,
                                             server_state, store):  # fmt: skip
                typer.echo(f"[server] {line}")
        run_plan(steps, node_runner, typer.echo)
    except (RestoreError, ArchiveError, DumpError, OSError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from error
    return members


@app.command("restore")
def restore_command(
    backup: Annotated[Path, typer.Option("--backup", help="An archive `backup` wrote.")],
    inventory: Annotated[
        Path | None,
        typer.Option(
            "-c", "--config", help="The inventory (cluster.yaml); default: the archive's own."
        ),
    ] = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Replace every member's data with the backup.")
    ] = False,
    runner: Annotated[
        RunnerKind,
        typer.Option(help="ssh: as root on each node; local: this machine, see --local-root."),
    ] = RunnerKind.ssh,
    local_root: Annotated[
        Path | None,
        typer.Option("--local-root", help="local runner: member NAME's files are in DIR/NAME/."),
    ] = None,
    ssh_option: Annotated[
        list[str] | None,
        typer.Option("--ssh-option", help="Extra ssh -o OPTION, e.g. IdentityFile=KEY, Port=N."),
    ] = None,
    verify_config: Annotated[
        Path | None,
        typer.Option("--verify-config", help="A cluster-config.json: wait for a healthy cluster."),
    ] = None,
    wait_s: Annotated[float, typer.Option("--wait-s", help="How long to wait for it.")] = 120.0,
    server_state: Annotated[
        Path | None,
        typer.Option(
            "--server-state",
            help="Also rebuild the provisioning server's state (store, PKI, inventory) into "
            "this new state directory.",
        ),
    ] = None,
    store: StoreOption = None,
    server: LocalOnly = None,
) -> None:
    """Runbook 9.3 (complete cluster loss): rebuild every store member from a backup.

    Verifies every file of the archive first; with --server-state, rebuilds the provisioning
    server's store, PKI and inventory in that new directory (--store: into an empty
    PostgreSQL database); then, phase by phase on every member of the inventory's cluster:
    check etcdctl, stop etcd, `etcdctl snapshot restore` into a fresh directory, swap it in
    (the old one is kept), start etcd. Without --yes it only prints the plan.
    Local only (the archive here, SSH to each member from here).
    """
    _local_only("restore", server, "it reads the backup here and reaches each member over "
                "SSH from this machine; run it without --server")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="plasmaboot-restore-") as scratch:
        members = _restore(backup, Path(scratch), inventory, yes, server_state, store,
                           _node_runner(runner, local_root, ssh_option))  # fmt: skip
    typer.echo(f"restored {len(members)} members from {backup}")
    if verify_config is not None:
        if not _wait_verified(verify_config, len(members), wait_s):
            raise typer.Exit(code=1)
    else:
        typer.echo(
            "next: plasmaboot cluster verify -c cluster-config.json "
            f"--expect-members {len(members)}"
        )
