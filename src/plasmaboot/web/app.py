"""The HTTP application: one route table that drives routing, auth and the OpenAPI doc.

Because auth is declared per route in `ROUTES` and enforced by one wrapper, a new admin
route cannot forget its check, and the tests generate their 401/403 cases from the same
table.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from prometheus_client import REGISTRY, Counter, Histogram
from pydantic import BaseModel

from plasmaboot.boot import paths
from plasmaboot.provision import Provisioner
from plasmaboot.provision.tokens import constant_time_equal
from plasmaboot.web import api, boot, events, observe

log = logging.getLogger("plasmaboot.http")

FIRMWARE_AGENTS = ("iPXE/", "UefiHttpBoot/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Auth = Literal["public", "agent", "admin"]

ADMIN_TOKEN = web.AppKey("admin_token", str)
ReloadInventory = Callable[[], list[str]]
RELOAD: web.AppKey[ReloadInventory] = web.AppKey("reload")

HTTP_REQUESTS = Counter(
    "plasmaboot_http_requests_total", "HTTP requests", ["route", "method", "status"]
)
HTTP_SECONDS = Histogram(
    "plasmaboot_http_request_seconds",
    "HTTP time to response headers",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    auth: Auth
    summary: str
    body: type[BaseModel] | None = None
    content: str = "application/json"

    @property
    def mutating(self) -> bool:
        return self.method in {"POST", "PUT", "PATCH", "DELETE"}


async def reload_inventory(request: web.Request) -> web.Response:
    problems = request.app[RELOAD]()
    if problems:
        raise api.error(
            422, "the new inventory is invalid; the running one is kept", problems=problems
        )
    return api.json_response({"reloaded": True})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", observe.health, "public", "Service health (seeds' shape)"),
    Route("GET", "/metrics", observe.metrics, "public", "Prometheus metrics", content="text/plain"),
    Route("GET", "/api/openapi.json", openapi, "public", "This document"),
    Route(
        "GET",
        paths.ENTRY_SCRIPT_PATH,
        boot.entry_script,
        "public",
        "iPXE entry script",
        content="text/plain",
    ),
    Route(
        "GET",
        paths.NODE_SCRIPT_ROUTE,
        boot.node_script,
        "public",
        "The node's iPXE script, from its lifecycle state",
        content="text/plain",
    ),
    Route(
        "GET",
        paths.IPXE_BINARY_ROUTE,
        boot.ipxe_binary,
        "public",
        "iPXE binaries for UEFI HTTP Boot",
        content="application/octet-stream",
    ),
    Route(
        "GET",
        paths.CHECKSUMS_PATH,
        boot.checksums,
        "public",
        "Checksums of every image's kernel and initrd",
        content="text/plain",
    ),
    Route(
        "GET",
        paths.IMAGE_ROUTE,
        boot.asset,
        "public",
        "A kernel or initrd named by an image (e.g. /boot/nixos/worker/bzImage); Range",
        content="application/octet-stream",
    ),
    Route(
        "POST",
        "/api/v1/agent/lookup",
        api.agent_lookup,
        "agent",
        "Spend the boot token: node identity and a session token",
        api.LookupRequest,
    ),
    Route(
        "POST",
        "/api/v1/agent/report",
        api.agent_report,
        "agent",
        "Report an installer or first-boot stage (a lifecycle event)",
        api.ReportRequest,
    ),
    Route("GET", "/api/v1/nodes", api.list_nodes, "admin", "All nodes"),
    Route("GET", "/api/v1/nodes/{hostname}", api.get_node, "admin", "One node"),
    Route(
        "GET",
        "/api/v1/nodes/{hostname}/events",
        api.node_events,
        "admin",
        "A node's lifecycle events",
    ),
    Route(
        "POST",
        "/api/v1/nodes/{hostname}/actions",
        api.node_action,
        "admin",
        "Apply an operator event (drain, reprovision, decommission, ...)",
        api.ActionRequest,
    ),
    Route(
        "GET",
        "/api/v1/events",
        api.recent_events,
        "admin",
        "Events after an id (?after=&node=&limit=)",
    ),
    Route(
        "GET",
        "/api/v1/events/stream",
        events.event_stream,
        "admin",
        "Server-sent events of every stored event, live; resumable with Last-Event-ID "
        "(?node=&state=, repeatable; ?after=)",
        content="text/event-stream",
    ),
    Route(
        "POST",
        "/api/v1/inventory/reload",
        reload_inventory,
        "admin",
        "Reload the inventory file; an invalid one is refused and the running one kept",
    ),
)


def _guarded(route: Route) -> Handler:
    """Wrap a handler with its declared auth, and count and time it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            if route.auth != "public":
                token = api.bearer(request)
                if token is None:
                    raise api.error(401, "missing Authorization: Bearer token")
                if route.auth == "admin" and not constant_time_equal(
                    token, request.app[ADMIN_TOKEN]
                ):
                    raise api.error(403, "not the admin token")
            response = await route.handler(request)
            status = response.status
            if request.headers.get("User-Agent", "").startswith(FIRMWARE_AGENTS):
                # Firmware never closes its connections: it reboots or hands over to the
                # kernel, and after a reboot iPXE can reuse the same source port. A kept-
                # alive stale connection then answers its SYN and iPXE sees a reset.
                response.force_close()
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            HTTP_REQUESTS.labels(route.path, route.method, str(status)).inc()
            HTTP_SECONDS.labels(route.path).observe(time.perf_counter() - started)
            if route.path.startswith(
                paths.BOOT_ROOT + "/"
            ):  # the boot path an operator follows in the log
                log.info(
                    "http %s %s %s from %s", request.method, request.path, status, request.remote
                )

    return handler


def build_app(
    provisioner: Provisioner, admin_token: str, reload: Callable[[], list[str]]
) -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app[boot.PROVISIONER] = provisioner
    app[ADMIN_TOKEN] = admin_token
    app[RELOAD] = reload
    for route in ROUTES:
        if route.method == "GET":  # UEFI HTTP Boot sends HEAD before GET
            app.router.add_get(route.path, _guarded(route), allow_head=True)
        else:
            app.router.add_route(route.method, route.path, _guarded(route))
    events.install(app, provisioner)
    collector = observe.LifecycleCollector(provisioner)

    async def register(_: web.Application) -> Any:
        REGISTRY.register(collector)
        yield
        REGISTRY.unregister(collector)

    app.cleanup_ctx.append(register)
    return app


def openapi_path(path: str) -> str:
    """aiohttp's `{name:regex}` as OpenAPI's `{name}`."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": f"{route.method.lower()}_{route.handler.__name__}",
            "responses": {"200": {"description": "OK", "content": {route.content: {}}}},
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{(\w+)\}", openapi_path(route.path))
        ]
        if params:
            operation["parameters"] = params
            operation["responses"]["404"] = {"description": "Not found"}
        if route.auth != "public":
            operation["security"] = [{"bearer": []}]
            operation["responses"]["401"] = {"description": "Missing or unknown token"}
            operation["responses"]["403"] = {"description": "Token not valid for this"}
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": route.body.model_json_schema()}},
            }
            operation["responses"]["400"] = {"description": "Malformed body; names the field"}
        if route.mutating:
            operation["responses"]["409"] = {"description": "Not allowed in the node's state"}
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = operation
    return {
        "openapi": "3.0.3",
        "info": {"title": "plasmaboot", "version": "1"},
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
