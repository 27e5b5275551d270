"""Lab timing: seconds from powering on N VMs to all of them `active`, per firmware path.

Each run builds a fresh lab (namespace, serve, QEMU under TCG) and tears it down; the
figure is the median over runs. Run as root:
    .venv/bin/python bench/lab/run.py [--runs 3] [--nodes 3] [--firmware bios,uefi,uefi-http]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from plasmaboot.lab.image import build_lab_image
from plasmaboot.lab.qemu import FIRMWARES
from plasmaboot.lab.runner import Lab
from plasmaboot.lifecycle import State

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 900


def one_run(firmware: str, nodes: int, assets: Path) -> float | None:
    assert firmware in FIRMWARES
    with tempfile.TemporaryDirectory(prefix="pb-bench-lab-") as tmp:
        lab = Lab(Path(tmp), ROOT / "examples/lab/cluster.yaml", netns="pbbenchlab",
                  firmware=firmware, assets=assets)  # fmt: skip
        try:
            lab.create_network()
            lab.start_server()
            names = [n.hostname for n in lab.inventory.nodes[:nodes]]
            started = time.monotonic()
            for name in names:
                lab.start_vm(name)
            ok = lab.wait_for(names, State.ACTIVE, TIMEOUT_S)
            return time.monotonic() - started if ok else None
        finally:
            lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--firmware", default=",".join(FIRMWARES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pb-bench-lab-assets-") as assets:
        build_lab_image(Path(assets))
        for firmware in args.firmware.split(","):
            times = [one_run(firmware, args.nodes, Path(assets)) for _ in range(args.runs)]
            done = [t for t in times if t is not None]
            median = f"{statistics.median(done):.0f} s" if done else "n/a"
            runs = ", ".join("failed" if t is None else f"{t:.0f}" for t in times)
            print(f"{firmware}: {args.nodes} nodes active, median {median} (runs: {runs})",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
