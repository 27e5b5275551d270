"""The `plasmaboot` command line: parse, call the module that does the work, print."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from plasmaboot import logs
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
    store_location,
)
from plasmaboot.cluster.cli import app as cluster_app
from plasmaboot.firstboot.cli import firstboot_command
from plasmaboot.lab.cli import app as lab_app
from plasmaboot.operations import cli as operations_cli
from plasmaboot.operations.cli import operator
from plasmaboot.operations.client import OperatorClient
from plasmaboot.operations.day2_cli import JOB_COMMANDS, rotate, rotate_ca
from plasmaboot.operations.day2_cli import rollout as rollout_command
from plasmaboot.pki.cli import app as pki_app
from plasmaboot.render.cli import render_command
from plasmaboot.serve.cli import app as admin_app
from plasmaboot.store import NodeRecord, Store, StoreError, UnknownNode, open_store
from plasmaboot.watch.cli import watch_command

app = typer.Typer(no_args_is_help=True, help="Bare-metal provisioning for PlasmaCloud clusters.")
inventory_app = typer.Typer(no_args_is_help=True, help="Check and import the inventory.")
node_app = typer.Typer(no_args_is_help=True, help="Nodes, their lifecycle state and events.")
app.add_typer(inventory_app, name="inventory")
app.add_typer(node_app, name="node")
app.add_typer(lab_app, name="lab")
app.add_typer(pki_app, name="pki", help="Cluster CA and node certificates (SANs, expiry).")
app.add_typer(cluster_app, name="cluster", help="Operator checks of the running cluster.")
app.add_typer(admin_app, name="admin", help="The admin API: scoped tokens.")
app.command("render")(render_command)
app.command("firstboot")(firstboot_command)
app.command("rollout")(rollout_command)
app.command("watch")(watch_command)
for _command in (*operations_cli.NODE_COMMANDS, *JOB_COMMANDS):
    node_app.command(_command.__name__)(_command)
# They deliver over SSH, so they live above pki's own layer.
pki_app.command("rotate")(rotate)
pki_app.command("rotate-ca")(rotate_ca)


@app.command(
    "agent",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def agent(ctx: typer.Context) -> None:
    """The installer agent: report installer-booted with this machine's hardware facts."""
    from plasmaboot.agent.cli import main as agent_main  # stdlib only, as in the image

    raise typer.Exit(agent_main(ctx.args))


def _store(state_dir: Path, store: str | None = None) -> Store:
    try:
        return open_store(store_location(store, state_dir))
    except StoreError as exc:
        err.print(f"[red]store:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@inventory_app.command("check")
def inventory_check(config: ConfigOption) -> None:
    """Validate the inventory and print every problem at once (exit 1 if any)."""
    inv = load_or_exit(config)
    out.print(
        f"[green]{config}: OK[/green]: cluster {inv.cluster.name}, {len(inv.nodes)} nodes, "
        f"{len(inv.networks)} networks, {len(inv.profiles)} profiles"
    )


@inventory_app.command("import")
def inventory_import(
    config: ConfigOption,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
) -> None:
    """Load the inventory into the store (idempotent; never drops a node's history)."""
    inv = load_or_exit(config)
    store = _store(state_dir, store_at)
    try:
        result = store.import_inventory(inv)
    finally:
        store.close()
    for label, names in (
        ("added", result.added),
        ("updated", result.updated),
        ("removed from inventory (history kept)", result.retired),
    ):
        if names:
            out.print(f"{label}: {', '.join(names)}")
    out.print(f"{len(result.unchanged)} unchanged")


@node_app.command("list")
def node_list(
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
    as_json: JsonOption = False,
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    ca: CaOption = None,
) -> None:
    """Every node with its lifecycle state."""
    with operator(state_dir, store_at, server, token_file, ca, needs_inventory=False) as client:
        nodes = client.list_nodes()
    if as_json:
        print(json.dumps([n.as_json() for n in nodes], indent=2))
        return
    table = Table("node", "state", "target", "profile", "MACs", "provisioning IP", "updated")
    for n in nodes:
        name = n.hostname if n.in_inventory else f"{n.hostname} (not in inventory)"
        table.add_row(
            name,
            n.state.value,
            n.target.value if n.target else "",
            n.profile or "",
            " ".join(n.macs),
            n.provisioning_ip or "",
            _when(n.updated_at),
        )
    out.print(table)


def _node_or_exit(client: OperatorClient, hostname: str) -> NodeRecord:
    try:
        return client.node(hostname)
    except UnknownNode:
        err.print(f"[red]no node named {hostname!r}[/red]; `plasmaboot node list` shows them")
        raise typer.Exit(1) from None


@node_app.command("show")
def node_show(
    hostname: str,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
    as_json: JsonOption = False,
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    ca: CaOption = None,
) -> None:
    """One node: state, target, MACs and its inventory record."""
    with operator(state_dir, store_at, server, token_file, ca, needs_inventory=False) as client:
        node = _node_or_exit(client, hostname)
        power = next(
            (e for e in reversed(client.events(hostname, limit=200))
             if e.event.startswith("power-")),
            None,
        )  # fmt: skip
    if as_json:
        print(json.dumps(node.as_json(), indent=2))
        return
    table = Table(show_header=False)
    for key, value in node.as_json().items():
        if key in ("hardware", "hardware_at"):
            continue
        shown = json.dumps(value) if isinstance(value, dict | list | tuple) else str(value)
        table.add_row(key, shown)
    if power is not None:  # `plasmaboot node power` records each action
        done = f"-> {power.detail.get('state')}" if power.detail.get("ok") else "failed"
        table.add_row("last power action", f"{power.event} {done} ({_when(power.ts)} UTC)")
    out.print(table)
    if node.hardware is None:
        out.print("hardware: not reported yet (the installer agent reports it at boot)")
        return
    reported = f" (reported {_when(node.hardware_at)} UTC)" if node.hardware_at else ""
    out.print(f"hardware{reported}")
    facts = Table(show_header=False)
    for label, line in _hardware_lines(node.hardware):
        facts.add_row(label, Text(line))  # Text: a model name is not rich markup
    out.print(facts)


def _gib(size: object) -> str:
    return f"{size / 2**30:.1f} GiB" if isinstance(size, int) else "size unknown"


def _hardware_lines(hw: dict[str, Any]) -> list[tuple[str, str]]:
    """The stored facts (docs/agent.md) as readable rows: system, CPU, memory, disks, NICs."""
    system, cpu = hw.get("system") or {}, hw.get("cpu") or {}
    board = " ".join(str(system[k]) for k in ("vendor", "product") if system.get(k))
    ids = ", ".join(f"{k} {system[k]}" for k in ("serial", "uuid") if system.get(k))
    rows = [
        ("system", ", ".join(p for p in (board or "unknown vendor and product", ids) if p)),
        ("cpu", f"{cpu.get('count') or '?'} x {cpu.get('model') or 'unknown model'}"),
        ("memory", _gib(hw.get("memory_bytes")) if hw.get("memory_bytes") else "unknown"),
    ]
    for disk in hw.get("disks") or []:
        kind = {True: "rotational", False: "solid state"}.get(disk.get("rotational"), "")
        parts = [disk.get("name"), _gib(disk.get("size_bytes")), disk.get("model"),
                 f"serial {disk['serial']}" if disk.get("serial") else None, kind,
                 "removable" if disk.get("removable") else None]  # fmt: skip
        rows.append(("disk", "  ".join(str(p) for p in parts if p)))
    for nic in hw.get("nics") or []:
        speed = f"{nic['speed_mbps']} Mb/s" if nic.get("speed_mbps") else "speed unknown"
        parts = [nic.get("name"), nic.get("mac") or "no MAC", f"link {nic.get('link')}", speed]
        rows.append(("nic", "  ".join(str(p) for p in parts)))
    return rows


@node_app.command("events")
def node_events(
    hostname: str,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
    as_json: JsonOption = False,
    limit: Annotated[int | None, typer.Option(help="Only the last N events.")] = None,
    server: ServerOption = None,
    token_file: TokenFileOption = None,
    ca: CaOption = None,
) -> None:
    """A node's lifecycle history, oldest first."""
    with operator(state_dir, store_at, server, token_file, ca, needs_inventory=False) as client:
        _node_or_exit(client, hostname)
        events = client.events(hostname, limit=limit)
    if as_json:
        print(json.dumps([asdict(e) for e in events], indent=2))
        return
    table = Table("time (UTC)", "event", "from", "to", "actor", "detail")
    for e in events:
        table.add_row(
            _when(e.ts),
            e.event,
            e.from_state or "",
            e.to_state or "",
            e.actor,
            json.dumps(e.detail) if e.detail else "",
        )
    out.print(table)


def main() -> None:
    # Commands warn on stderr; `serve` (and `firstboot`) set up their own level and format.
    try:
        logs.configure(os.environ.get(logs.LEVEL_ENV) or "WARNING")
    except ValueError as exc:
        err.print(f"[red]logging:[/red] {exc}", highlight=False)
        raise SystemExit(2) from None
    app()


@app.command()
def serve(
    config: ConfigOption,
    state_dir: StateDirOption = DEFAULT_STATE_DIR,
    store_at: StoreOption = None,
    interface: Annotated[
        str | None, typer.Option(help="Answer DHCP (and bind TFTP) only on this interface.")
    ] = None,
    bind: Annotated[
        str,
        typer.Option(
            help="Address HTTP and TFTP listen on. DHCP always listens on every address of "
            "its interface, or it would not hear clients' broadcasts."
        ),
    ] = "0.0.0.0",
    dhcp_port: Annotated[int | None, typer.Option(help="Default: the inventory's (67).")] = None,
    tftp_port: Annotated[int | None, typer.Option(help="Default: the inventory's (69).")] = None,
    http_port: Annotated[int | None, typer.Option(help="Default: the inventory's (8080).")] = None,
    admin_bind: Annotated[
        str | None,
        typer.Option(help="Address of the admin API (TLS). Default: server.admin (127.0.0.1)."),
    ] = None,
    admin_port: Annotated[
        int | None, typer.Option(help="Port of the admin API. Default: server.admin (8443).")
    ] = None,
    proxy_dhcp: Annotated[bool, typer.Option(help="ProxyDHCP beside another DHCP server.")] = False,
    dhcp: Annotated[bool, typer.Option(help="--no-dhcp serves TFTP and HTTP only.")] = True,
    assets: Annotated[
        Path | None, typer.Option(help="Netboot images directory. Default: STATE_DIR/assets.")
    ] = None,
    tftp_root: Annotated[Path, typer.Option(help="iPXE binaries.")] = Path("/usr/lib/ipxe"),
    simulate_disk_boot: Annotated[
        bool, typer.Option(hidden=True, help="Lab only: 'boot from disk' boots the lab image.")
    ] = False,
    log_format: Annotated[
        str | None,
        typer.Option(
            help="json or console. Default: $PLASMABOOT_LOG_FORMAT, else JSON lines unless "
            "stderr is a terminal. The level: $PLASMABOOT_LOG_LEVEL (INFO)."
        ),
    ] = None,
) -> None:
    """Run DHCP, TFTP and HTTP boot, the agent and admin APIs, until SIGTERM."""
    import asyncio

    from plasmaboot.serve.runner import ServeError, ServeOptions, serve_forever

    try:
        logs.configure(os.environ.get(logs.LEVEL_ENV) or "INFO", log_format)
    except ValueError as exc:
        err.print(f"[red]cannot serve:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    options = ServeOptions(
        config=config,
        state_dir=state_dir,
        store=store_at,
        assets_dir=assets or state_dir / "assets",
        tftp_root=tftp_root,
        interface=interface,
        bind=bind,
        dhcp_port=dhcp_port,
        tftp_port=tftp_port,
        http_port=http_port,
        admin_bind=admin_bind,
        admin_port=admin_port,
        proxy_dhcp=proxy_dhcp,
        dhcp=dhcp,
        simulate_disk_boot=simulate_disk_boot,
    )
    try:
        asyncio.run(serve_forever(options))
    except ServeError as exc:
        err.print(f"[red]cannot serve:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
