"""``plasmaboot pki``: init / issue / list / renew (thin wrappers over ``authority``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from plasmaboot.pki.authority import PKIError, init_ca, issue_node_cert, list_certs, renew

app = typer.Typer(help="Cluster CA and node certificates (SANs, expiry, renewal).")

PkiDir = Annotated[Path, typer.Option("--pki-dir", help="Directory holding ca.crt/ca.key.")]
Days = Annotated[int, typer.Option("--days", min=1, help="Validity in days.")]


def _fail(error: PKIError) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=1)


@app.command("init")
def init_command(
    pki_dir: PkiDir,
    cluster_name: Annotated[str, typer.Option("--cluster-name")] = "plasmacloud",
    days: Days = 3650,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing CA.")] = False,
) -> None:
    """Create the cluster CA."""
    try:
        paths = init_ca(pki_dir, cluster_name, days=days, force=force)
    except PKIError as error:
        raise _fail(error) from error
    typer.echo(f"CA written: {paths.cert} (key {paths.key}, mode 0600)")


@app.command("issue")
def issue_command(
    pki_dir: PkiDir,
    hostname: Annotated[str, typer.Option("--hostname", help="Short name, e.g. node01.")],
    fqdn: Annotated[str | None, typer.Option("--fqdn", help="e.g. node01.example.com")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="Node address (repeatable).")] = None,
    days: Days = 365,
) -> None:
    """Issue a node certificate with SANs for hostname, FQDN and IPs."""
    try:
        paths = issue_node_cert(pki_dir, hostname, fqdn, ip or [], days=days)
    except PKIError as error:
        raise _fail(error) from error
    typer.echo(f"certificate written: {paths.cert} (key {paths.key}, mode 0600)")


@app.command("list")
def list_command(pki_dir: PkiDir) -> None:
    """List certificates with their SANs and expiry, soonest first."""
    table = Table("name", "kind", "SANs", "expires (UTC)", "days left")
    for info in list_certs(pki_dir):
        sans = ", ".join([*info.dns_names, *info.ip_addresses])
        kind = "CA" if info.is_ca else "node"
        expires = info.not_after.strftime("%Y-%m-%d %H:%M")
        table.add_row(info.name, kind, sans, expires, f"{info.days_left():.0f}")
    Console().print(table)


@app.command("renew")
def renew_command(
    pki_dir: PkiDir,
    hostname: Annotated[str, typer.Option("--hostname")],
    days: Days = 365,
    rotate_key: Annotated[
        bool, typer.Option("--rotate-key", help="Generate a new key instead of keeping it.")
    ] = False,
) -> None:
    """Re-issue a node certificate with the same SANs (keeps the key unless --rotate-key)."""
    try:
        paths = renew(pki_dir, hostname, days=days, rotate_key=rotate_key)
    except PKIError as error:
        raise _fail(error) from error
    action = "new key" if rotate_key else "key kept"
    typer.echo(f"certificate renewed: {paths.cert} ({action})")
