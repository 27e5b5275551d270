"""The agent API (installer image, first boot) and the admin API (operators, CLI).

Request bodies are pydantic models: a malformed body is a 400 that names the field.
Every state change goes through `Provisioner.fire`, so the lifecycle table decides and
an illegal request is a 409 naming the state and the events it accepts.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from plasmaboot import logs
from plasmaboot.inventory import normalize_mac
from plasmaboot.lifecycle import Event, IllegalTransition, allowed_events
from plasmaboot.provision.servers import fleet_servers
from plasmaboot.provision.tokens import BOOT_TOKEN_REFUSED, TokenRefused
from plasmaboot.store import NodeRecord
from plasmaboot.web.boot import PROVISIONER
from plasmaboot.web.hardware import InvalidFacts, validated_facts

Body = TypeVar("Body", bound=BaseModel)

AgentStage = Literal[
    "installer-booted",
    "installing",
    "installed",
    "first-boot",
    "joining",
    "joined",
    "failed",
    "booted-from-disk",
]
STAGE_EVENTS: dict[str, Event] = {
    "installer-booted": Event.INSTALLER_BOOTED,
    "installing": Event.INSTALL_STARTED,
    "installed": Event.INSTALLED,
    "first-boot": Event.FIRST_BOOT,
    "joining": Event.JOIN_STARTED,
    "joined": Event.JOINED,
    "failed": Event.FAIL,
}
# The events an operator may fire through the admin API (a test checks each is an Event).
OperatorEvent = Literal[
    "enroll",
    "pxe-boot",
    "retry",
    "reprovision",
    "drain",
    "drained",
    "maintain",
    "activate",
    "decommission",
    "recommission",
]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LookupRequest(StrictBody):
    mac: str = Field(description="A MAC of the machine asking")


class ReportRequest(StrictBody):
    stage: AgentStage
    detail: dict[str, Any] = Field(
        default_factory=dict,
        description="node (must be the token's), reason (failed), hardware (installer-"
        "booted: the facts of docs/agent.md, validated by web/hardware.py), anything else",
    )


class ActionRequest(StrictBody):
    event: OperatorEvent
    reason: str = ""


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


def error(status: int, message: str, **extra: Any) -> web.HTTPException:
    body = json.dumps({"error": message, **extra})
    exc_type = {
        400: web.HTTPBadRequest,
        401: web.HTTPUnauthorized,
        403: web.HTTPForbidden,
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
        422: web.HTTPUnprocessableEntity,
    }
    return exc_type[status](text=body, content_type="application/json")


async def parse_body(request: web.Request, model: type[Body]) -> Body:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise error(400, "the body is not valid JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
            for e in exc.errors()
        ]
        raise error(400, "invalid request body", fields=fields) from None


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _transition(
    request: web.Request, hostname: str, event: Event, actor: str, detail: dict[str, Any]
) -> dict[str, Any]:
    try:
        record = request.app[PROVISIONER].fire(hostname, event, actor, detail)
    except IllegalTransition as exc:
        raise error(
            409,
            str(exc),
            state=exc.state.value,
            allowed=sorted(e.value for e in allowed_events(exc.state)),
        ) from None
    return asdict(record)


# ---- agent API ---------------------------------------------------------------------


async def agent_lookup(request: web.Request) -> web.Response:
    """Boot token + MAC -> node identity and a session token (the boot token is spent;
    an install token only while its node is pxe-booting, once per cycle: else 409)."""
    provisioner = request.app[PROVISIONER]
    body = await parse_body(request, LookupRequest)
    try:
        mac = normalize_mac(body.mac)
    except ValueError as exc:
        BOOT_TOKEN_REFUSED.labels("lookup", "bad-mac").inc()
        raise error(400, str(exc), field="mac") from None
    logs.bind_context(mac=mac)  # undone with the request's context (web/app.py)
    record = provisioner.store.node_by_mac(mac)
    if record is None:
        BOOT_TOKEN_REFUSED.labels("lookup", "unknown-mac").inc()
        raise error(404, f"no node has MAC {mac}")
    logs.bind_context(node=record.hostname)
    token = bearer(request) or ""
    try:
        session = provisioner.tokens.exchange(token, record)
    except TokenRefused as exc:
        extra = {"state": record.state.value} if exc.status == 409 else {}
        raise error(exc.status, exc.reason, **extra) from None
    spec = provisioner.spec_of(record)
    inv = provisioner.inventory
    return json_response(
        {
            "hostname": record.hostname,
            "fqdn": inv.fqdn(spec) if spec else None,
            "profile": record.profile,
            "role": inv.role_of(spec) if spec and spec.profile in inv.profiles else None,
            "state": record.state.value,
            "provisioning_ip": record.provisioning_ip,
            "disk": spec.disk if spec else None,
            "token": session,
        }
    )


async def agent_report(request: web.Request) -> web.Response:
    """A stage report from the installer or first boot, authenticated by its session token."""
    provisioner = request.app[PROVISIONER]
    body = await parse_body(request, ReportRequest)
    try:
        token = provisioner.tokens.verify_session(bearer(request) or "")
    except TokenRefused as exc:
        raise error(exc.status, exc.reason) from None
    logs.bind_context(node=token.hostname)
    claimed = body.detail.get("node")
    if claimed is not None and claimed != token.hostname:
        raise error(403, "this token belongs to another node")
    detail = body.detail
    if "hardware" in detail:  # the agent's facts: checked before anything is written
        try:
            detail = {**detail, "hardware": validated_facts(detail["hardware"])}
        except InvalidFacts as exc:
            raise error(400, "invalid request body", fields=exc.fields) from None
    if body.stage == "booted-from-disk":
        event = provisioner.store.record(token.hostname, "booted-from-disk", "agent", detail)
        return json_response(asdict(event))
    result = _transition(request, token.hostname, STAGE_EVENTS[body.stage], "agent", detail)
    if body.stage == "installer-booted" and "hardware" in detail:
        # on the node for `node show` and the admin API; the event keeps them as history
        provisioner.store.set_hardware(token.hostname, detail["hardware"])
    return json_response(result)


# ---- admin API ---------------------------------------------------------------------


def _node_or_404(request: web.Request) -> NodeRecord:
    hostname = request.match_info["hostname"]
    record = request.app[PROVISIONER].store.get_node(hostname)
    if record is None:
        raise error(404, f"no node named {hostname!r}")
    return record


async def list_nodes(request: web.Request) -> web.Response:
    return json_response([n.as_json() for n in request.app[PROVISIONER].store.list_nodes()])


async def get_node(request: web.Request) -> web.Response:
    return json_response(_node_or_404(request).as_json())


async def node_events(request: web.Request) -> web.Response:
    """A node's events, oldest first (?limit=N: only the last N, as `node events`)."""
    record = _node_or_404(request)
    try:
        limit = int(request.query["limit"]) if "limit" in request.query else None
    except ValueError:
        raise error(400, "limit must be an integer", field="limit") from None
    events = request.app[PROVISIONER].store.events(record.hostname, limit=limit)
    return json_response([asdict(e) for e in events])


async def node_action(request: web.Request) -> web.Response:
    record = _node_or_404(request)
    body = await parse_body(request, ActionRequest)
    detail = {"reason": body.reason} if body.reason else {}
    return json_response(_transition(request, record.hostname, Event(body.event), "admin", detail))


async def list_servers(request: web.Request) -> web.Response:
    """Every provisioning server on this store, running, stale or stopped, with the
    health of its services (provision/servers.py)."""
    provisioner = request.app[PROVISIONER]
    servers = fleet_servers(provisioner.store, provisioner.server_id)
    return json_response([server.as_json() for server in servers])


async def recent_events(request: web.Request) -> web.Response:
    try:
        after = int(request.query.get("after", "0"))
        limit = min(int(request.query.get("limit", "500")), 5000)
    except ValueError:
        raise error(400, "after and limit must be integers") from None
    events = request.app[PROVISIONER].store.events(
        request.query.get("node"), after=after, limit=limit
    )
    return json_response([asdict(e) for e in events])
