"""The dashboard's routes: login, the fleet page, node pages, actions with confirmation.

Every page answers with a restrictive Content-Security-Policy (scripts, styles and
connections from this origin only; no inline script or style, no framing) and
`Server-Timing: render;dur=<ms>` (the bench reads the server's time from it). A request
without a live session is sent to the login page; a POST needs the session's CSRF token
and this origin.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from plasmaboot.dashboard.actions import ACTIONS, ActionRunner
from plasmaboot.dashboard.fleet import FleetIndex, Query
from plasmaboot.dashboard.node import INSTALL_OUTPUT, node_view, spec_rows
from plasmaboot.dashboard.sessions import (
    Session,
    Sessions,
    clear_cookie,
    csrf_ok,
    same_origin,
    set_cookie,
)
from plasmaboot.lifecycle import FAILED_STATES, Event, State
from plasmaboot.operations.power import PowerCommand
from plasmaboot.provision import DeadlineReaper, Provisioner
from plasmaboot.provision.admin_tokens import Scope
from plasmaboot.provision.deadlines import OVERDUE_EVENT, Overdue
from plasmaboot.provision.servers import HEARTBEAT_S, ServerView, fleet_servers
from plasmaboot.provision.tokens import TokenRefused
from plasmaboot.web.app import ADMIN_TOKENS, SESSION_TOKEN

ROOT = "/dashboard"
PINNED = 20  # failed or overdue nodes listed at the top; the rest through the filter
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript"}
# Events a page reloads its live part for, besides the lifecycle's own (SSE kinds).
TABLE_KINDS = ("discovered", "inventory-updated", "removed-from-inventory", OVERDUE_EVENT)
NODE_KINDS = (
    *TABLE_KINDS, INSTALL_OUTPUT, "provision-requested", "drain-output", "drain-failed",
    "left-cluster", "membership-kept", "booted-from-disk",
    *(f"power-{c.value}" for c in PowerCommand if c is not PowerCommand.STATUS),
)  # fmt: skip

SESSION = web.AppKey("dashboard_sessions", Sessions)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Dashboard:
    provisioner: Provisioner
    reaper: DeadlineReaper | None
    sessions: Sessions
    index: FleetIndex
    actions: ActionRunner
    templates: jinja2.Environment
    static: dict[str, tuple[bytes, str]]

    # ---- plumbing -------------------------------------------------------------------

    def page(self, handler: Handler, *, login: bool = True) -> Handler:
        """`handler` behind the session check, with the security and timing headers."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            if login:
                session = self.sessions.current(request)
                if session is None:
                    return self.secured(redirect(f"{ROOT}/login"), started)
                request["session"] = session
                if request.method == "POST":
                    form = await request.post()
                    sent = str(form.get("csrf", ""))
                    if not same_origin(request) or not csrf_ok(session, sent):
                        raise web.HTTPForbidden(
                            text="refused: the form's CSRF token or origin does not match "
                            "this session; reload the page"
                        )
            return self.secured(await handler(request), started)

        return wrapped

    @staticmethod
    def secured(response: web.StreamResponse, started: float) -> web.StreamResponse:
        response.headers.update({
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin",  # "no-referrer" makes Origin null
            "Server-Timing": f"render;dur={(time.perf_counter() - started) * 1000:.2f}",
        })  # fmt: skip
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def render(
        self, request: web.Request, template: str, status: int = 200, **context: Any
    ) -> web.Response:
        session: Session | None = request.get("session")
        flash = None
        if session is not None:
            flash, session.flash = session.flash, None
        cluster = self.provisioner.inventory.cluster.name
        text = self.templates.get_template(template).render(
            root=ROOT, session=session, flash=flash, cluster=cluster, **context
        )
        return web.Response(text=text, status=status, content_type="text/html")

    # ---- login ----------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        return self.render(request, "login.html", problem=None)

    async def login(self, request: web.Request) -> web.StreamResponse:
        if not same_origin(request):
            raise web.HTTPForbidden(text="refused: a login form from another site")
        form = await request.post()
        try:
            session_id = self.sessions.login(str(form.get("token", "")).strip())
        except TokenRefused as exc:
            return self.render(request, "login.html", status=401, problem=exc.reason)
        response = redirect(f"{ROOT}/")
        set_cookie(response, session_id)
        return response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.logout(request)
        response = redirect(f"{ROOT}/login")
        clear_cookie(response)
        return response

    # ---- pages ----------------------------------------------------------------------

    async def fleet(self, request: web.Request) -> web.StreamResponse:
        cursor = self.index.refresh()
        query = Query.parse(request.query)
        counts = self.index.counts()
        overdue = self.overdue()
        return self.render(
            request, "fleet.html", query=query, table=self.index.select(query),
            counts=[(s, counts[s]) for s in State if counts[s]], total=len(self.index.rows),
            failed=self.index.failed(), overdue=overdue, pinned=PINNED,
            failed_states=sorted(s.value for s in FAILED_STATES),
            overdue_names={o.hostname for o in overdue},
            profiles=self.index.profiles(), networks=self.index.networks(),
            states=[s.value for s in State], servers=self.servers(), refresh_s=HEARTBEAT_S,
            store="PostgreSQL (shared)" if self.provisioner.store.shared else "SQLite",
            stream=f"/api/v1/events/stream?after={cursor}",
            kinds=" ".join(sorted({e.value for e in Event} | set(TABLE_KINDS))),
            link=lambda **changes: "?" + urlencode(query.args(**changes)),
        )  # fmt: skip

    async def node(self, request: web.Request) -> web.StreamResponse:
        hostname = request.match_info["hostname"]
        record = self.provisioner.store.get_node(hostname)
        if record is None:
            return self.render(request, "missing.html", status=404, hostname=hostname)
        newest = self.provisioner.store.events(limit=1)
        view = await node_view(self.actions, record)
        kinds = {e.value for e in Event} | set(NODE_KINDS) | {e.event for e in view.events}
        return self.render(
            request, "node.html", view=view, spec=spec_rows(record), actions=ACTIONS,
            failed_states=FAILED_STATES,
            overdue=next((o for o in self.overdue() if o.hostname == hostname), None),
            stream=f"/api/v1/events/stream?node={quote(hostname)}&after="
            f"{newest[-1].id if newest else 0}",
            kinds=" ".join(sorted("".join(k.split()) for k in kinds)),
        )  # fmt: skip

    async def confirm(self, request: web.Request) -> web.StreamResponse:
        hostname, name = request.match_info["hostname"], request.match_info["action"]
        record = self.provisioner.store.get_node(hostname)
        if record is None or name not in ACTIONS:
            return self.render(request, "missing.html", status=404, hostname=hostname)
        return self.render(request, "confirm.html", record=record, name=name, action=ACTIONS[name])

    async def act(self, request: web.Request) -> web.StreamResponse:
        hostname, name = request.match_info["hostname"], request.match_info["action"]
        if name not in ACTIONS:
            raise web.HTTPNotFound(text=f"no action {name!r}")
        session: Session = request["session"]
        form = await request.post()
        try:  # the same scope rule as the admin API's actions
            request.app[ADMIN_TOKENS].verify(session.token, Scope.WRITE)
        except TokenRefused as exc:
            session.flash = ("refused", exc.reason)
            return redirect(f"{ROOT}/nodes/{quote(hostname)}")
        keep, force = form.get("keep_member") == "on", form.get("force") == "on"
        outcome = await self.actions.run(name, hostname, keep_member=keep, force=force)
        session.flash = (outcome.kind, outcome.text)
        return redirect(f"{ROOT}/nodes/{quote(hostname)}")

    async def asset(self, request: web.Request) -> web.StreamResponse:
        found = self.static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, content_type=content_type,
                            headers={"Cache-Control": "max-age=300"})  # fmt: skip

    # ---- what the pages show --------------------------------------------------------

    def overdue(self) -> list[Overdue]:
        """The deadline reaper's last pass (at most a few seconds old), still in that state."""
        if self.reaper is None:
            return []
        now = self.index.rows
        return [o for o in self.reaper.overdue if (r := now.get(o.hostname)) and r.state is o.state]

    def servers(self) -> list[ServerView]:
        """Every server on the store, from their heartbeats (this one's included)."""
        return fleet_servers(self.provisioner.store, self.provisioner.server_id)


def redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("plasmaboot.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = when
    env.filters["duration"] = duration
    return env


def when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _static() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("plasmaboot.dashboard") / "static"
    return {
        item.name: (item.read_bytes(), STATIC_TYPES[item.name[item.name.rindex(".") :]])
        for item in folder.iterdir()
        if item.name[item.name.rfind(".") :] in STATIC_TYPES
    }


def install(app: web.Application, provisioner: Provisioner, reaper: DeadlineReaper | None) -> None:
    """Mount the dashboard on the admin application (`serve` does; docs/dashboard.md)."""
    sessions = Sessions(app[ADMIN_TOKENS])
    board = Dashboard(provisioner, reaper, sessions, FleetIndex(provisioner),
                      ActionRunner(provisioner), _templates(), _static())  # fmt: skip
    app[SESSION] = sessions
    app[SESSION_TOKEN] = sessions.token_of  # the event stream reads with the session
    page = board.page
    app.router.add_get(ROOT, page(_to_root, login=False))
    app.router.add_get(f"{ROOT}/", page(board.fleet))
    app.router.add_get(f"{ROOT}/login", page(board.login_form, login=False))
    app.router.add_post(f"{ROOT}/login", page(board.login, login=False))
    app.router.add_post(f"{ROOT}/logout", page(board.logout))
    app.router.add_get(f"{ROOT}/static/{{name}}", page(board.asset, login=False))
    app.router.add_get(f"{ROOT}/nodes/{{hostname}}", page(board.node))
    app.router.add_get(f"{ROOT}/nodes/{{hostname}}/actions/{{action}}", page(board.confirm))
    app.router.add_post(f"{ROOT}/nodes/{{hostname}}/actions/{{action}}", page(board.act))

    async def warm(_: web.Application) -> None:
        board.index.refresh()  # read every node once, before the first page asks

    async def stop(_: web.Application) -> None:
        await board.actions.stop()

    app.on_startup.append(warm)
    app.on_cleanup.append(stop)


async def _to_root(_: web.Request) -> web.StreamResponse:
    return redirect(f"{ROOT}/")
