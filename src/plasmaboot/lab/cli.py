"""`plasmaboot lab image|up|down`: the virtual provisioning lab, shown live."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from plasmaboot.lab.qemu import FIRMWARES
from plasmaboot.lab.runner import DEFAULT_NETNS, Lab, LabError, tear_down
from plasmaboot.lifecycle import State
from plasmaboot.store import NodeRecord

app = typer.Typer(no_args_is_help=True, help="A virtual lab: QEMU VMs PXE-boot through serve.")
console = Console()

DEFAULT_CONFIG = Path("examples/lab/cluster.yaml")
DEFAULT_WORKDIR = Path("lab-state")
IMAGE_CACHE = Path.home() / ".cache" / "plasmaboot" / "lab-image"

WorkdirOption = Annotated[Path, typer.Option(help="Where the lab keeps its state and logs.")]


def build_image(assets: Path) -> None:
    from plasmaboot.lab.image import build_lab_image

    with console.status("building the lab image") as status:
        image = build_lab_image(assets, work_dir=IMAGE_CACHE, progress=status.update)
    console.print(f"lab image: {image.kernel}, {image.initrd}")


@app.command("image")
def image(
    out: Annotated[Path, typer.Option(help="Asset directory.")] = DEFAULT_WORKDIR / "assets",
) -> None:
    """Build the lab netboot image (Debian cloud kernel + busybox + lab installer init)."""
    build_image(out)


def _table(nodes: list[NodeRecord], started: float) -> Table:
    table = Table("node", "state", "target", title=f"lab: {time.monotonic() - started:5.0f} s")
    for node in nodes:
        colour = (
            "green"
            if node.state is State.ACTIVE
            else ("red" if node.state.value.endswith("failed") else "yellow")
        )
        table.add_row(
            node.hostname,
            f"[{colour}]{node.state.value}[/]",
            node.target.value if node.target else "",
        )
    return table


@app.command("up")
def up(
    nodes: Annotated[int, typer.Option(min=1, max=4, help="How many lab nodes to boot.")] = 3,
    firmware: Annotated[str, typer.Option(help="bios | uefi | uefi-http")] = "bios",
    config: Annotated[Path, typer.Option("-c", "--config")] = DEFAULT_CONFIG,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all nodes.")] = 900,
    teardown: Annotated[bool, typer.Option(help="Remove the lab when done.")] = False,
) -> None:
    """Create the lab network, start serve, boot VMs and watch them reach `active`.

    Each `lab up` starts a new lab: what a previous one left in the work directory (its
    store, VM disks and logs) is removed first; the built image is kept.
    """
    if firmware not in FIRMWARES:
        raise typer.BadParameter("use bios, uefi or uefi-http", param_hint="--firmware")
    lab = Lab(workdir, config, firmware=firmware)
    build_image(lab.assets)
    names = [n.hostname for n in lab.inventory.nodes[:nodes]]
    ok = False
    try:
        lab.create_network()
        lab.start_server()
        console.print(f"serve is up in namespace {lab.network.netns}: log {lab.server_log}")
        started = time.monotonic()
        for name in names:
            lab.start_vm(name)
        with Live(console=console, refresh_per_second=2) as live:
            ok = lab.wait_for(
                names, State.ACTIVE, timeout, on_tick=lambda ns: live.update(_table(ns, started))
            )
        console.print()
        elapsed = time.monotonic() - started
    except LabError as exc:
        console.print(f"[red]lab failed:[/red] {exc}")
        elapsed = 0.0
    finally:
        if teardown:
            for line in lab.down():
                console.print(f"removed {line}")
    if not ok:
        console.print(
            f"[red]not every node reached active[/red]; look at {lab.server_log} "
            f"and {lab.vm_dir}/*.console.log"
        )
        raise typer.Exit(1)
    console.print(f"[green]{len(names)} node(s) active in {elapsed:.0f} s[/green] ({firmware})")
    console.print(f"events: plasmaboot node events NODE --state-dir {lab.state_dir}")
    if not teardown:
        console.print("the lab keeps running; remove it with: plasmaboot lab down")


@app.command("down")
def down(workdir: WorkdirOption = DEFAULT_WORKDIR, netns: str = DEFAULT_NETNS) -> None:
    """Remove everything a lab created, also after a crash."""
    removed = tear_down(workdir.resolve(), netns)
    for line in removed:
        console.print(f"removed {line}")
    if not removed:
        console.print("no lab to remove")
