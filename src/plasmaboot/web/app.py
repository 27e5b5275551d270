"""The HTTP applications: one route table that drives routing, auth and the OpenAPI doc.

Because auth is declared per route in `ROUTES` and enforced by one wrapper, a new admin
route cannot forget its check, and the tests generate their 401/403 cases from the same
table. The table also says which listener serves a route: the boot port (firmware, the
installer and first-boot agents) or the admin listener (TLS, scoped tokens); `serve`
builds one application per listener, so an admin route is a 404 on the boot port.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import REGISTRY, Counter, Histogram
from pydantic import BaseModel

from plasmaboot import logs
from plasmaboot.boot import paths
from plasmaboot.operations.procedures import JOBS
from plasmaboot.provision import Provisioner
from plasmaboot.provision.admin_tokens import AdminTokens, Scope
from plasmaboot.provision.tokens import TokenRefused
from plasmaboot.web import api, boot, events, observe, operations
from plasmaboot.web.boot import RELOAD

log = logs.get_logger("plasmaboot.http")

FIRMWARE_AGENTS = ("iPXE/", "UefiHttpBoot/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# public: no credential; agent: a boot or session token (checked by the handler);
# read / write: an admin token of that scope (a write token may also read).
Auth = Literal["public", "agent", "read", "write"]
Listener = Literal["boot", "admin"]
ADMIN_AUTH = ("read", "write")
# Served on both listeners: probes and scrapers on either side, and each listener's own
# OpenAPI document.
SHARED_PATHS = frozenset({"/health", "/metrics", "/api/openapi.json"})

ADMIN_TOKENS = web.AppKey("admin_tokens", AdminTokens)
LISTENER: web.AppKey[Listener | None] = web.AppKey("listener")
# Another way to present an admin token, on routes that only read: the dashboard's
# session cookie (dashboard/sessions.py), so its EventSource needs no token in the URL.
SESSION_TOKEN: web.AppKey[Callable[[web.Request], str | None]] = web.AppKey("session_token")

HTTP_REQUESTS = Counter(
    "plasmaboot_http_requests_total", "HTTP requests", ["route", "method", "status"]
)
ADMIN_REFUSED = Counter(
    "plasmaboot_admin_auth_refused_total",
    "Admin API requests refused for their token (missing, unknown, expired, scope)",
    ["reason"],
)
HTTP_MALFORMED = Counter(
    "plasmaboot_http_malformed_requests",
    "Requests aiohttp's parser refused with 400 before any route (bad request line, header)",
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

    @property
    def listeners(self) -> tuple[Listener, ...]:
        if self.path in SHARED_PATHS:
            return ("boot", "admin")
        return ("admin",) if self.auth in ADMIN_AUTH else ("boot",)


async def reload_inventory(request: web.Request) -> web.Response:
    problems = request.app[RELOAD]()
    if problems:
        raise api.error(
            422, "the new inventory is invalid; the running one is kept", problems=problems
        )
    return api.json_response({"reloaded": True})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[LISTENER]))


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
    Route("GET", "/api/v1/nodes", api.list_nodes, "read", "All nodes"),
    Route("GET", "/api/v1/nodes/{hostname}", api.get_node, "read", "One node"),
    Route(
        "GET",
        "/api/v1/nodes/{hostname}/events",
        api.node_events,
        "read",
        "A node's lifecycle events (?limit=N: the last N)",
    ),
    Route(
        "POST",
        "/api/v1/nodes/{hostname}/actions",
        api.node_action,
        "write",
        "Apply an operator event (drain, reprovision, decommission, ...)",
        api.ActionRequest,
    ),
    Route(
        "POST",
        "/api/v1/nodes/{hostname}/procedures/{procedure}",
        operations.node_procedure,
        "write",
        "Run a node procedure as `plasmaboot node PROCEDURE` does (provision, reprovision, "
        "drain, maintenance, activate, decommission); its log lines",
        operations.ProcedureRequest,
    ),
    *(
        Route(
            "POST",
            f"/api/v1/procedures/{name}",
            operations.job_handler(name),
            "write",
            f"{job.summary}; its result and log lines",
            job.options,
        )
        for name, job in JOBS.items()
    ),
    Route(
        "GET",
        "/api/v1/power",
        operations.power_status,
        "read",
        "Power state through the BMCs, as `node power status` (?node= repeatable, default "
        "every inventory node; ?parallel=)",
    ),
    Route(
        "POST",
        "/api/v1/power",
        operations.power_action,
        "write",
        "Power nodes on, off or cycle them, as `node power` (recorded as events)",
        operations.PowerRequest,
    ),
    Route(
        "GET",
        "/api/v1/cluster/verify",
        operations.cluster_verify,
        "read",
        "`cluster verify` through the inventory's store URLs and the operator certificate "
        "(?service=, ?expect_members=, ?min_cert_days=)",
    ),
    Route(
        "GET",
        "/api/v1/servers",
        api.list_servers,
        "read",
        "The provisioning servers on this store: running, stale (no heartbeat for 3 "
        "periods) or stopped, each with its services' health",
    ),
    Route(
        "GET",
        "/api/v1/events",
        api.recent_events,
        "read",
        "Events after an id (?after=&node=&limit=)",
    ),
    Route(
        "GET",
        "/api/v1/events/stream",
        events.event_stream,
        "read",
        "Server-sent events of every stored event, live; resumable with Last-Event-ID "
        "(?node=&state=, repeatable; ?after=)",
        content="text/event-stream",
    ),
    Route(
        "POST",
        "/api/v1/inventory/reload",
        reload_inventory,
        "write",
        "Reload the inventory file; an invalid one is refused and the running one kept",
    ),
)


def _guarded(route: Route) -> Handler:
    """Wrap a handler with its declared auth, and count and time it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        # Every line logged while answering names what the request concerns; a handler
        # that learns more (the node behind a token) binds it, and this reset undoes it.
        context = logs.bind_context(**_concerns(request))
        try:
            if route.auth != "public":
                token = api.bearer(request)
                if token is None and not route.mutating and SESSION_TOKEN in request.app:
                    token = request.app[SESSION_TOKEN](request)
                if token is None:
                    if route.auth in ADMIN_AUTH:
                        ADMIN_REFUSED.labels("missing").inc()
                    raise api.error(401, "missing Authorization: Bearer token")
                if route.auth in ADMIN_AUTH:
                    try:
                        request.app[ADMIN_TOKENS].verify(token, Scope(route.auth))
                    except TokenRefused as exc:
                        ADMIN_REFUSED.labels(exc.code).inc()
                        extra = {"scope": route.auth} if exc.status == 403 else {}
                        raise api.error(exc.status, exc.reason, **extra) from None
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
                log.info("http request", method=request.method, path=request.path, status=status)
            logs.reset_context(context)

    return handler


class _MalformedRequests(logging.Filter):
    """aiohttp answers a request its parser refuses with 400, and logs it as an error
    with a traceback: a client's mistake (or a fuzzer's) would read as a server fault.
    Such a record is counted and logged as a one-line warning with the parser's reason;
    every other record passes untouched."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            HTTP_MALFORMED.inc()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "http: malformed request refused (400): %s"
            record.args = (" ".join(str(exc.message).split())[:200],)
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("aiohttp.server").addFilter(_MalformedRequests())


def _concerns(request: web.Request) -> dict[str, str]:
    """The client, and the node or MAC named in the path, for the request's log lines."""
    fields = {"remote": request.remote or "?"}
    if "hostname" in request.match_info:
        fields["node"] = request.match_info["hostname"]
    if "mac" in request.match_info:
        fields["mac"] = request.match_info["mac"]
    return fields


def build_app(
    provisioner: Provisioner,
    static_admin_token: str | None,
    reload: Callable[[], list[str]],
    listener: Listener | None = None,
) -> web.Application:
    """The routes of one listener (`serve` runs one application per listener), or of
    both (`listener=None`: one plain-HTTP application, as the in-process tests use).

    Admin tokens are the store's (provision/admin_tokens.py); `static_admin_token` is the
    deprecated static token, accepted as a write token while it is given."""
    app = web.Application(client_max_size=1 << 20)
    app[boot.PROVISIONER] = provisioner
    app[ADMIN_TOKENS] = AdminTokens.with_static(provisioner.store, static_admin_token)
    app[RELOAD] = reload
    app[LISTENER] = listener
    for route in ROUTES:
        if listener is not None and listener not in route.listeners:
            continue
        if route.method == "GET":  # UEFI HTTP Boot sends HEAD before GET
            app.router.add_get(route.path, _guarded(route), allow_head=True)
        else:
            app.router.add_route(route.method, route.path, _guarded(route))
    if listener != "boot":
        events.install(app, provisioner)
    if listener == "admin":
        return app  # the boot application registers the node gauges, once per process
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


def openapi_document(listener: Listener | None = None) -> dict[str, Any]:
    """The OpenAPI document of one listener's routes (None: every route)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        if listener is not None and listener not in route.listeners:
            continue
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
        if route.auth in ADMIN_AUTH:
            operation["description"] = f"Admin token of scope {route.auth}" + (
                " (a write token may also read)" if route.auth == "read" else ""
            )
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
