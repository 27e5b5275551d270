"""Standalone DHCP server for tests and benchmarks.

`python -m plasmaboot.dhcp -c CLUSTER.yaml --state-dir DIR --interface IF [--port N]`
SIGHUP reloads the inventory; SIGTERM/SIGINT flush the leases and stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from plasmaboot import logs
from plasmaboot.dhcp.config import DhcpConfigError
from plasmaboot.dhcp.server import DhcpServer
from plasmaboot.inventory import InventoryError, load_inventory
from plasmaboot.store import open_store

log = logs.get_logger("plasmaboot.dhcp")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m plasmaboot.dhcp", description=__doc__)
    parser.add_argument("-c", "--config", type=Path, required=True, help="cluster.yaml")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--interface", default=None, help="answer only on this interface")
    parser.add_argument("--port", type=int, default=67)
    parser.add_argument("--proxy", action="store_true", help="proxyDHCP whatever the mode")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format", choices=logs.FORMATS, default=None, help="default: json unless a terminal"
    )
    args = parser.parse_args()
    try:
        logs.configure(args.log_level, args.log_format)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        inv = load_inventory(args.config)
    except InventoryError as exc:
        sys.exit(f"{args.config}: {exc}")
    store = open_store(args.state_dir)
    store.import_inventory(inv, actor="dhcp")
    server = DhcpServer(
        inv,
        store,
        interface=args.interface,
        port=args.port,
        proxy=True if args.proxy else None,
    )
    try:
        asyncio.run(_serve(server, args.config))
    except DhcpConfigError as exc:
        sys.exit(f"dhcp: {exc}")
    finally:
        store.close()


async def _serve(server: DhcpServer, config: Path) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(server, config))
    await server.start()
    print(f"dhcp listening on {server.interface} port {server.port}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await stopping.wait()
    await server.stop()
    # What /metrics would have shown (requests per type, drops by reason), for the record.
    stats = " ".join(f"{name}={value}" for name, value in sorted(server.stats.items()))
    print(f"dhcp stopped: {stats}", flush=True)


def _reload(server: DhcpServer, config: Path) -> None:
    try:
        server.reload(load_inventory(config))
        log.info("dhcp: reloaded", config=config)
    except (InventoryError, DhcpConfigError) as exc:
        log.error("dhcp: reload refused, keeping the old one", config=config, reason=str(exc))


if __name__ == "__main__":
    main()
