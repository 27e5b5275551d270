"""`plasmaboot lab image|install|up|down`: the virtual provisioning lab, shown live."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from plasmaboot.lab.image import LabImageError
from plasmaboot.lab.qemu import FIRMWARES
from plasmaboot.lab.runner import DEFAULT_NETNS, Lab, LabError, tear_down
from plasmaboot.lifecycle import State
from plasmaboot.provision.timeline import PHASES, phase_seconds
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


def build_real_images(assets: Path) -> None:
    """The installer netboot image and the installed OS image, progress line by line."""
    from plasmaboot.lab.installer_image import build_installer_image
    from plasmaboot.lab.os_image import build_os_image

    started = time.monotonic()

    def say(message: str) -> None:
        # soft_wrap: one line per message also when the output is a pipe or a log
        console.print(f"[{time.monotonic() - started:6.1f} s] {message}", highlight=False,
                      soft_wrap=True)  # fmt: skip

    installer = build_installer_image(assets, cache=IMAGE_CACHE, progress=say)
    console.print(f"installer image: {installer.kernel}, {installer.initrd}", soft_wrap=True)
    os_image = build_os_image(IMAGE_CACHE, progress=say)
    sizes = ", ".join(
        f"{f['name']} {f['bytes'] >> 20} MiB"
        if f["bytes"] >= 1 << 20
        else f"{f['name']} {f['bytes']} bytes"
        for f in os_image.manifest["files"].values()
    )
    console.print(f"installed OS image: {os_image.directory} ({sizes})", soft_wrap=True)


@app.command("image")
def image(
    out: Annotated[Path, typer.Option(help="Asset directory.")] = DEFAULT_WORKDIR / "assets",
    real: Annotated[
        bool,
        typer.Option(
            "--real/--miniature-only",
            help="Also build the installer image and the installed OS (Debian, needs root).",
        ),
    ] = True,
) -> None:
    """Build the lab images: the busybox miniature, the installer and the installed OS.

    Each is cached in the image cache and rebuilt only when its inputs change.
    """
    build_image(out)
    if real:
        try:
            build_real_images(out)
        except LabImageError as exc:
            console.print(f"[red]lab image failed:[/red] {exc}")
            raise typer.Exit(1) from None


@app.command("install")
def install(
    node: Annotated[str, typer.Option(help="The node's hostname (written to /etc/hostname).")],
    ip: Annotated[str, typer.Option(help="The installer's address (root@IP over SSH).")],
    extra_files: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="A tree mirroring the root filesystem, copied onto it (modes kept).",
        ),
    ] = None,
    firmware: Annotated[str, typer.Option(help="bios | uefi: the disk boots with either")] = "bios",
    disk: Annotated[str, typer.Option(help="The disk to install on.")] = "/dev/vda",
    os_image: Annotated[Path | None, typer.Option(help="The OS image directory.")] = None,
    ssh_wait: Annotated[
        float, typer.Option(help="Seconds to wait for the installer's sshd.")
    ] = 180,
    port: Annotated[int, typer.Option(help="The installer's SSH port.")] = 22,
    key: Annotated[
        Path | None, typer.Option(help="SSH private key (default: the lab key).")
    ] = None,
) -> None:
    """Install the lab OS over SSH (the lab's nixos-anywhere); one line per step.

    Partitions the disk, writes the ESP and root images, copies --extra-files, sets the
    hostname, installs the boot loader (BIOS and UEFI) and reboots the installer.
    """
    from plasmaboot.lab.install import InstallError, InstallRequest
    from plasmaboot.lab.install import install as run_install
    from plasmaboot.lab.installer_image import LAB_KEY_NAME
    from plasmaboot.lab.os_image import load_os_image, os_image_dir

    def say(line: str) -> None:
        print(f"plasmaboot-lab-install: {line}", flush=True)

    if firmware not in ("bios", "uefi", "uefi-http"):
        raise typer.BadParameter("use bios or uefi", param_hint="--firmware")
    if extra_files is not None and not extra_files.is_dir():
        say(f"FAILED at step extra-files: {extra_files} is not a directory")
        raise typer.Exit(1)
    try:
        image = load_os_image(os_image or os_image_dir(IMAGE_CACHE))
    except LabImageError as exc:
        say(f"FAILED at step image: {exc}")
        raise typer.Exit(1) from None
    key = key or IMAGE_CACHE / "ssh" / LAB_KEY_NAME
    if not key.is_file():
        say(f"FAILED at step key: no lab SSH key at {key}; build the images with "
            "`plasmaboot lab image`")  # fmt: skip
        raise typer.Exit(1)
    say(f"image {image.directory} checked (sha256); node {node}, firmware {firmware}, {disk}")
    request = InstallRequest(node, ip, extra_files, disk=disk, ssh_wait_s=ssh_wait, port=port)
    try:
        run_install(request, image, key, emit=say)
    except InstallError as exc:
        say(f"FAILED at step {exc.step}: {exc.reason}")
        raise typer.Exit(1) from None


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


def _phases(lab: Lab, names: list[str]) -> Table:
    """Where each node's time went, from its events (provision/timeline.py)."""
    table = Table("node", *PHASES, title="seconds per phase")
    for name in names:
        seconds = phase_seconds(lab.event_records(name))
        table.add_row(name, *(f"{seconds[p]:.0f}" if p in seconds else "-" for p in PHASES))
    return table


@app.command("up")
def up(
    nodes: Annotated[int, typer.Option(min=1, max=4, help="How many lab nodes to boot.")] = 3,
    firmware: Annotated[str, typer.Option(help="bios | uefi | uefi-http")] = "bios",
    config: Annotated[Path, typer.Option("-c", "--config")] = DEFAULT_CONFIG,
    workdir: WorkdirOption = DEFAULT_WORKDIR,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all nodes.")] = 1800,
    teardown: Annotated[bool, typer.Option(help="Remove the lab when done.")] = False,
) -> None:
    """Create the lab network, start serve, boot VMs and watch them reach `active`.

    Each `lab up` starts a new lab: what a previous one left in the work directory (its
    store, VM disks and logs) is removed first; the built image is kept.
    """
    if firmware not in FIRMWARES:
        raise typer.BadParameter("use bios, uefi or uefi-http", param_hint="--firmware")
    lab = Lab(workdir, config, firmware=firmware)
    if lab.real_install:
        try:
            build_real_images(lab.assets)
        except LabImageError as exc:
            console.print(f"[red]lab image failed:[/red] {exc}")
            raise typer.Exit(1) from None
    else:
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
        console.print(_phases(lab, names))
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
