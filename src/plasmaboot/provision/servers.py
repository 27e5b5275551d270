"""The provisioning servers of a fleet: each `serve` writes a heartbeat, every reader judges it.

With several servers on one PostgreSQL store an operator must see all of them, not only
the one whose dashboard is open. So every running `serve` writes a row about itself to
the store (`Store.save_server`, one transaction) every `HEARTBEAT_S`: its id, host name,
boot and admin URLs, version, start time and each service's health as its own /health
reports it (serve/health.py's probes). A clean stop writes one last row marked stopped.

A reader (the admin API's `GET /api/v1/servers`, the dashboard) calls a server *stale*
when its last heartbeat is older than `STALE_AFTER_PERIODS` of the period the server
wrote, measured by the store's clock (the database's for PostgreSQL: hosts whose clocks
differ never disagree about it). A server killed outright (kill -9, power cut, network
gone) therefore reads stale within 3 periods, 15 s; one stopped cleanly reads stopped.
The server's id is kept in its state directory (`server.id`), so a restarted server
takes its row back instead of leaving a stale one behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from plasmaboot import __version__
from plasmaboot.files import write_atomic
from plasmaboot.logs import get_logger
from plasmaboot.store import ServerHeartbeat, ServerRecord, Store

log = get_logger("plasmaboot.servers")

HEARTBEAT_S = 5.0
STALE_AFTER_PERIODS = 3
ID_FILE = "server.id"
HEALTHY_SERVICES = ("running", "disabled")  # what /health counts as healthy

ServerStatus = Literal["running", "stale", "stopped"]


def server_id(state_dir: Path) -> str:
    """This server's id: read from `<state-dir>/server.id`, made there on first start."""
    path = state_dir / ID_FILE
    with contextlib.suppress(FileNotFoundError):
        if known := path.read_text().strip():
            return known
    made = uuid.uuid4().hex
    write_atomic(path, f"{made}\n".encode())
    return made


@dataclass(frozen=True)
class ServerView:
    """A server as the admin API and the dashboard show it."""

    record: ServerRecord
    status: ServerStatus
    this: bool  # the server answering this request

    @property
    def heartbeat(self) -> ServerHeartbeat:
        return self.record.heartbeat

    @property
    def healthy(self) -> bool:
        """Running, and every service running (or disabled); never for a stale server."""
        services = self.heartbeat.services.values()
        return self.status == "running" and all(s in HEALTHY_SERVICES for s in services)

    @property
    def stale_after_s(self) -> float:
        return STALE_AFTER_PERIODS * self.heartbeat.period_s

    def as_json(self) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "id": hb.server_id, "name": hb.name, "boot_url": hb.boot_url,
            "admin_url": hb.admin_url, "version": hb.version, "started_at": hb.started_at,
            "last_seen": self.record.last_seen, "seen_s_ago": round(self.record.age_s, 3),
            "heartbeat_s": hb.period_s, "stale_after_s": self.stale_after_s,
            "status": self.status, "healthy": self.healthy, "services": hb.services,
            "this": self.this,
        }  # fmt: skip


def status_of(record: ServerRecord) -> ServerStatus:
    if record.heartbeat.stopped:
        return "stopped"
    if record.age_s > STALE_AFTER_PERIODS * record.heartbeat.period_s:
        return "stale"
    return "running"


def fleet_servers(store: Store, this_id: str | None = None) -> list[ServerView]:
    """Every server that has written to `store`, by name, judged now."""
    return [ServerView(r, status_of(r), r.heartbeat.server_id == this_id) for r in store.servers()]


def local_heartbeat(
    state_dir: Path, boot_url: str, admin_url: str, period_s: float = HEARTBEAT_S
) -> ServerHeartbeat:
    """This process's identity, as its first heartbeat (its services still unknown)."""
    return ServerHeartbeat(
        server_id=server_id(state_dir),
        name=socket.gethostname() or "localhost",
        boot_url=boot_url,
        admin_url=admin_url,
        version=__version__,
        started_at=time.time(),
        period_s=period_s,
        services={},
    )


class Heartbeat:
    """Writes `identity` with the services' health every period; `stop` marks it stopped.

    The write runs on serve's loop, like every store write of serve's (SQLite's one
    connection is not shared with threads); a failed write is logged once per outage and
    retried next period: the server keeps serving, and reads stale meanwhile."""

    def __init__(
        self, store: Store, identity: ServerHeartbeat, services: Callable[[], dict[str, str]]
    ) -> None:
        self.store = store
        self.identity = identity
        self.services = services
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def beat(self, *, stopped: bool = False) -> None:
        self.store.save_server(replace(self.identity, services=self.services(), stopped=stopped))

    def start(self) -> None:
        """Write the first heartbeat now (a failure is the store's: serve cannot start),
        then one every period."""
        self.beat()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="heartbeat")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        try:
            self.beat(stopped=True)
        except Exception as exc:  # the store is gone: readers will see it stale instead
            log.warning("could not mark this server stopped in the store", reason=str(exc))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.identity.period_s)
            try:
                self.beat()
            except Exception as exc:  # a store outage must not end the heartbeat
                if not self._failing:
                    log.warning(
                        "heartbeat not written; other servers will show this one stale "
                        "until the store answers",
                        reason=str(exc),
                    )
                self._failing = True
            else:
                if self._failing:
                    log.warning("heartbeat written again")
                self._failing = False
