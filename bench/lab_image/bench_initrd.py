"""Packing the lab initrd: plasmaboot's newc writer against GNU cpio + gzip, same files.

Side by side in the same run, on the same inputs (busybox and its applet links, the
virtio modules, the init scripts), several rounds, medians:

* ``plasmaboot``: ``plasmaboot.lab.image.initramfs`` (newc in Python, gzip -9, mtime 0);
* ``cpio``: ``find . | cpio -o -H newc -R 0:0 --reproducible | gzip -9 -n`` over the same
  tree, unpacked once from plasmaboot's own archive by the real cpio (less /dev/console,
  which only root could create).

Also times a whole ``build_lab_image`` into a fresh directory with a warm package cache,
and a second call that finds the image up to date. Usage:
python bench/lab_image/bench_initrd.py [--rounds N]
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from plasmaboot.lab import image

PEER = (
    "find . -mindepth 1 | LC_ALL=C sort"
    " | cpio -o -H newc -R 0:0 --reproducible --quiet | gzip -9 -n"
)


def timed(action: Callable[[], object], rounds: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    if shutil.which("cpio") is None:
        raise SystemExit("cpio is not installed: apt-get install cpio")
    with tempfile.TemporaryDirectory(prefix="pbi-bench-") as scratch:
        root = Path(scratch)
        start = time.perf_counter()
        built = image.build_lab_image(root / "fresh", work_dir=image.DEFAULT_WORK_DIR)
        fresh_s = time.perf_counter() - start
        start = time.perf_counter()
        image.build_lab_image(root / "fresh", work_dir=image.DEFAULT_WORK_DIR)
        cached_s = time.perf_counter() - start

        package = image.kernel_package()
        version = package.removeprefix("linux-image-")
        kernel_root = image.package_root(package, image.DEFAULT_WORK_DIR, print)
        modules_dir = kernel_root / "lib" / "modules" / version / "kernel"
        found = {m: image.find_module(modules_dir, m) for m in image.MODULES}
        modules = {m: p for m, p in found.items() if p is not None}
        busybox = image.package_root(image.BUSYBOX_PACKAGE, image.DEFAULT_WORK_DIR, print)
        busybox /= "bin/busybox"

        tree = root / "tree"
        tree.mkdir()
        subprocess.run(
            ["cpio", "-id", "--quiet", "-f", "dev/console"],
            input=gzip.decompress(built.initrd.read_bytes()),
            cwd=tree,
            check=True,
        )
        ours_s, ours = timed(lambda: image.initramfs(busybox, modules), rounds)
        peer_s, peer = timed(
            lambda: subprocess.run(PEER, shell=True, cwd=tree, capture_output=True).stdout,
            rounds,
        )
    assert isinstance(ours, bytes) and isinstance(peer, bytes)
    print(f"rounds: {rounds} (medians)")
    print(f"plasmaboot newc+gzip: {ours_s * 1000:8.1f} ms  {len(ours):>9} bytes")
    print(f"GNU cpio + gzip -9:   {peer_s * 1000:8.1f} ms  {len(peer):>9} bytes")
    print(f"time ratio plasmaboot/cpio: {ours_s / peer_s:.2f}")
    print(f"size ratio plasmaboot/cpio: {len(ours) / len(peer):.3f}")
    print(f"build_lab_image, fresh out dir, warm package cache: {fresh_s:.2f} s")
    print(f"build_lab_image, up to date: {cached_s * 1000:.1f} ms")


if __name__ == "__main__":
    main()
