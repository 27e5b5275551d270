"""Agent tokens, after Ironic's agent token: a boot token, then a session token.

The per-node boot script puts a fresh *boot token* on the installer's kernel command line.
The agent exchanges it exactly once (lookup) for a *session token* that authenticates its
reports until it expires. Both are stored only as SHA-256 hashes and are bound to one
node, so a token seen on one machine's console cannot move another machine, and a boot
token replayed after its use is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from plasmaboot.store import Store, Token

BOOT_TTL_S = 2 * 3600
SESSION_TTL_S = 24 * 3600


class TokenPurpose(StrEnum):
    BOOT = "boot"
    SESSION = "session"


class TokenRefused(Exception):
    """Why a token was not accepted; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass
class AgentTokens:
    store: Store
    boot_ttl_s: float = BOOT_TTL_S
    session_ttl_s: float = SESSION_TTL_S

    def issue(self, hostname: str, purpose: TokenPurpose) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        ttl = self.boot_ttl_s if purpose is TokenPurpose.BOOT else self.session_ttl_s
        self.store.save_token(Token(token_hash(token), hostname, purpose, now, now + ttl, None))
        return token

    def verify(self, token: str, purpose: TokenPurpose, hostname: str | None = None) -> Token:
        """The stored token, or TokenRefused (401 unknown/expired/replayed, 403 other node)."""
        record = self.store.get_token(token_hash(token))
        now = time.time()
        if record is None or record.purpose != purpose:
            raise TokenRefused(401, f"unknown {purpose} token")
        if record.expires_at < now:
            raise TokenRefused(401, f"{purpose} token expired; netboot the node again")
        if hostname is not None and record.hostname != hostname:
            raise TokenRefused(403, "this token belongs to another node")
        if purpose is TokenPurpose.BOOT and record.used_at is not None:
            raise TokenRefused(401, "boot token already used (one-time)")
        return record

    def exchange(self, boot_token: str, hostname: str) -> str:
        """Spend a boot token (once) for a session token of the same node."""
        record = self.verify(boot_token, TokenPurpose.BOOT, hostname)
        if not self.store.use_token(record.token_hash, time.time()):
            raise TokenRefused(401, "boot token already used (one-time)")
        return self.issue(record.hostname, TokenPurpose.SESSION)
