"""`plasmaboot render TARGET -c CLUSTER.yaml -o DIR`: load, render all in memory, write.

Nothing is written unless the inventory loads and every file of the target renders, so a
broken inventory can never leave half a configuration behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from plasmaboot.inventory import InventoryError, load_inventory
from plasmaboot.render.common import RenderContext, RenderError
from plasmaboot.render.output import write_files
from plasmaboot.render.registry import render, target_names


def render_command(
    target: Annotated[str, typer.Argument(help="What to render: " + ", ".join(target_names()))],
    config: Annotated[Path, typer.Option("-c", "--config", help="The inventory (cluster.yaml)")],
    out: Annotated[Path, typer.Option("-o", "--output", help="Directory to write into")],
) -> None:
    """Render configuration files for TARGET from the inventory."""
    if target not in target_names():
        typer.echo(f"unknown target {target!r}; use one of: {', '.join(target_names())}", err=True)
        raise typer.Exit(2)
    try:
        inv = load_inventory(config)
        files = render(target, inv, RenderContext.for_directory(out))
    except InventoryError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except RenderError as exc:
        typer.echo(f"{config}: cannot render {target}: {exc}", err=True)
        raise typer.Exit(1) from None
    report = write_files(out, files)
    typer.echo(
        f"{target}: {len(report.written)} file(s) written, "
        f"{len(report.unchanged)} unchanged, in {out}"
    )
