"""Dashboard sessions: an admin token exchanged at login for an HttpOnly cookie.

The token is typed into the login form (POSTed, never in a URL) and checked like any
admin API token (`AdminTokens.verify`). The browser then holds only a random session id,
in a cookie that is HttpOnly (no script reads it), Secure (the admin listener is TLS)
and SameSite=Strict (no other site's page sends it). The token stays in this server's
memory and is verified again on every request, so revoking it (`plasmaboot admin token
revoke`) ends its sessions at once, and a read token's session can read but not act.

Every form that changes something carries the session's CSRF token, and a POST whose
Origin is another site is refused before anything else. Sessions live in memory: a
restarted server (or another server of a fleet) asks for the token again.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from plasmaboot.provision.admin_tokens import AdminTokens, Scope
from plasmaboot.provision.tokens import TokenRefused

COOKIE = "plasmaboot_session"
IDLE_S = 8 * 3600  # a session unused this long ends
MAX_SESSIONS = 1000  # beyond this, the least recently used session ends


@dataclass
class Session:
    token: str = field(repr=False)
    name: str  # the admin token's name, shown in the page header
    csrf: str = field(repr=False)
    last_used: float
    flash: tuple[str, str] | None = None  # (ok | refused | failed | running, text), shown once


class Sessions:
    def __init__(self, tokens: AdminTokens) -> None:
        self.tokens = tokens
        self._by_id: OrderedDict[str, Session] = OrderedDict()

    def login(self, token: str) -> str:
        """A new session id for a valid admin token (of either scope); TokenRefused if not."""
        known = self.tokens.verify(token, Scope.READ)
        session_id = secrets.token_urlsafe(32)
        self._by_id[session_id] = Session(token, known.name, secrets.token_urlsafe(32), time.time())
        while len(self._by_id) > MAX_SESSIONS:
            self._by_id.popitem(last=False)
        return session_id

    def current(self, request: web.Request) -> Session | None:
        """The request's live session: its cookie names one, not idle too long, and its
        token still valid (checked again on every request)."""
        session_id = request.cookies.get(COOKIE, "")
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = time.time()
        try:
            if now - session.last_used > IDLE_S:
                raise TokenRefused(401, "session idle too long")
            self.tokens.verify(session.token, Scope.READ)
        except TokenRefused:
            del self._by_id[session_id]
            return None
        session.last_used = now
        self._by_id.move_to_end(session_id)
        return session

    def token_of(self, request: web.Request) -> str | None:
        """The session's token, for the admin API's read routes (the event stream)."""
        session = self.current(request)
        return session.token if session is not None else None

    def logout(self, request: web.Request) -> None:
        self._by_id.pop(request.cookies.get(COOKIE, ""), None)


def set_cookie(response: web.StreamResponse, session_id: str) -> None:
    response.set_cookie(COOKIE, session_id, path="/", secure=True, httponly=True,
                        samesite="Strict", max_age=IDLE_S)  # fmt: skip


def clear_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")


def csrf_ok(session: Session, sent: str) -> bool:
    return hmac.compare_digest(session.csrf.encode(), sent.encode())


def same_origin(request: web.Request) -> bool:
    """No Origin header (an old client), or this server's own origin."""
    origin = request.headers.get("Origin")
    return origin is None or origin == f"{request.scheme}://{request.host}"
