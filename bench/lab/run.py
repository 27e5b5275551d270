"""Lab timing: seconds from powering on N VMs to all of them `active`, per firmware path,
and where the time went (netboot, install, disk boot, join; provision/timeline.py).

`--chain real` (default) runs the whole chain of examples/lab/cluster.yaml: installer
image, `plasmaboot lab install` over SSH, boot from the VM's own disk, etcd formed by the
rendered units. `--chain miniature` runs the busybox miniature of miniature.yaml. Each run
builds a fresh lab (namespace, serve, QEMU under TCG) and tears it down; figures are
medians over runs (phases: over every node of every run). Run as root:
    .venv/bin/python bench/lab/run.py [--runs 3] [--nodes 4] [--firmware bios,uefi]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from plasmaboot.lab.image import build_lab_image
from plasmaboot.lab.installer_image import build_installer_image
from plasmaboot.lab.os_image import build_os_image
from plasmaboot.lab.qemu import FIRMWARES
from plasmaboot.lab.runner import Lab
from plasmaboot.lifecycle import State
from plasmaboot.provision.timeline import PHASES, phase_seconds

ROOT = Path(__file__).resolve().parents[2]
INVENTORIES = {"real": "examples/lab/cluster.yaml", "miniature": "examples/lab/miniature.yaml"}
IMAGE_CACHE = Path.home() / ".cache" / "plasmaboot" / "lab-image"
TIMEOUT_S = 1800


def one_run(
    chain: str, firmware: str, nodes: int, assets: Path
) -> tuple[float | None, list[dict[str, float]]]:
    assert firmware in FIRMWARES
    with tempfile.TemporaryDirectory(prefix="pb-bench-lab-") as tmp:
        lab = Lab(Path(tmp), ROOT / INVENTORIES[chain], netns="pbbenchlab",
                  firmware=firmware, assets=assets)  # fmt: skip
        try:
            lab.create_network()
            lab.start_server()
            names = [n.hostname for n in lab.inventory.nodes[:nodes]]
            started = time.monotonic()
            for name in names:
                lab.start_vm(name)
            ok = lab.wait_for(names, State.ACTIVE, TIMEOUT_S)
            took = time.monotonic() - started if ok else None
            return took, [phase_seconds(lab.event_records(name)) for name in names]
        finally:
            lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", choices=sorted(INVENTORIES), default="real")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--firmware", default="bios")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pb-bench-lab-assets-") as assets:
        if args.chain == "real":
            build_installer_image(Path(assets), cache=IMAGE_CACHE)
            build_os_image(IMAGE_CACHE)
        else:
            build_lab_image(Path(assets))
        for firmware in args.firmware.split(","):
            times, phases = [], []
            for _ in range(args.runs):
                took, per_node = one_run(args.chain, firmware, args.nodes, Path(assets))
                times.append(took)
                phases += per_node
            done = [t for t in times if t is not None]
            median = f"{statistics.median(done):.0f} s" if done else "n/a"
            runs = ", ".join("failed" if t is None else f"{t:.0f}" for t in times)
            split = ", ".join(
                f"{phase} {statistics.median(p[phase] for p in phases if phase in p):.0f} s"
                for phase in PHASES
                if any(phase in p for p in phases)
            )
            print(f"{args.chain} {firmware}: {args.nodes} nodes active, median {median} "
                  f"(runs: {runs}); per node: {split}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
