"""HTTP boot benchmark: plasmaboot serve vs nginx, side by side in one run.

1. Large assets: N concurrent curl downloads (N = 1, 20, 100) of the same 256 MiB initrd
   from each server; aggregate GB/s = N x size / wall time. curl, not wrk: wrk reads 8 KiB
   at a time and under-reports large files.
2. Boot scripts: wrk -c100 for 10 s against per-node scripts of 1,000 inventory nodes
   (random MAC per request; each script issues a one-time token, a store write), against
   nginx serving a static 1 KiB file: requests/s and p99.

Everything runs on 127.0.0.1 with bounded counts and durations. Run as:
    .venv/bin/python bench/http/run.py [--runs 3] [--size-mib 256]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

PB_PORT, NGINX_PORT = 17600, 17601
NODES = 1000


def inventory(nodes: int) -> dict[str, object]:
    node_list = [
        {
            "hostname": f"n{i:04d}",
            "macs": [f"52:54:01:00:{i >> 8:02x}:{i & 0xFF:02x}"],
            "profile": "bench",
            "provisioning_ip": f"10.80.{1 + i // 250}.{1 + i % 250}",
            "bootstrap": i < 3,
        }
        for i in range(nodes)
    ]
    return {
        "cluster": {"name": "bench", "domain": "bench.internal"},
        "networks": [{
            "name": "provisioning", "vlan": 100, "subnet": "10.80.0.0/16",
            "dhcp": {"mode": "reservation"},
        }],
        "server": {"provisioning_ip": "10.80.0.1", "http_port": PB_PORT},
        "profiles": {"bench": {"role": "control-plane", "services": ["chainfire"],
                               "image": "bench"}},
        "images": {"bench": {"kernel": "nixos/bench/bzImage", "initrd": "nixos/bench/initrd"}},
        "nodes": node_list,
    }  # fmt: skip


def write_assets(root: Path, size_mib: int) -> None:
    images = root / "nixos" / "bench"
    images.mkdir(parents=True)
    (images / "bzImage").write_bytes(os.urandom(1 << 20))
    with (images / "initrd").open("wb") as out:
        chunk = os.urandom(1 << 20)
        for _ in range(size_mib):
            out.write(chunk)
    (root / "script.ipxe").write_bytes(b"#!ipxe\n" + b"#" * 1016 + b"\n")


NGINX_CONF = """
worker_processes 1;
error_log {root}/nginx-error.log;
pid {root}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port};
        root {assets};
        location /boot/ {{ alias {assets}/; }}
    }}
}}
"""


def start_nginx(work: Path, assets: Path) -> subprocess.Popen[bytes]:
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=work, port=NGINX_PORT, assets=assets))
    return subprocess.Popen(["nginx", "-p", str(work), "-c", str(conf), "-g", "daemon off;"])


def start_plasmaboot(work: Path, assets: Path, nodes: int) -> subprocess.Popen[bytes]:
    config = work / "cluster.yaml"
    config.write_text(yaml.safe_dump(inventory(nodes)))
    log = (work / "serve.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "plasmaboot", "serve", "-c", str(config),
         "--state-dir", str(work / "state"), "--assets", str(assets), "--no-dhcp",
         "--bind", "127.0.0.1", "--tftp-port", "17602"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def wait_up(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def download_rate(url: str, clients: int, size: int) -> float:
    """Aggregate GB/s of `clients` concurrent curl downloads of `url`."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", url],
            stdout=subprocess.PIPE,
        )
        for _ in range(clients)
    ]
    sizes = [int(p.communicate(timeout=600)[0] or 0) for p in procs]
    elapsed = time.perf_counter() - started
    if any(s != size for s in sizes) or any(p.returncode for p in procs):
        raise RuntimeError(f"incomplete downloads from {url}: {sizes}")
    return clients * size / elapsed / 1e9


WRK_LUA = """
local macs = {{}}
for i = 0, {nodes} - 1 do
  macs[#macs + 1] = string.format("52:54:01:00:%02x:%02x", math.floor(i / 256), i % 256)
end
math.randomseed(42)
request = function()
  return wrk.format("GET", "/boot/ipxe/node/" .. macs[math.random(#macs)] .. ".ipxe")
end
"""


def wrk(url: str, lua: Path | None, seconds: int = 10) -> tuple[float, float]:
    argv = ["wrk", "-t2", "-c100", f"-d{seconds}s", "--latency", url]
    if lua is not None:
        argv[1:1] = ["-s", str(lua)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99 is not None, out
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} failed responses from {url}")
    return rate, float(p99.group(1)) * scale


def ensure_free(*ports: int) -> None:
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                sys.exit(f"port {port} is already in use: stop what listens there first")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--clients", default="1,20,100", help="empty: boot scripts only")
    args = parser.parse_args()
    for tool in ("nginx", "curl", "wrk"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install -y {tool}")
    ensure_free(PB_PORT, NGINX_PORT)
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="pb-bench-http-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run unprivileged and must read the assets
        assets = work / "assets"
        write_assets(assets, args.size_mib)
        size = args.size_mib << 20
        servers = [start_nginx(work, assets), start_plasmaboot(work, assets, NODES)]
        try:
            pb = f"http://127.0.0.1:{PB_PORT}"
            ng = f"http://127.0.0.1:{NGINX_PORT}"
            try:
                wait_up(f"{pb}/health")
            except RuntimeError:
                sys.exit("plasmaboot did not start:\n" + (work / "serve.log").read_text()[-3000:])
            wait_up(f"{ng}/script.ipxe")
            for clients in (int(c) for c in args.clients.split(",") if c):
                rates: dict[str, list[float]] = {"plasmaboot": [], "nginx": []}
                for _ in range(args.runs):  # interleaved: both see the same machine noise
                    rates["nginx"].append(
                        download_rate(f"{ng}/boot/nixos/bench/initrd", clients, size)
                    )
                    rates["plasmaboot"].append(
                        download_rate(f"{pb}/boot/nixos/bench/initrd", clients, size)
                    )
                med = {k: statistics.median(v) for k, v in rates.items()}
                results[f"initrd_{clients}_clients_GBps"] = {
                    **med,
                    "ratio": med["plasmaboot"] / med["nginx"],
                    "runs": rates,
                }
                print(
                    f"{args.size_mib} MiB x {clients}: plasmaboot {med['plasmaboot']:.2f} GB/s, "
                    f"nginx {med['nginx']:.2f} GB/s, ratio {med['plasmaboot'] / med['nginx']:.2f}",
                    flush=True,
                )
            lua = work / "macs.lua"
            lua.write_text(WRK_LUA.format(nodes=NODES))
            scripts: dict[str, list[tuple[float, float]]] = {"plasmaboot": [], "nginx": []}
            for _ in range(args.runs):
                scripts["nginx"].append(wrk(f"{ng}/script.ipxe", None))
                scripts["plasmaboot"].append(wrk(f"{pb}/boot/ipxe/node/x.ipxe", lua))
            for name, runs in scripts.items():
                rate = statistics.median(r for r, _ in runs)
                p99 = statistics.median(p for _, p in runs)
                results[f"scripts_{name}"] = {"req_per_s": rate, "p99_ms": p99, "runs": runs}
                print(f"boot scripts ({name}): {rate:,.0f} req/s, p99 {p99:.1f} ms", flush=True)
        finally:
            for proc in servers:
                proc.terminate()
                proc.wait(timeout=30)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
