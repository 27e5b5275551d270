"""Side-by-side TFTP benchmark: plasmaboot vs tftpd-hpa vs atftpd, in a private netns.

Every server serves the same root (ipxe.efi and a 32 MiB file) on 127.0.0.1 inside one
network namespace, and N concurrent atftp clients (the only Debian client that speaks RFC
7440 windowsize) fetch a file into /dev/null, lock-step (blksize 1468) and with windowsize
16. Each cell runs several times, servers in rotating order; the report gives medians of the
aggregate MB/s and ratios against both peers. Needs root, atftp and tftpd-hpa; atftpd
(which conflicts with tftpd-hpa) is unpacked from its Debian package when not installed.

    sudo .venv/bin/python bench/tftp/run_bench.py --runs 3 --clients 1,50
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IPXE = Path("/usr/lib/ipxe/ipxe.efi")
BIG = "32MiB.bin"
PORTS = {"plasmaboot": 1069, "tftpd-hpa": 2069, "atftpd": 3069}
MODES = {
    "lock-step": ["--option", "blksize 1468"],
    "windowsize 16": ["--option", "blksize 1468", "--option", "windowsize 16"],
}


def find_atftpd(workdir: Path) -> str:
    installed = shutil.which("atftpd")
    if installed:
        return installed
    subprocess.run(["apt-get", "download", "atftpd"], cwd=workdir, check=True, capture_output=True)
    deb = next(workdir.glob("atftpd_*.deb"))
    subprocess.run(["dpkg", "-x", str(deb), str(workdir / "atftpd")], check=True)
    return str(workdir / "atftpd" / "usr" / "sbin" / "atftpd")


def start_servers(root: Path, atftpd: str, logs: Path) -> list[subprocess.Popen[bytes]]:
    commands = {
        "plasmaboot": [
            sys.executable, "-m", "plasmaboot.tftp", "--root", str(root), "--host", "127.0.0.1",
            "--port", str(PORTS["plasmaboot"]), "--max-per-client", "64",
        ],
        "tftpd-hpa": [
            "in.tftpd", "-L", "-u", "root", "-s", str(root),
            "-a", f"127.0.0.1:{PORTS['tftpd-hpa']}",
        ],
        "atftpd": [
            atftpd, "--daemon", "--no-fork", "--port", str(PORTS["atftpd"]),
            "--bind-address", "127.0.0.1", "--user", "root", "--group", "root",
            "--maxthread", "200", "--logfile", "/dev/null", str(root),
        ],
    }  # fmt: skip
    processes = []
    for name, argv in commands.items():
        log = (logs / f"{name}.log").open("w")
        processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    time.sleep(1.5)
    for process in processes:
        if process.poll() is not None:
            raise SystemExit(f"server {process.args!r} exited: see {logs}")
    return processes


def fetch(server: str, filename: str, clients: int, mode: str) -> float:
    """Aggregate MB/s of `clients` concurrent atftp fetches (1 MB = 10**6 bytes)."""
    argv = ["atftp", *MODES[mode], "-g", "-r", filename, "-l", "/dev/null"]
    argv += ["127.0.0.1", str(PORTS[server])]
    start = time.perf_counter()
    running = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(clients)
    ]
    failures = [p.stderr.read().decode() for p in running if p.wait(timeout=300) and p.stderr]
    elapsed = time.perf_counter() - start
    for p in running:
        if p.stderr:
            p.stderr.close()
    if failures:
        raise SystemExit(f"{server} {filename} x{clients} {mode}: {failures[0]}")
    return clients * FILE_SIZES[filename] / elapsed / 1e6


FILE_SIZES: dict[str, int] = {}


def run_inside(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="pbt-bench-"))
    try:
        root = workdir / "root"
        root.mkdir()
        shutil.copyfile(IPXE.resolve(), root / "ipxe.efi")
        (root / BIG).write_bytes(os.urandom(32 << 20))
        os.chmod(workdir, 0o755)
        FILE_SIZES.update({name: (root / name).stat().st_size for name in ("ipxe.efi", BIG)})
        servers = start_servers(root, args.atftpd, workdir)
        names = list(PORTS)
        results: dict[str, list[float]] = {}
        try:
            for run in range(args.runs):
                order = names[run % 3 :] + names[: run % 3]
                for filename in ("ipxe.efi", BIG):
                    for clients in args.clients:
                        for mode in MODES:
                            for server in order:
                                key = f"{filename}|{clients}|{mode}|{server}"
                                results.setdefault(key, []).append(
                                    fetch(server, filename, clients, mode)
                                )
        finally:
            for process in servers:
                process.terminate()
                process.wait(timeout=10)
        print(json.dumps(results))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def report(results: dict[str, list[float]], runs: int) -> str:
    lines = [
        "| file | clients | mode | plasmaboot MB/s | tftpd-hpa MB/s | atftpd MB/s "
        "| vs tftpd-hpa | vs atftpd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cells = sorted(
        {tuple(k.split("|")[:3]) for k in results}, key=lambda c: (c[0], int(c[1]), c[2])
    )
    for filename, clients, mode in cells:
        med = {s: statistics.median(results[f"{filename}|{clients}|{mode}|{s}"]) for s in PORTS}
        lines.append(
            f"| {filename} | {clients} | {mode} | {med['plasmaboot']:.0f} | {med['tftpd-hpa']:.0f} "
            f"| {med['atftpd']:.0f} | {med['plasmaboot'] / med['tftpd-hpa']:.2f}x "
            f"| {med['plasmaboot'] / med['atftpd']:.2f}x |"
        )
    return "\n".join(lines) + f"\n\nmedian of {runs} runs per cell\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", default="1,50", help="comma-separated concurrency levels")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--atftpd", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    if args.inside:
        run_inside(args)
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark makes its own network namespace")
    for binary in ("atftp", "in.tftpd", "ip"):
        if shutil.which(binary) is None:
            raise SystemExit(f"{binary} missing: apt-get install atftp tftpd-hpa iproute2")
    download_dir = Path(tempfile.mkdtemp(prefix="pbt-atftpd-"))
    os.chmod(download_dir, 0o755)  # apt-get download runs as _apt
    atftpd = find_atftpd(download_dir)  # before the namespace: it has no route out
    ns = f"pbtbench{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # tftpd-hpa resolves its -a address with AI_ADDRCONFIG, which ignores 127.0.0.1 alone
        subprocess.run(["ip", "-n", ns, "addr", "add", "127.0.0.2/8", "dev", "lo"], check=True)
        argv = ["ip", "netns", "exec", ns, sys.executable, __file__, "--inside"]
        argv += ["--runs", str(args.runs), "--clients", ",".join(map(str, args.clients))]
        argv += ["--atftpd", atftpd]
        done = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(download_dir, ignore_errors=True)
    print(report(json.loads(done.stdout.splitlines()[-1]), args.runs))


if __name__ == "__main__":
    main()
