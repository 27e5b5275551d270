"""``plasmaboot cluster``: verify (members, leader, health, cert expiry) and remove."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from plasmaboot.cluster.membership import remove_member
from plasmaboot.cluster.verify import ClusterReport, verify_cluster
from plasmaboot.firstboot.backends import MembershipError, make_backend
from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.firstboot.config import ConfigError, FirstBootConfig, load_config

app = typer.Typer(help="Check and change cluster membership.")

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


def _print(report: ClusterReport, console: Console) -> None:
    table = Table("name", "id", "peer URLs", "role", "health", title=report.service)
    for m in report.members:
        role = "leader" if m.is_leader else "learner" if m.is_learner else "follower"
        health = {True: "healthy", False: "UNHEALTHY", None: "?"}[m.healthy]
        table.add_row(m.name or "(unstarted)", m.id, ", ".join(m.peer_urls), role, health)
    console.print(table)
    for info in report.certs:
        console.print(
            f"certificate {info.path}: expires {info.not_after:%Y-%m-%d} "
            f"({info.days_left():.0f} days)"
        )


@app.command("verify")
def verify_command(
    config: ConfigOption,
    service: ServiceOption = None,
    expect_members: Annotated[int | None, typer.Option("--expect-members", min=1)] = None,
    min_cert_days: Annotated[float, typer.Option("--min-cert-days")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List members, leader, health and cert expiry; exit 1 if any check fails."""
    plan = _load(config)
    certs = [plan.tls.node_cert, plan.tls.ca_cert] if plan.tls else []
    reports = []
    with _client(plan, config) as client:
        for svc in plan.services:
            if service and svc.service not in service:
                continue
            backend = make_backend(svc, client)
            urls = [svc.client_url, *svc.candidate_urls()]
            reports.append(
                verify_cluster(svc.service, backend, urls, expect_members, certs, min_cert_days)
            )
    if as_json:
        payload = [
            {
                "service": r.service,
                "ok": r.ok,
                "problems": r.problems,
                "members": [asdict(m) for m in r.members],
                "certs": [
                    {"path": str(c.path), "not_after": c.not_after.isoformat()} for c in r.certs
                ],
            }
            for r in reports
        ]
        typer.echo(json.dumps(payload))
    else:
        console = Console()
        for report in reports:
            _print(report, console)
            for problem in report.problems:
                console.print(f"[red]problem:[/red] {problem}")
    raise typer.Exit(code=0 if all(r.ok for r in reports) else 1)


@app.command("remove")
def remove_command(
    config: ConfigOption,
    name: Annotated[str, typer.Argument(help="Member (node) name, e.g. node02.")],
    service: ServiceOption = None,
    wait_s: Annotated[
        float, typer.Option("--wait-s", help="Keep retrying while the cluster refuses.")
    ] = 30.0,
) -> None:
    """Remove a member (runbook 7.2/7.6) from each configured service's cluster.

    etcd refuses reconfiguration until every voting member has been connected for a few
    seconds (``unhealthy cluster``), so the removal is retried with backoff for ``--wait-s``.
    """
    plan = _load(config)
    with _client(plan, config) as client:
        try:
            removed = remove_member(plan, client, name, service, wait_s)
        except MembershipError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=1) from error
    for svc in removed:
        typer.echo(f"{svc}: removed {name}")
