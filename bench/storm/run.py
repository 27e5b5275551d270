"""Boot storm: N simulated PXE clients against `plasmaboot serve` and dnsmasq + nginx.

The systems (`--systems`, SYSTEMS below) run in the same invocation, one after the other
(order alternating per run), on the same veth, inventory, iPXE binaries, kernel and
initrd. The veth bandwidth is measured first (nginx sendfile to parallel readers of a
1 GiB file); the physical limit of a storm is the bytes it moves divided by that
bandwidth. Needs root, dnsmasq, nginx, curl (and postgresql for the `-pg` systems).

    .venv/bin/python bench/storm/run.py                                  # N=100, 64 MiB
    .venv/bin/python bench/storm/run.py --clients 100,500,1000 --initrd-mib 64,256
    .venv/bin/python bench/storm/run.py --clients 1000 --systems plasmaboot,plasmaboot-watched
    .venv/bin/python bench/storm/run.py --clients 1000 \
        --systems plasmaboot,plasmaboot-pg,plasmaboot-pg-x2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fleet
import netns
import systems
from plot import plot_timelines
from watchers import Watchers

HERE = Path(__file__).resolve().parent
STEPS = ("dhcp", "tftp", "dhcp_ipxe", "script", "kernel", "initrd", "agent")
BASELINE = "dnsmasq+nginx"
SYSTEMS = {
    "plasmaboot": "one serve, SQLite",
    BASELINE: "dnsmasq (DHCP, TFTP) + nginx (HTTP)",
    "plasmaboot-watched": "one serve, SQLite, --watchers clients on the event stream",
    "plasmaboot-pg": "one serve, PostgreSQL",
    "plasmaboot-pg-x2": "two serves on one PostgreSQL, one segment",
}


def run_clients(
    work: Path, plan: dict[str, Any], name: str, timeout_s: float, procs: int
) -> list[dict[str, Any]]:
    """`procs` client processes, each with a share of the clients (or readers), started on
    one wall-clock instant. One Python process cannot copy more than ~2.5 GB/s out of the
    kernel; two (one per core) keep the client side from being the limit it measures."""
    plan = {**plan, "start_at": time.time() + 1.0 + 0.2 * procs}
    running = []
    for index in range(procs):
        share = dict(plan)
        if "clients" in plan:
            share["clients"] = plan["clients"][index::procs]
        else:
            share["readers"] = plan["readers"] // procs + (index < plan["readers"] % procs)
        plan_path = work / f"{name}.{index}.plan.json"
        plan_path.write_text(json.dumps(share))
        argv = [sys.executable, str(HERE / "client.py"), str(plan_path), str(plan_path) + ".out"]
        running.append((subprocess.Popen(systems.in_ns(netns.CLIENT_NS, argv)), plan_path))
    results = []
    try:
        for proc, plan_path in running:
            code = proc.wait(timeout=timeout_s)
            if code != 0:
                raise RuntimeError(f"client process exited {code}")
            results.append(json.loads(Path(str(plan_path) + ".out").read_text()))
    except BaseException:  # a timeout, Ctrl-C, SIGTERM: no client outlives the bench
        for proc, _ in running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        raise
    return results


def measure_bandwidth(work: Path, root: Path, procs: int, mib: int, repeats: int) -> float:
    """Bytes/s the veth carries from nginx (sendfile) to 4 parallel readers of a 1 GiB file:
    the best of curl and of this bench's own reader, median of `repeats` each."""
    with (root / "bandwidth.bin").open("wb") as handle:
        handle.truncate(mib << 20)
    nginx = systems.start_nginx(work, root, probe="/bandwidth.bin")
    url = f"http://{netns.SERVER_IP}:{systems.HTTP_PORT}/bandwidth.bin"
    try:
        plan = {
            "mode": "bandwidth", "server": netns.SERVER_IP, "http_port": systems.HTTP_PORT,
            "local_ip": netns.CLIENT_BASE_IP, "path": "/bandwidth.bin", "readers": 4,
        }  # fmt: skip
        python_rates, curl_rates = [], []
        for _ in range(repeats):
            shares = run_clients(work, plan, "bandwidth", 300, procs)
            elapsed = max(s["end"] for s in shares) - min(s["start"] for s in shares)
            python_rates.append(sum(s["bytes"] for s in shares) / elapsed)
            started = time.monotonic()
            curls = [
                subprocess.Popen(
                    systems.in_ns(netns.CLIENT_NS, ["curl", "-sf", "-o", "/dev/null", url])
                )
                for _ in range(4)
            ]
            if any(c.wait(timeout=300) for c in curls):
                raise RuntimeError("curl could not read the bandwidth file")
            curl_rates.append(4 * (mib << 20) / (time.monotonic() - started))
    finally:
        nginx.stop()
        (root / "bandwidth.bin").unlink()
    print(f"veth bandwidth, 4 readers, median of {repeats}: curl "
          f"{statistics.median(curl_rates) / 1e9:.2f} GB/s, bench reader "
          f"{statistics.median(python_rates) / 1e9:.2f} GB/s", flush=True)  # fmt: skip
    return float(max(statistics.median(curl_rates), statistics.median(python_rates)))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_system(
    system: str, run_dir: Path, inventory: Path, assets: Path, clients: int,
    pg: fleet.PgServer | None, stack: contextlib.ExitStack,
) -> systems.Running:  # fmt: skip
    if system == BASELINE:
        return systems.start_baseline(run_dir, inventory, assets, clients)
    if system.startswith("plasmaboot-pg"):
        assert pg is not None
        url = stack.enter_context(fleet.database(pg))  # dropped after the servers stop
        servers = 2 if system.endswith("-x2") else 1
        return fleet.start(run_dir, inventory, assets, clients, url, pg, servers)
    return systems.start_plasmaboot(run_dir, inventory, assets)


def storm_once(
    system: str, work: Path, inventory: Path, assets: Path, clients: int,
    args: argparse.Namespace, pg: fleet.PgServer | None,
) -> dict[str, Any]:  # fmt: skip
    netns.reset_client_addresses()
    is_pb = system != BASELINE
    run_dir = Path(tempfile.mkdtemp(prefix=f"{'pb' if is_pb else 'base'}-", dir=work))
    with contextlib.ExitStack() as stack:
        running = start_system(system, run_dir, inventory, assets, clients, pg, stack)
        spy: subprocess.Popen[bytes] | None = None
        watchers: Watchers | None = None
        try:
            if system == "plasmaboot-watched":
                assert running.state_dir is not None
                watchers = Watchers.start(run_dir, running.state_dir, args.watchers)
            if is_pb and args.py_spy:
                spy = start_py_spy(running.procs[0].pid, args.py_spy, clients)
            load = os.getloadavg()[0]
            cpu_before = running.cpu_seconds()
            plan = systems.plan_for(clients, running, is_pb, args.deadline, args.spread)
            shares = run_clients(run_dir, plan, "storm", args.deadline + 120, args.client_procs)
            result = {"clients": [c for share in shares for c in share["clients"]]}
            cpu = running.cpu_seconds() - cpu_before
            watched = watchers.finish() if watchers is not None else None
            if spy is not None:
                spy.wait(timeout=120)
            rss = running.peak_rss_mib()
            running.check_alive()
            states = systems.node_states(running.state_dir) if running.state_dir else {}
        finally:
            if watchers is not None:
                watchers.stop()
            running.stop()
            shutil.rmtree(run_dir / "www", ignore_errors=True)
    summary = summarize(system, result, cpu, rss, states)
    return {**summary, "load_before": load, "watchers": watched}


def start_py_spy(pid: int, out_dir: Path, clients: int) -> subprocess.Popen[bytes]:
    """Samples the server for the storm's first 20 s (raw folded stacks, for flame graphs)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    out = out_dir / f"plasmaboot-N{clients}-{int(time.time())}.txt"
    argv = [str(spy), "record", "-p", str(pid), "-d", "20", "-f", "raw", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(
    system: str, result: dict[str, Any], cpu: float, rss: float, states: dict[str, str]
) -> dict[str, Any]:
    rows = result["clients"]
    failed = [r for r in rows if r["error"]]
    booted_at = [r["booted_at"] for r in rows if r["booted_at"] is not None]
    not_reported = sorted(h for h, s in states.items() if s != "installer-booted")
    return {
        "system": system,
        "all_booted_s": max(booted_at) if booted_at and not failed else float("inf"),
        "failures": len(failed),
        "failure_samples": sorted({r["error"] for r in failed})[:5],
        "not_installer_booted": len(not_reported) if states else None,
        "served_by": dict(Counter(r["served_by"] for r in rows if r["served_by"])),
        "bytes": sum(r["bytes"] for r in rows),
        "cpu_s": cpu,
        "peak_rss_mib": rss,
        "steps": {
            step: {
                "p50": percentile([r["steps"][step] for r in rows if step in r["steps"]], 0.5),
                "p99": percentile([r["steps"][step] for r in rows if step in r["steps"]], 0.99),
            }
            for step in STEPS
        },
        "booted_at": booted_at,
    }


def run_cell(
    work: Path, wire: netns.Wire, clients: int, initrd_mib: int, bandwidth: float,
    args: argparse.Namespace, pg: fleet.PgServer | None,
) -> dict[str, Any]:  # fmt: skip
    inventory = work / f"cluster-{clients}.yaml"
    systems.write_inventory(inventory, clients)
    subprocess.run([sys.executable, "-m", "plasmaboot", "inventory", "check", "-c", str(inventory)],
                   check=True, capture_output=True)  # fmt: skip
    assets = work / f"assets-{initrd_mib}"
    systems.write_assets(assets, initrd_mib)
    netns.pin_neighbours(wire, [systems.node_ip(i) for i in range(clients)])
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.systems}
    for index in range(args.runs):
        order = list(runs) if index % 2 == 0 else list(reversed(runs))
        for system in order:
            summary = storm_once(system, work, inventory, assets, clients, args, pg)
            watched = summary["watchers"]
            print(f"  N={clients} {initrd_mib} MiB run {index + 1} {system}: "
                  f"all booted {summary['all_booted_s']:.2f} s, failures {summary['failures']} "
                  f"{summary['failure_samples']}, served by {summary['served_by']}"
                  + (f", watchers {watched}" if watched else ""), flush=True)  # fmt: skip
            runs[system].append(summary)
    # A run with failed clients moved less: the storm's size is what a complete run moves.
    total_bytes = max(r["bytes"] for rs in runs.values() for r in rs)
    cell: dict[str, Any] = {
        "clients": clients, "initrd_mib": initrd_mib, "bytes": total_bytes,
        "bandwidth_bytes_per_s": bandwidth, "physical_limit_s": total_bytes / bandwidth,
        "systems": {name: combine(rs) for name, rs in runs.items()},
    }  # fmt: skip
    return cell


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over runs; the plotted timeline is the run whose all-booted time is the median."""
    ordered = sorted(runs, key=lambda r: r["all_booted_s"])
    middle = ordered[(len(ordered) - 1) // 2]
    return {
        "runs": len(runs),
        "all_booted_s": statistics.median(r["all_booted_s"] for r in runs),
        "all_booted_runs_s": [r["all_booted_s"] for r in runs],
        "failures": sum(r["failures"] for r in runs),
        "failure_samples": sorted({s for r in runs for s in r["failure_samples"]})[:5],
        "not_installer_booted": middle["not_installer_booted"],
        "served_by": [r["served_by"] for r in runs],
        "watchers": [r["watchers"] for r in runs if r["watchers"]],
        "load_before": [round(r["load_before"], 1) for r in runs],
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "steps": {
            step: {q: statistics.median(r["steps"][step][q] for r in runs) for q in ("p50", "p99")}
            for step in STEPS
        },
        "median_run_booted_at": middle["booted_at"],
    }


def report(cells: list[dict[str, Any]]) -> str:
    """Tables of the cells; "vs baseline" is against dnsmasq + nginx when it ran, else
    against the first system of `--systems`."""
    lines = [
        "| N | initrd | system | all booted (s) | vs limit | vs baseline | failures | CPU s "
        "| peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in cells:
        names = list(cell["systems"])
        base = cell["systems"][BASELINE if BASELINE in names else names[0]]["all_booted_s"]
        for name, s in cell["systems"].items():
            booted = s["all_booted_s"]
            timing = (
                f"{booted:.2f} | {booted / cell['physical_limit_s']:.2f}x | {booted / base:.2f}x"
                if math.isfinite(booted) and math.isfinite(base)
                else f"{booted:.2f} | - | -"
            )
            lines.append(
                f"| {cell['clients']} | {cell['initrd_mib']} MiB | {name} | {timing} "
                f"| {s['failures']} | {s['cpu_s']:.1f} | {s['peak_rss_mib']:.0f} |"
            )
        lines.append(
            f"| {cell['clients']} | {cell['initrd_mib']} MiB | physical limit "
            f"| {cell['physical_limit_s']:.2f} | 1.00x | | | | |"
        )
    step_heads = " | ".join(f"{s} p50/p99 (ms)" for s in STEPS)
    lines += ["", f"| N | initrd | system | {step_heads} |", "|---|---|---|" + "---|" * len(STEPS)]
    for cell in cells:
        for name, s in cell["systems"].items():
            steps = " | ".join(
                f"{s['steps'][st]['p50'] * 1000:.0f} / {s['steps'][st]['p99'] * 1000:.0f}"
                for st in STEPS
            )
            lines.append(f"| {cell['clients']} | {cell['initrd_mib']} MiB | {name} | {steps} |")
    lines += [
        "",
        "| N | initrd | system | load avg before each run | served by (clients per "
        "server address), per run | stream watchers, per run |",
        "|---|---|---|---|---|---|",
    ]
    for cell in cells:
        for name, s in cell["systems"].items():
            watched = "; ".join(
                f"{w['complete']}/{w['watchers']} got all {w['events']} events "
                f"(drained {w['drained_s']} s after the storm; watchers' CPU "
                f"{w['watcher_cpu_s']:.1f} s)"
                for w in s["watchers"]
            )  # fmt: skip
            lines.append(
                f"| {cell['clients']} | {cell['initrd_mib']} MiB | {name} "
                f"| {s['load_before']} | {s['served_by']} | {watched or '-'} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ints = lambda text: [int(x) for x in text.split(",")]  # noqa: E731
    parser.add_argument("--clients", type=ints, default=[100], help="comma list, e.g. 100,500,1000")
    parser.add_argument("--initrd-mib", type=ints, default=[64], help="comma list, e.g. 64,256")
    parser.add_argument("--runs", type=int, default=3, help="storms per system per cell")
    parser.add_argument("--deadline", type=float, default=300, help="seconds per storm")
    parser.add_argument("--spread", type=float, default=1.0, help="power-on spread, seconds")
    parser.add_argument("--client-procs", type=int, default=2, help="client processes")
    parser.add_argument("--bandwidth-mib", type=int, default=1024, help="bandwidth file size")
    parser.add_argument("--bandwidth-repeats", type=int, default=3)
    parser.add_argument("--py-spy", type=Path, help="profile plasmaboot into this directory")
    parser.add_argument(
        "--systems", type=systems_list, default=["plasmaboot", BASELINE],
        help=f"comma list of {', '.join(SYSTEMS)}",
    )  # fmt: skip
    parser.add_argument("--watchers", type=int, default=50,
                        help="event-stream clients of plasmaboot-watched")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("storm-results.json"))
    parser.add_argument("--plot", type=Path, default=Path("build/storm-timeline.png"))
    return parser.parse_args(argv)


def systems_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"unknown or repeated system(s) {', '.join(unknown) or names}; choose from "
            + ", ".join(SYSTEMS)
        )
    return names


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("dnsmasq", "nginx", "curl", "ip"):
        if shutil.which(name) is None:
            print(f"{name} is not installed (apt-get install -y dnsmasq nginx curl iproute2)")
            return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    work = Path(tempfile.mkdtemp(prefix="pbs-storm-"))
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        with contextlib.ExitStack() as stack:
            on_pg = any(name.startswith("plasmaboot-pg") for name in args.systems)
            pg = stack.enter_context(fleet.postgresql()) if on_pg else None
            wire = netns.setup(second_server="plasmaboot-pg-x2" in args.systems)
            bw_root = work / "bandwidth-www"
            bw_root.mkdir()
            bandwidth = measure_bandwidth(
                work, bw_root, args.client_procs, args.bandwidth_mib, args.bandwidth_repeats
            )
            cells = [
                run_cell(work, wire, n, mib, bandwidth, args, pg)
                for mib in args.initrd_mib
                for n in args.clients
            ]
    finally:
        netns.teardown()
        shutil.rmtree(work, ignore_errors=True)
    args.out.write_text(json.dumps(cells, indent=1))
    plot_timelines(cells, args.plot)
    print(report(cells))
    print(
        f"\ntotal {time.monotonic() - started:.0f} s; results {args.out}, plot {args.plot}; "
        f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    ok = all(
        s["failures"] == 0 and all(w["complete"] == w["watchers"] for w in s["watchers"])
        for c in cells
        for s in c["systems"].values()
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
