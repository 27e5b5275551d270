"""Dashboard benchmark: the node table at 10,000 nodes, server time and first paint.

1. A store with N nodes (40 racks of 250 by default, one network each) in a spread of
   states (fired through the lifecycle service, as serve would), then a real `plasmaboot
   serve` on it (loopback, --no-dhcp) and a session made by logging in with an admin token.
2. Server time: `--requests` GETs of the fleet page (summary + node table) cycling through
   unfiltered page 1, a deep page, a state filter, a rack filter and a text search; the
   server's own time is its `Server-Timing: render;dur=` header (session check, catching
   up on events, filtering, rendering), the client's is the full round trip over TLS.
3. First paint: Debian's headless Chromium (chromium-driver) logs in, then loads the
   fleet page `--loads` times; `first-contentful-paint` from the Paint Timing API.

Each run starts a fresh server and browser; the report is the median over `--runs`.
There is no peer dashboard to run beside it (none serves this store). Run as:
    .venv/bin/python bench/dashboard/run.py [--nodes 10000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/integration"))
from events_support import ServeProcess  # noqa: E402  (the tests' way to start serve)
from test_dashboard_browser import spki_pin  # noqa: E402

from plasmaboot.inventory import load_inventory  # noqa: E402
from plasmaboot.lifecycle import Event  # noqa: E402
from plasmaboot.provision.admin_tokens import AdminTokens, Scope  # noqa: E402
from plasmaboot.provision.lifecycle import LifecycleService  # noqa: E402
from plasmaboot.store import SqliteStore  # noqa: E402

RACK = 250
QUERIES = ("/", "/?page=40", "/?state=pxe-booting", "/?network=rack-07", "/?q=n0042")
# (share of the nodes, events that take them there from enrolled)
SPREAD = (
    (0.10, (Event.PXE_BOOT,)),
    (0.05, (Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALL_STARTED)),
    (0.02, (Event.PXE_BOOT, Event.FAIL)),
    (0.20, (Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALLED, Event.FIRST_BOOT,
            Event.JOINED)),
)  # fmt: skip


def inventory(nodes: int) -> dict[str, Any]:
    racks = -(-nodes // RACK)
    return {
        "cluster": {"name": "bench", "domain": "bench.internal"},
        "networks": [{"name": "provisioning", "vlan": 100, "subnet": "10.80.0.0/24"}]
        + [{"name": f"rack-{r:02d}", "vlan": 101 + r, "subnet": f"10.80.{r + 1}.0/24",
            "dhcp": {"mode": "reservation"}} for r in range(racks)],
        "server": {"provisioning_ip": "10.80.0.1"},
        "profiles": {
            "control": {"role": "control-plane", "services": ["chainfire"], "image": "img"},
            "worker": {"role": "worker", "services": ["k8shost"], "image": "img"},
        },
        "images": {"img": {"kernel": "k", "initrd": "i"}},
        "nodes": [
            {"hostname": f"n{i:05d}", "macs": [f"52:54:02:00:{i >> 8:02x}:{i & 255:02x}"],
             "profile": "control" if i < 3 else "worker", "bootstrap": i < 3,
             "provisioning_ip": f"10.80.{i // RACK + 1}.{i % RACK + 2}"}
            for i in range(nodes)
        ],
    }  # fmt: skip


def load_store(state: Path, config: Path, nodes: int) -> str:
    """Import the inventory, spread the nodes over states; a write admin token."""
    store = SqliteStore.in_dir(state)
    try:
        store.import_inventory(load_inventory(config))
        lifecycle = LifecycleService(store)
        start = 0
        for share, events in SPREAD:
            count = int(nodes * share)
            for i in range(start, start + count):
                for event in events:
                    lifecycle.fire(f"n{i:05d}", event, "bench")
            start += count
        return AdminTokens(store).create("bench", Scope.WRITE)
    finally:
        store.close()


def server_times(serve: ServeProcess, token: str, requests: int) -> dict[str, float]:
    with httpx.Client(base_url=serve.base, verify=serve.tls, timeout=30) as http:
        login = http.post("/dashboard/login", data={"token": token})
        assert login.status_code == 303, login.text
        server, client = [], []
        for i in range(requests):
            started = time.perf_counter()
            page = http.get("/dashboard" + QUERIES[i % len(QUERIES)])
            client.append((time.perf_counter() - started) * 1000)
            if page.status_code != 200:
                log = serve.log.read_text()[-3000:]
                raise RuntimeError(f"{page.url}: {page.status_code}: {log}")
            server.append(float(page.headers["Server-Timing"].split("dur=")[1]))
    return {"server_p50_ms": percentile(server, 50), "server_p99_ms": percentile(server, 99),
            "client_p50_ms": percentile(client, 50), "client_p99_ms": percentile(client, 99),
            "page_kb": len(page.content) / 1024}  # fmt: skip


def first_paints(serve: ServeProcess, token: str, state: Path, loads: int) -> list[float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    pin = spki_pin(state / "pki/plasmaboot.admin.crt")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1400,1000",
                f"--ignore-certificate-errors-spki-list={pin}"):  # fmt: skip
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        browser.get(serve.base + "/dashboard/login")
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "login").click()
        browser.set_script_timeout(10)
        paints = []
        for _ in range(loads):
            browser.get(serve.base + "/dashboard/")
            assert browser.current_url.endswith("/dashboard/"), browser.current_url
            paint = browser.execute_async_script(  # the entry may come just after `load`
                "const done = arguments[0];"
                "new PerformanceObserver((list) => done(list.getEntries()[0].startTime))"
                ".observe({type: 'paint', buffered: true});"
            )
            paints.append(float(paint))
        return paints
    finally:
        browser.quit()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def one_run(nodes: int, requests: int, loads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="pb-dashboard-bench-") as tmp:
        work = Path(tmp)
        config = work / "cluster.yaml"
        config.write_text(yaml.safe_dump(inventory(nodes)))
        state = work / "state"
        token = load_store(state, config, nodes)
        started = time.monotonic()
        serve = ServeProcess.start(state, config=config)
        try:  # (the server's log is printed if a step fails)
            result = {"serve_start_s": round(time.monotonic() - started, 1)}
            result |= server_times(serve, token, requests)
            paints = first_paints(serve, token, state, loads)
            result |= {"first_paint_ms": statistics.median(paints), "paints_ms": paints}
            return result
        finally:
            serve.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    runs = [one_run(args.nodes, args.requests, args.loads) for _ in range(args.runs)]
    keys = ("server_p50_ms", "server_p99_ms", "client_p50_ms", "client_p99_ms",
            "first_paint_ms", "page_kb", "serve_start_s")  # fmt: skip
    summary = {k: round(statistics.median(r[k] for r in runs), 2) for k in keys}
    print(json.dumps({"nodes": args.nodes, "runs": runs, "median": summary,
                      "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                      "cpus": os.cpu_count()}, indent=2))  # fmt: skip
    subprocess.run(["uptime"], check=False)


if __name__ == "__main__":
    main()
