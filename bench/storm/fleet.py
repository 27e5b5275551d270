"""plasmaboot on PostgreSQL under storm: one `serve`, or two on one database and one
segment, each answering DHCP, the clients booting from whichever answers first.

The PostgreSQL server is the integration tests' own (Debian's postgresql: initdb + pg_ctl
in a temporary directory as the unprivileged `postgres` user, a plain login role),
started once per invocation, durable (fsync and full page writes on, as for every
published figure). Each storm gets a fresh database, reached through the server's Unix
socket (a path, so from every namespace; the same fixture as the two-server test),
dropped afterwards. The second server runs in its own namespace on the same segment
(netns.py) with the same inventory but for its own address and interface, and its own
state directory (docs/store.md "Several servers"). CPU and peak RSS count both `serve`
processes and PostgreSQL (the postmaster and its backends).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import systems
from netns import SECOND_IF, SECOND_IP

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests/integration")]
from test_fleet_two_servers import store_url  # noqa: E402
from test_store_postgres import Server as PgServer  # noqa: E402
from test_store_postgres import pg_server  # noqa: E402


@contextlib.contextmanager
def postgresql() -> Iterator[PgServer]:
    with contextlib.contextmanager(pg_server.__wrapped__)(durable=True) as server:
        yield server


def database(pg: PgServer) -> contextlib.AbstractContextManager[str]:
    """A fresh database's URL by the Unix socket; dropped on exit."""
    return contextlib.contextmanager(store_url.__wrapped__)(pg)


def postmaster_pid(pg: PgServer) -> int:
    with pg.admin() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        stat = Path(f"/proc/{row[0]}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])  # the backend's parent


def start(
    work: Path, inventory: Path, assets: Path, clients: int, url: str, pg: PgServer, servers: int
) -> systems.Running:
    """`servers` (1 or 2) `serve` processes on the database at `url`, one after the other
    (the first applies the migrations and imports the inventory)."""
    postmaster = postmaster_pid(pg)
    first = systems.start_plasmaboot(work, inventory, assets, store=url)
    running = systems.Running(
        f"plasmaboot-pg-x{servers}", first.procs, first.logs, [postmaster],
        first.entry_urls, first.state_dir,
    )  # fmt: skip
    if servers == 2:
        second_inventory = work / "cluster-2.yaml"
        systems.write_inventory(second_inventory, clients, SECOND_IP, SECOND_IF)
        try:
            second = systems.start_plasmaboot(
                work, second_inventory, assets, store=url, second=True
            )
        except BaseException:  # SIGTERM, Ctrl-C too: no server outlives the bench
            running.stop()
            raise
        running.procs += second.procs
        running.logs += second.logs
        running.entry_urls += second.entry_urls
    return running
