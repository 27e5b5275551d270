"""The HTTP side of serve: scripts per state, agent tokens, auth from the route table,
Range on images, health. In-process aiohttp server on loopback; no root needed."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from plasmaboot.inventory import load_inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.provision import Provisioner, ProvisionerSettings
from plasmaboot.provision.admin_tokens import AdminTokenError, AdminTokens, Scope
from plasmaboot.provision.tokens import token_hash
from plasmaboot.store import SqliteStore
from plasmaboot.web.app import (
    ROUTES,
    SHARED_PATHS,
    Listener,
    build_app,
    openapi_document,
    openapi_path,
)

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin-secret"
MAC = "52:54:00:12:34:56"
INITRD = bytes(range(256)) * 4096  # 1 MiB, every byte position distinguishable


class Harness:
    def __init__(self, client: TestClient, provisioner: Provisioner, reloads: list[str]) -> None:
        self.client = client
        self.provisioner = provisioner
        self.reload_problems = reloads

    @property
    def store(self) -> SqliteStore:
        store = self.provisioner.store
        assert isinstance(store, SqliteStore)
        return store

    def state(self, hostname: str = "node01") -> State:
        node = self.store.get_node(hostname)
        assert node is not None
        return node.state

    async def script(self, mac: str = MAC) -> str:
        response = await self.client.get(f"/boot/ipxe/node/{mac}.ipxe")
        assert response.status == 200
        return await response.text()

    async def boot_token(self) -> str:
        script = await self.script()
        match = re.search(r"plasmaboot\.token=(\S+)", script)
        assert match, script
        return match.group(1)

    async def session(self) -> str:
        token = await self.boot_token()
        response = await self.client.post(
            "/api/v1/agent/lookup", json={"mac": MAC}, headers=bearer(token)
        )
        assert response.status == 200, await response.text()
        body = await response.json()
        assert body["hostname"] == "node01" and body["role"] == "control-plane"
        return str(body["token"])

    async def report(self, token: str, stage: str, **detail: object) -> int:
        response = await self.client.post(
            "/api/v1/agent/report", json={"stage": stage, "detail": detail}, headers=bearer(token)
        )
        return response.status


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    provisioner = lab_provisioner(tmp_path)
    reloads: list[str] = []
    app = build_app(provisioner, ADMIN, lambda: list(reloads))
    async with TestClient(TestServer(app)) as client:
        yield Harness(client, provisioner, reloads)
    provisioner.store.close()


def lab_provisioner(tmp_path: Path) -> Provisioner:
    inv = load_inventory(ROOT / "examples/lab/miniature.yaml")
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(inv)
    assets = tmp_path / "assets" / "lab"
    assets.mkdir(parents=True)
    (assets / "vmlinuz").write_bytes(b"kernel" * 1000)
    (assets / "initrd").write_bytes(INITRD)
    settings = ProvisionerSettings(
        state_dir=tmp_path,
        assets_dir=tmp_path / "assets",
        tftp_root=Path("/usr/lib/ipxe"),
        http_base="http://10.77.0.1:8080",
    )
    provisioner = Provisioner(inv, store, settings)
    provisioner.probes.update(dhcp=lambda: "running", tftp=lambda: "running")
    provisioner.probes["http"] = lambda: "running"
    return provisioner


async def test_entry_script_chains_by_mac_with_retries(harness: Harness) -> None:
    response = await harness.client.get("/boot/ipxe/boot.ipxe")
    text = await response.text()
    assert text.startswith("#!ipxe")
    assert (
        "chain --autofree --replace http://10.77.0.1:8080/boot/ipxe/node/${net0/mac}.ipxe" in text
    )
    assert "goto chain_retry" in text and "dhcp || goto net_retry" in text


async def test_unknown_machine_is_discovered_and_gets_the_menu(harness: Harness) -> None:
    script = await harness.script("52:54:00:99:99:99")
    assert "menu" in script
    node = harness.store.node_by_mac("52:54:00:99:99:99")
    assert node is not None and node.state is State.DISCOVERED


async def test_enrolled_node_gets_install_script_and_moves_to_pxe_booting(
    harness: Harness,
) -> None:
    script = await harness.script()
    assert "initrd=initrd" in script and "plasmaboot.stage=install" in script
    assert "plasmaboot.url=http://10.77.0.1:8080" in script
    assert harness.state() is State.PXE_BOOTING


async def test_installed_and_confirmed_node_boots_local_disk(harness: Harness) -> None:
    for event in (Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALLED, Event.FIRST_BOOT):
        harness.store.transition("node01", event, "test")
    script = await harness.script()
    assert "sanboot" in script and "plasmaboot.token" not in script
    harness.store.transition("node01", Event.JOINED, "test")
    assert "sanboot" in await harness.script()


async def test_decommissioned_node_is_not_netbooted(harness: Harness) -> None:
    harness.store.transition("node01", Event.DECOMMISSION, "test")
    script = await harness.script()
    assert "decommissioned" in script and "kernel" not in script


async def test_agent_flow_moves_the_node_to_active(harness: Harness) -> None:
    session = await harness.session()
    for stage in ("installer-booted", "installing", "installed", "first-boot", "joining", "joined"):
        assert await harness.report(session, stage) == 200, stage
    assert harness.state() is State.ACTIVE
    events = [e.event for e in harness.store.events("node01")]
    assert events == [
        "enroll",
        "pxe-boot",
        "installer-booted",
        "install-started",
        "installed",
        "first-boot",
        "join-started",
        "joined",
    ]


async def test_boot_token_is_one_time(harness: Harness) -> None:
    token = await harness.boot_token()
    first = await harness.client.post(
        "/api/v1/agent/lookup", json={"mac": MAC}, headers=bearer(token)
    )
    assert first.status == 200
    replay = await harness.client.post(
        "/api/v1/agent/lookup", json={"mac": MAC}, headers=bearer(token)
    )
    assert replay.status == 401 and "already used" in await replay.text()


async def test_token_of_one_node_cannot_move_another(harness: Harness) -> None:
    token = await harness.boot_token()
    other = await harness.client.post(
        "/api/v1/agent/lookup", json={"mac": "52:54:00:12:34:57"}, headers=bearer(token)
    )
    assert other.status == 403
    session = await harness.session()
    assert await harness.report(session, "installer-booted", node="node02") == 403
    assert harness.state("node02") is State.ENROLLED


async def test_expired_token_is_refused(harness: Harness) -> None:
    harness.provisioner.tokens.boot_ttl_s = -1
    token = await harness.boot_token()
    response = await harness.client.post(
        "/api/v1/agent/lookup", json={"mac": MAC}, headers=bearer(token)
    )
    assert response.status == 401 and "expired" in await response.text()


async def test_forged_boot_token_is_refused(harness: Harness) -> None:
    token = await harness.boot_token()
    encoded, _, signature = token.partition(".")
    forged = base64.urlsafe_b64encode(b"node01|9999999999|00").decode().rstrip("=")
    for bad in (f"{forged}.{signature}", f"{encoded}.{signature[:-2]}xx", "garbage", ""):
        response = await harness.client.post(
            "/api/v1/agent/lookup", json={"mac": MAC}, headers=bearer(bad)
        )
        assert response.status == 401, bad


async def test_tokens_are_stored_only_hashed(harness: Harness) -> None:
    token = await harness.boot_token()
    assert harness.store.get_token(token_hash(token)) is None  # issuing writes nothing
    session = await harness.session()
    raw = harness.store.path.read_bytes() + Path(f"{harness.store.path}-wal").read_bytes()
    assert session.encode() not in raw
    assert harness.store.get_token(token_hash(session)) is not None


async def test_illegal_report_is_409_naming_state_and_allowed(harness: Harness) -> None:
    session = await harness.session()
    response = await harness.client.post(
        "/api/v1/agent/report", json={"stage": "joined"}, headers=bearer(session)
    )
    assert response.status == 409
    body = await response.json()
    assert body["state"] == "pxe-booting" and "installer-booted" in body["allowed"]


NON_PUBLIC = [r for r in ROUTES if r.auth != "public"]


def _concrete(path: str) -> str:
    return (
        path.replace("{hostname}", "node01").replace("{mac}", MAC).replace("{procedure}", "drain")
    )


@pytest.mark.parametrize("route", NON_PUBLIC, ids=lambda r: f"{r.method} {r.path}")
async def test_every_protected_route_needs_a_token(harness: Harness, route: object) -> None:
    assert hasattr(route, "method") and hasattr(route, "path")
    response = await harness.client.request(route.method, _concrete(route.path), json={})
    assert response.status == 401


ADMIN_ROUTES = [r for r in NON_PUBLIC if r.auth in ("read", "write")]


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_every_admin_route_refuses_other_tokens(harness: Harness, route: object) -> None:
    """Not an admin token (a guess, an agent's session token, a revoked one): 401."""
    assert hasattr(route, "method") and hasattr(route, "path")
    session = await harness.session()
    tokens = AdminTokens(harness.store)
    revoked = tokens.create("old", Scope.WRITE)
    tokens.revoke("old")
    expired = tokens.create("short", Scope.WRITE, ttl_s=-1)
    for token in ("wrong", session, revoked, expired):
        response = await harness.client.request(
            route.method, _concrete(route.path), json={}, headers=bearer(token)
        )
        assert response.status == 401, token
        assert "admin token" in (await response.json())["error"]


@pytest.mark.parametrize("route", ADMIN_ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_a_read_token_reads_and_is_refused_every_action(
    harness: Harness, route: object
) -> None:
    assert hasattr(route, "method") and hasattr(route, "path") and hasattr(route, "auth")
    read = AdminTokens(harness.store).create("grafana", Scope.READ)
    if route.path == "/api/v1/events/stream":  # a stream never ends: its status is enough
        async with harness.client.get(route.path, headers=bearer(read)) as response:
            assert response.status == 200
        return
    before = [n.as_json() for n in harness.store.list_nodes()]
    response = await harness.client.request(
        route.method, _concrete(route.path), json={"event": "decommission"}, headers=bearer(read)
    )
    if route.auth == "read":
        assert response.status == 200, await response.text()
        return
    assert response.status == 403
    body = await response.json()
    assert body["scope"] == "write" and "needs scope write" in body["error"]
    assert "'grafana' has scope read" in body["error"]
    assert [n.as_json() for n in harness.store.list_nodes()] == before, "nothing changed"


async def test_a_write_token_acts_and_the_refusals_are_counted(harness: Harness) -> None:
    write = AdminTokens(harness.store).create("ci", Scope.WRITE)
    response = await harness.client.post(
        "/api/v1/nodes/node01/actions", json={"event": "decommission"}, headers=bearer(write)
    )
    assert response.status == 200 and harness.state() is State.DECOMMISSIONED
    await harness.client.get("/api/v1/nodes", headers=bearer("guess"))
    await harness.client.get("/api/v1/nodes")
    metrics = await (await harness.client.get("/metrics")).text()
    assert 'plasmaboot_admin_auth_refused_total{reason="unknown"}' in metrics
    assert 'plasmaboot_admin_auth_refused_total{reason="missing"}' in metrics


def test_admin_tokens_are_stored_hashed_named_and_unique(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    tokens = AdminTokens(store)
    token = tokens.create("ci", Scope.WRITE)
    assert store.get_token(token) is None and store.get_token(token_hash(token)) is not None
    assert [(t.name, t.scope, t.expires_at) for t in tokens.list()] == [("ci", Scope.WRITE, None)]
    for bad in ("ci", "static", "no spaces", ""):
        with pytest.raises(AdminTokenError):
            tokens.create(bad, Scope.READ)
    with pytest.raises(AdminTokenError, match="no admin token named"):
        tokens.revoke("nobody")
    assert tokens.revoke("ci").name == "ci" and tokens.list() == []
    store.close()


@pytest.mark.parametrize("listener", ["boot", "admin"])
async def test_each_listener_serves_only_its_routes(tmp_path: Path, listener: Listener) -> None:
    provisioner = lab_provisioner(tmp_path)
    app = build_app(provisioner, ADMIN, list, listener=listener)
    async with TestClient(TestServer(app)) as client:
        doc = await (await client.get("/api/openapi.json")).json()
        for route in ROUTES:
            documented = route.method.lower() in doc["paths"].get(openapi_path(route.path), {})
            assert documented == (listener in route.listeners), route.path
            if listener in route.listeners or route.path in SHARED_PATHS:
                continue
            response = await client.request(
                route.method, _concrete(route.path), json={}, headers=bearer(ADMIN)
            )
            assert response.status == 404, (listener, route.path)
        assert (await client.get("/health")).status == 200
        assert (await client.get("/metrics")).status == 200
    assert {r.path for r in ROUTES if r.listeners == ("admin",)} >= {
        "/api/v1/nodes", "/api/v1/events", "/api/v1/events/stream", "/api/v1/inventory/reload",
    }  # fmt: skip
    assert all(r.listeners == ("boot",) for r in ROUTES if r.auth == "agent")
    provisioner.store.close()


def test_every_mutating_route_is_protected() -> None:
    assert all(r.auth != "public" for r in ROUTES if r.mutating)


async def test_admin_action_and_malformed_bodies(harness: Harness) -> None:
    url = "/api/v1/nodes/node01/actions"
    bad_json = await harness.client.post(url, data=b"{nope", headers=bearer(ADMIN))
    assert bad_json.status == 400 and "JSON" in await bad_json.text()
    bad_field = await harness.client.post(url, json={"event": "explode"}, headers=bearer(ADMIN))
    assert bad_field.status == 400
    assert (await bad_field.json())["fields"][0]["field"] == "event"
    illegal = await harness.client.post(url, json={"event": "activate"}, headers=bearer(ADMIN))
    assert illegal.status == 409
    ok = await harness.client.post(
        url, json={"event": "decommission", "reason": "rma"}, headers=bearer(ADMIN)
    )
    assert ok.status == 200 and harness.state() is State.DECOMMISSIONED
    events = await (
        await harness.client.get("/api/v1/nodes/node01/events", headers=bearer(ADMIN))
    ).json()
    assert events[-1]["actor"] == "admin" and events[-1]["detail"] == {"reason": "rma"}


async def test_range_request_on_the_initrd(harness: Harness) -> None:
    response = await harness.client.get("/boot/lab/initrd", headers={"Range": "bytes=1000-1999"})
    assert response.status == 206
    assert await response.read() == INITRD[1000:2000]
    assert response.headers["Content-Range"] == f"bytes 1000-1999/{len(INITRD)}"
    full = await harness.client.get("/boot/lab/initrd")
    assert await full.read() == INITRD


async def test_checksums_match_the_files(harness: Harness) -> None:
    import hashlib

    text = await (await harness.client.get("/boot/SHA256SUMS")).text()
    assert f"{hashlib.sha256(INITRD).hexdigest()}  lab/initrd" in text


async def test_asset_paths_cannot_escape(harness: Harness) -> None:
    for path in (
        "/boot/nixos/../../etc/passwd",
        "/boot/nixos/control-plane/..%2F..%2Fdb",
        "/boot/ipxe/..%2F..%2Fetc%2Fpasswd",
        "/boot/nixos/nope/initrd",
    ):
        response = await harness.client.get(path)
        assert response.status == 404, path


async def test_health_flips_to_503_naming_the_dead_service(harness: Harness) -> None:
    ok = await harness.client.get("/health")
    assert ok.status == 200
    assert await ok.json() == {
        "status": "healthy",
        "services": {"dhcp": "running", "tftp": "running", "http": "running"},
    }
    harness.provisioner.probes["tftp"] = lambda: "failed"
    bad = await harness.client.get("/health")
    assert bad.status == 503
    body = await bad.json()
    assert body["failing"] == ["tftp"] and body["services"]["tftp"] == "failed"


async def test_metrics_show_lifecycle_counts_and_requests(harness: Harness) -> None:
    await harness.script()
    text = await (await harness.client.get("/metrics")).text()
    assert 'plasmaboot_nodes{state="pxe-booting"} 1.0' in text
    assert 'plasmaboot_nodes{state="enrolled"} 3.0' in text
    assert "plasmaboot_http_requests_total" in text
    assert 'plasmaboot_lifecycle_transitions_total{event="pxe-boot",to="pxe-booting"}' in text


async def test_reload_refusal_is_reported(harness: Harness) -> None:
    harness.reload_problems.append("cluster.yaml: nodes[0].macs[0] = 'x': bad")
    response = await harness.client.post("/api/v1/inventory/reload", headers=bearer(ADMIN))
    assert response.status == 422
    assert "kept" in (await response.json())["error"]


def test_openapi_lists_every_route_with_its_security() -> None:
    doc = openapi_document()
    for route in ROUTES:
        operation = doc["paths"][openapi_path(route.path)][route.method.lower()]
        assert ("security" in operation) == (route.auth != "public")


def test_api_event_names_are_the_lifecycle_events() -> None:
    """The request literals are the one spelling of stages and operator events: each maps
    to a lifecycle event, and only booted-from-disk is a report without a transition."""
    from typing import get_args

    from plasmaboot.web.api import STAGE_EVENTS, AgentStage, OperatorEvent

    assert {Event(name) for name in get_args(OperatorEvent)} <= set(Event)
    assert set(get_args(AgentStage)) == set(STAGE_EVENTS) | {"booted-from-disk"}


async def test_a_request_the_parser_refuses_is_a_counted_400_not_a_logged_error(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A NUL in a header (found by schemathesis against serve): aiohttp answers 400 and
    would log an error with a traceback; it is a client's mistake, counted."""
    before = REGISTRY.get_sample_value("plasmaboot_http_malformed_requests_total") or 0.0
    server = harness.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Probe: \x00\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    writer.close()
    assert status.split()[1] == b"400"
    await asyncio.sleep(0.05)  # the refusal is logged after the answer
    assert REGISTRY.get_sample_value("plasmaboot_http_malformed_requests_total") == before + 1
    refused = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert refused and all(r.levelname == "WARNING" and not r.exc_info for r in refused)
    assert "Invalid header value char" in refused[-1].getMessage()
