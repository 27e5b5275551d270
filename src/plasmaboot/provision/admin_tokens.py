"""Admin API tokens: named, scoped, stored only as a hash, revocable.

An operator makes one with `plasmaboot admin token create --name N --scope read|write`,
which prints it once; the store keeps its SHA-256 (in the table of the agent tokens, under
the name `admin:N`, which no node's host name can be, and the purpose `admin-<scope>`).
`read` may read (node views, events, the event stream); `write` may also act (lifecycle
actions, inventory reload). A token is refused with 401 when it is unknown, revoked or
expired, and a read token asking to act with 403 naming the scope it needs.

The static token of earlier versions (`$PLASMABOOT_ADMIN_TOKEN`, or `admin.token` in the
state directory) still works while one is given, as a `write` token named `static`: only
its hash is kept, in memory. It is the migration path, and is logged as deprecated.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from plasmaboot.provision.tokens import TokenRefused, constant_time_equal, token_hash
from plasmaboot.store import Store, Token

NAME_PREFIX = "admin:"
STATIC_NAME = "static"
NO_EXPIRY_S = 100 * 365 * 86400  # "never": revoked by name, not by age
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class Scope(StrEnum):
    READ = "read"  # read-only: node views, events, the event stream
    WRITE = "write"  # operator: also lifecycle actions and inventory reload

    @property
    def purpose(self) -> str:
        return f"admin-{self.value}"

    def allows(self, needed: Scope) -> bool:
        return self is Scope.WRITE or needed is Scope.READ


PURPOSES = {scope.purpose: scope for scope in Scope}


class AdminTokenError(ValueError):
    """A token cannot be made or revoked as asked; worded for the operator."""


@dataclass(frozen=True)
class AdminToken:
    """What the store knows of an admin token (never the token itself)."""

    name: str
    scope: Scope
    created_at: float
    expires_at: float | None  # None: until revoked

    @classmethod
    def of(cls, record: Token) -> AdminToken:
        # created + NO_EXPIRY_S - created can round to just below NO_EXPIRY_S: allow 1 s
        lifetime = record.expires_at - record.created_at
        expires = None if lifetime >= NO_EXPIRY_S - 1 else record.expires_at
        return cls(record.hostname[len(NAME_PREFIX) :], PURPOSES[record.purpose],
                   record.created_at, expires)  # fmt: skip


@dataclass
class AdminTokens:
    store: Store
    static_hash: str | None = None  # the deprecated static token's SHA-256, if one is set

    @classmethod
    def with_static(cls, store: Store, static_token: str | None) -> AdminTokens:
        return cls(store, token_hash(static_token) if static_token else None)

    def create(self, name: str, scope: Scope, ttl_s: float | None = None) -> str:
        """A new token (returned once; the store keeps its hash); names are unique."""
        if not _NAME.match(name) or name == STATIC_NAME:
            raise AdminTokenError(
                f"--name {name!r}: use 1-63 letters, digits, '.', '_' or '-' (not "
                f"{STATIC_NAME!r}, the deprecated static token's name)"
            )
        if any(t.name == name for t in self.list()):
            raise AdminTokenError(
                f"a token named {name!r} exists; revoke it first or choose another name"
            )
        token = secrets.token_urlsafe(32)
        now = time.time()
        expires = now + (ttl_s if ttl_s is not None else NO_EXPIRY_S)
        record = Token(token_hash(token), NAME_PREFIX + name, scope.purpose, now, expires, None)
        self.store.claim_token(record)
        return token

    def list(self) -> list[AdminToken]:
        return [AdminToken.of(t) for t in self.store.list_tokens(PURPOSES)]

    def revoke(self, name: str) -> AdminToken:
        """Revoke the token named `name`; AdminTokenError if there is none."""
        found = [t for t in self.list() if t.name == name]
        if not found:
            raise AdminTokenError(
                f"no admin token named {name!r}; `plasmaboot admin token list` shows them"
            )
        self.store.revoke_tokens(NAME_PREFIX + name)
        return found[0]

    def verify(self, token: str, needed: Scope) -> AdminToken:
        """The token's record if it may do what needs `needed`; else TokenRefused (401:
        unknown, revoked or expired; 403: its scope is not enough)."""
        digest = token_hash(token)
        if self.static_hash is not None and constant_time_equal(digest, self.static_hash):
            found = AdminToken(STATIC_NAME, Scope.WRITE, 0.0, None)
        else:
            record = self.store.get_token(digest)
            if record is None or record.purpose not in PURPOSES:
                raise TokenRefused(401, "unknown or revoked admin token", "unknown")
            if record.expires_at < time.time():
                raise TokenRefused(401, "admin token expired; create a new one", "expired")
            found = AdminToken.of(record)
        if not found.scope.allows(needed):
            raise TokenRefused(
                403,
                f"admin token {found.name!r} has scope {found.scope.value}; this needs scope "
                f"{needed.value}",
                "scope",
            )
        return found
