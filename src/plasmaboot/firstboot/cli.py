"""``plasmaboot firstboot``: the typer command the CLI registers, and the process entry."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from plasmaboot.firstboot.agent import STAGES, ExitCode, run_firstboot
from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.firstboot.config import ConfigError, load_config
from plasmaboot.firstboot.logs import configure_logging, service_logger
from plasmaboot.firstboot.markers import DEFAULT_STATE_DIR


def firstboot_command(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="cluster-config.json written by render.")
    ],
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where marker and etcd env files live.")
    ] = DEFAULT_STATE_DIR,
    stage: Annotated[
        str | None,
        typer.Option(help="Run one stage only: " + ", ".join(STAGES) + " (one unit each)."),
    ] = None,
) -> None:
    """Bootstrap or join this node's cluster services (exit 0 ok, 1 failed, 2 already, 3 config)."""
    configure_logging()
    log = service_logger("first-boot", "validate-config")
    if stage is not None and stage not in STAGES:
        log.error(f"unknown --stage {stage!r}; use one of {', '.join(STAGES)}")
        raise typer.Exit(code=ExitCode.INVALID_CONFIG)
    try:
        plan = load_config(config)
    except ConfigError as error:
        for message in error.errors:
            log.error(f"invalid configuration: {error.path}: {message}")
        raise typer.Exit(code=ExitCode.INVALID_CONFIG) from error
    try:
        client = http_client(plan.tls)
    except OSError as error:
        log.error(f"cannot load TLS files from {config}: {error}; fix the tls paths")
        raise typer.Exit(code=ExitCode.INVALID_CONFIG) from error
    with client:
        code = run_firstboot(plan, state_dir, client, only=stage)
    raise typer.Exit(code=int(code))


def main() -> None:
    typer.run(firstboot_command)
