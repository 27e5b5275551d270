"""The provisioning servers' registry (provision/servers.py): a server's id, its heartbeat
task over a real SQLite store, how readers judge a row (running, stale, stopped), and
what the admin API (`GET /api/v1/servers`) and the dashboard's fleet page show of it,
rendered by the real in-process admin application. The same registry across two real
`serve` processes on PostgreSQL: tests/integration/test_fleet_two_servers.py."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from test_web import lab_provisioner

from plasmaboot import dashboard
from plasmaboot.provision import Provisioner
from plasmaboot.provision.admin_tokens import AdminTokens, Scope
from plasmaboot.provision.servers import (
    ID_FILE,
    STALE_AFTER_PERIODS,
    Heartbeat,
    local_heartbeat,
    server_id,
    status_of,
)
from plasmaboot.store import ServerRecord, SqliteStore
from plasmaboot.web.app import build_app
from store_contract import heartbeat


def test_a_server_keeps_its_id_in_its_state_directory(tmp_path: Path) -> None:
    made = server_id(tmp_path / "state")
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert server_id(tmp_path / "state") == made, "a restart takes its row back"
    assert (tmp_path / "state" / ID_FILE).read_text().strip() == made
    assert server_id(tmp_path / "other") != made


@pytest.mark.parametrize(
    ("age_periods", "stopped", "status"),
    [(0.0, False, "running"), (STALE_AFTER_PERIODS - 0.1, False, "running"),
     (STALE_AFTER_PERIODS + 0.1, False, "stale"), (0.0, True, "stopped"),
     (STALE_AFTER_PERIODS + 5, True, "stopped")],
)  # fmt: skip
def test_a_row_older_than_its_periods_is_stale(
    age_periods: float, stopped: bool, status: str
) -> None:
    beat = replace(heartbeat("s1", "pxe1"), period_s=2.0, stopped=stopped)
    assert status_of(ServerRecord(beat, 0.0, age_periods * 2.0)) == status


async def test_the_heartbeat_writes_every_period_and_a_clean_stop_marks_it_stopped(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "db")
    identity = local_heartbeat(tmp_path / "state", "http://10.0.0.1:8080",
                               "https://10.0.0.1:8443", period_s=0.05)  # fmt: skip
    health = {"http": "running", "tftp": "running"}
    beating = Heartbeat(store, identity, lambda: dict(health))
    beating.start()
    (first,) = store.servers()  # written at once, before the first period
    assert first.heartbeat == replace(identity, services=health)
    health["tftp"] = "failed"
    await asyncio.sleep(0.3)
    (later,) = store.servers()
    assert later.last_seen > first.last_seen and later.heartbeat.services["tftp"] == "failed"
    await beating.stop()
    (stopped,) = store.servers()
    assert stopped.heartbeat.stopped and status_of(stopped) == "stopped"
    await asyncio.sleep(0.2)
    assert store.servers()[0].last_seen == stopped.last_seen, "nothing written after stop"
    store.close()


# ---- what the admin API and the fleet page show ---------------------------------------


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Provisioner, str]]:
    """The admin application with the dashboard, over a store where four servers wrote:
    this one (healthy), a peer whose TFTP failed, one gone silent, one stopped."""
    provisioner = lab_provisioner(tmp_path)
    store = provisioner.store
    quick = replace(heartbeat("c3", "pxe-c", {"http": "running"}), period_s=0.02)
    store.save_server(quick)
    time.sleep(STALE_AFTER_PERIODS * 0.02 + 0.05)  # pxe-c falls silent
    store.save_server(heartbeat("a1", "pxe-a", {"dhcp": "running", "tftp": "running"}))
    store.save_server(heartbeat("b2", "pxe-b", {"dhcp": "running", "tftp": "failed"}))
    store.save_server(replace(heartbeat("d4", "pxe-d"), stopped=True))
    provisioner.server_id = "a1"
    app = build_app(provisioner, None, list, listener="admin")
    dashboard.install(app, provisioner, None)
    token = AdminTokens(store).create("viewer", Scope.READ)
    async with TestClient(TestServer(app)) as client:
        yield client, provisioner, token
    store.close()


async def test_the_admin_api_lists_every_server_with_its_status(
    admin: tuple[TestClient, Provisioner, str],
) -> None:
    client, _, token = admin
    assert (await client.get("/api/v1/servers")).status == 401
    response = await client.get("/api/v1/servers", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    servers = {s["name"]: s for s in await response.json()}
    assert list(servers) == ["pxe-a", "pxe-b", "pxe-c", "pxe-d"]
    shown = {n: (s["status"], s["healthy"], s["this"]) for n, s in servers.items()}
    assert shown == {
        "pxe-a": ("running", True, True), "pxe-b": ("running", False, False),
        "pxe-c": ("stale", False, False), "pxe-d": ("stopped", False, False),
    }  # fmt: skip
    stale = servers["pxe-c"]
    assert stale["seen_s_ago"] > stale["stale_after_s"] == STALE_AFTER_PERIODS * 0.02
    assert servers["pxe-b"]["services"] == {"dhcp": "running", "tftp": "failed"}
    assert servers["pxe-a"]["boot_url"] == "http://pxe-a:8080"
    assert servers["pxe-a"]["admin_url"] == "https://pxe-a:8443"


async def test_the_fleet_page_shows_every_server_and_its_health(
    admin: tuple[TestClient, Provisioner, str],
) -> None:
    client, _, token = admin
    login = await client.post("/dashboard/login", data={"token": token}, allow_redirects=False)
    assert login.status == 303, await login.text()
    # the cookie is Secure (the admin listener is TLS): this plain test client sends it by hand
    cookie = {"Cookie": f"plasmaboot_session={login.cookies['plasmaboot_session'].value}"}
    page = await client.get("/dashboard/", headers=cookie)
    assert page.status == 200
    html = await page.text()
    assert "Provisioning servers <small>4 on SQLite</small>" in html
    # heartbeats make no event: the page's script swaps this part every 5 s on its own
    assert '<div id="servers-live" data-every="5">' in html
    rows = dict(re.findall(r'<li id="server-(\w+)" class="server (.*?)</li>', html, re.S))
    assert list(rows) == ["a1", "b2", "c3", "d4"]
    assert rows["a1"].startswith("running") and "(this one)" in rows["a1"]
    assert '<span class="health ok">healthy</span>' in rows["a1"]
    assert "boot http://pxe-a:8080 · admin https://pxe-a:8443 · 0.1.0" in rows["a1"]
    assert '<span class="health bad">unhealthy</span>' in rows["b2"]
    assert '<span class="svc failed">tftp failed</span>' in rows["b2"]
    assert "(this one)" not in rows["b2"]
    assert rows["c3"].startswith("stale") and '<span class="health bad">stale</span>' in rows["c3"]
    assert "no heartbeat for" in rows["c3"] and "unreachable or dead" in rows["c3"]
    assert rows["d4"].startswith("stopped") and '<span class="health">stopped</span>' in rows["d4"]
