"""Standalone TFTP server for tests and benchmarks: `python -m plasmaboot.tftp --root DIR`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from plasmaboot import logs
from plasmaboot.tftp import DEBIAN_IPXE_LINK_ROOTS, DEBIAN_IPXE_ROOT, TftpServer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m plasmaboot.tftp", description=__doc__)
    parser.add_argument("--root", type=Path, default=DEBIAN_IPXE_ROOT)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=69)
    parser.add_argument("--interface", default=None, help="bind to this device")
    parser.add_argument("--timeout", type=float, default=1.0, help="retransmit after (s)")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--max-transfers", type=int, default=512)
    parser.add_argument("--max-per-client", type=int, default=4)
    parser.add_argument("--mtu", type=int, default=1500)
    parser.add_argument(
        "--link-root", type=Path, action="append", help="symlinks may point in here"
    )
    parser.add_argument("--no-gso", action="store_true", help="one send per packet")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format", choices=logs.FORMATS, default=None, help="default: json unless a terminal"
    )
    args = parser.parse_args()
    try:
        logs.configure(args.log_level, args.log_format)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.root.is_dir():
        parser.error(f"--root: {args.root} is not a directory; pass the TFTP root")
    link_roots = args.link_root
    if link_roots is None:
        link_roots = list(DEBIAN_IPXE_LINK_ROOTS) if args.root == DEBIAN_IPXE_ROOT else []
    server = TftpServer(
        args.root,
        host=args.host,
        port=args.port,
        interface=args.interface,
        timeout=args.timeout,
        retries=args.retries,
        max_transfers=args.max_transfers,
        max_per_client=args.max_per_client,
        mtu=args.mtu,
        link_roots=link_roots,
        gso=not args.no_gso,
    )
    asyncio.run(_serve(server))


async def _serve(server: TftpServer) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await server.start()
    print(f"listening on {server.host}:{server.port}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await stopping.wait()
    await server.stop()


if __name__ == "__main__":
    main()
