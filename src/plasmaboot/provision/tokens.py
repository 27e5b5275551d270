"""Agent tokens, after Ironic's agent token: a boot token, then a session token.

The per-node boot script puts a *boot token* on the installer's kernel command line. It
is signed (HMAC-SHA256 with a key kept 0600 in the state directory) and names its node
and expiry, so handing one out costs no store write: a machine stuck in a netboot loop
cannot grow the database. The agent exchanges it exactly once (lookup): the exchange
records the token's hash, so a replay is refused, and returns a *session token*, stored
only as a hash, that authenticates the agent's reports until it expires. Both are bound
to one node: a token seen on one machine's console cannot move another machine.

The installed OS reports its first boot and join long after a session token has expired,
so it gets a *node credential* of its own: issued when the node's install files are
assembled, delivered inside its 0600 cluster-config.json, stored only as a hash, valid
until the node is reprovisioned or decommissioned (which revoke it) or a newer install
replaces it. It authenticates reports exactly as a session token does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from plasmaboot.store import Store, Token

BOOT_TTL_S = 2 * 3600
SESSION_TTL_S = 24 * 3600
NODE_CREDENTIAL_TTL_S = 5 * 365 * 86400  # revoked by reprovision/decommission, not by age
KEY_FILE = "agent-token.key"


class TokenPurpose(StrEnum):
    BOOT = "boot"
    SESSION = "session"
    NODE = "node"  # the installed OS's credential


REPORTING_PURPOSES = frozenset({TokenPurpose.SESSION, TokenPurpose.NODE})


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


def signing_key(state_dir: Path) -> bytes:
    """The boot-token key: made once, 0600, never logged."""
    path = state_dir / KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another server sharing the directory made it first
            return path.read_bytes()
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path.read_bytes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class AgentTokens:
    store: Store
    key: bytes
    boot_ttl_s: float = BOOT_TTL_S
    session_ttl_s: float = SESSION_TTL_S

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())

    def issue_boot(self, hostname: str) -> str:
        expires = int(time.time() + self.boot_ttl_s)
        payload = f"{hostname}|{expires}|{secrets.token_hex(8)}"
        return f"{_b64(payload.encode())}.{self._sign(payload)}"

    def _open_boot(self, token: str) -> tuple[str, int]:
        """(node, expiry) of a genuine boot token, or TokenRefused(401)."""
        encoded, _, signature = token.partition(".")
        try:
            payload = _unb64(encoded).decode()
            hostname, expires, _nonce = payload.split("|")
            expiry = int(expires)
        except (ValueError, UnicodeDecodeError):
            raise TokenRefused(401, "unknown boot token") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise TokenRefused(401, "unknown boot token")
        return hostname, expiry

    def exchange(self, boot_token: str, hostname: str) -> str:
        """Spend a boot token (once) for a session token of the same node."""
        owner, expiry = self._open_boot(boot_token)
        now = time.time()
        if expiry < now:
            raise TokenRefused(401, "boot token expired; netboot the node again")
        if owner != hostname:
            raise TokenRefused(403, "this token belongs to another node")
        spent = Token(token_hash(boot_token), owner, TokenPurpose.BOOT, now, expiry, now)
        if not self.store.claim_token(spent):
            raise TokenRefused(401, "boot token already used (one-time)")
        return self.issue_session(owner)

    def _issue(self, hostname: str, purpose: TokenPurpose, ttl_s: float) -> str:
        token = secrets.token_urlsafe(32)
        now = time.time()
        self.store.claim_token(Token(token_hash(token), hostname, purpose, now, now + ttl_s, None))
        return token

    def issue_session(self, hostname: str) -> str:
        return self._issue(hostname, TokenPurpose.SESSION, self.session_ttl_s)

    def issue_node_credential(self, hostname: str) -> str:
        """A new credential for the node's installed OS; earlier ones stop working."""
        self.store.revoke_tokens(hostname, TokenPurpose.NODE)
        return self._issue(hostname, TokenPurpose.NODE, NODE_CREDENTIAL_TTL_S)

    def verify_session(self, token: str) -> Token:
        """A live session token or node credential, or TokenRefused(401)."""
        record = self.store.get_token(token_hash(token))
        if record is None or record.purpose not in REPORTING_PURPOSES:
            raise TokenRefused(401, "unknown session token")
        if record.expires_at < time.time():
            raise TokenRefused(401, "session token expired; netboot the node again")
        return record
