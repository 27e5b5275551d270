"""Agent tokens, after Ironic's agent token: a boot token, then a session token.

The per-node boot script puts a *boot token* on the installer's kernel command line. It
is signed (HMAC-SHA256 with a key kept in the store, so every server sharing the store
accepts it) and names its node and expiry, so handing one out costs no store write: a
machine stuck in a netboot loop cannot grow the database. The agent exchanges it exactly
once (lookup): the exchange records the token's hash, so a replay is refused, and returns
a *session token*, stored only as a hash, that authenticates the agent's reports until it
expires. Both are bound to one node: a token seen on one machine's console cannot move
another machine.

The installed OS reports its first boot and join long after a session token has expired,
so it gets a *node credential* of its own: issued when the node's install files are
assembled, delivered inside its 0600 cluster-config.json, stored only as a hash, valid
until the node is reprovisioned or decommissioned (which revoke it) or a newer install
replaces it. It authenticates reports exactly as a session token does.

One exchange per provisioning cycle: an install boot token names the *cycle* it was
issued in (the id of the `pxe-boot` event that put its node in `pxe-booting`), and is
exchanged only while its node is still in that cycle. The first exchange also claims the
cycle (a hash of node and cycle, kept like a spent boot token), so every other boot token
of that boot is refused (409) even before the installer reports in. Who may *get* a boot
token (the address plasmaboot's DHCP leased to the node) is decided by the boot script
(web/scripts.py); what a boot token may do is decided here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from prometheus_client import Counter

from plasmaboot.boot.policy import NEXT_BOOT, NextBoot
from plasmaboot.lifecycle import State
from plasmaboot.store import NodeRecord, Store, Token

BOOT_TTL_S = 2 * 3600
SESSION_TTL_S = 24 * 3600
NODE_CREDENTIAL_TTL_S = 5 * 365 * 86400  # revoked by reprovision/decommission, not by age
KEY_NAME = "agent-token"  # the signing key's name in the store
KEY_FILE = "agent-token.key"  # where the key lived before the store kept it
_CYCLE_SCAN = 16  # events read back to find the node's current pxe-boot (then all of them)

BOOT_TOKEN_REFUSED = Counter(
    "plasmaboot_boot_token_refused_total",
    "Boot tokens withheld from a node script or refused at the agent lookup",
    ["where", "reason"],
)


class TokenPurpose(StrEnum):
    BOOT = "boot"
    SESSION = "session"
    NODE = "node"  # the installed OS's credential


REPORTING_PURPOSES = frozenset({TokenPurpose.SESSION, TokenPurpose.NODE})


class BootStage(StrEnum):
    """What a boot token boots: the installer, or (the lab only) the simulated disk OS."""

    INSTALL = "install"
    FIRSTBOOT = "firstboot"


class TokenRefused(Exception):
    """Why a token was not accepted; `status` is the HTTP status to answer with and
    `code` the reason label it is counted under in /metrics."""

    def __init__(self, status: int, reason: str, code: str = "refused") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class BootClaim:
    """What a genuine boot token says: its node, expiry, stage and cycle."""

    hostname: str
    expires: int
    stage: BootStage
    cycle: int


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def signing_key(store: Store, state_dir: Path | None = None) -> bytes:
    """The boot-token key, kept in the store: every server sharing a store signs and
    checks with one key, made once by whichever server asks first (insert-if-absent).
    A key file an earlier version left in the state directory is that server's
    candidate, so the boot tokens it signed stay good. Never logged."""
    candidate = b""
    if state_dir is not None and (state_dir / KEY_FILE).is_file():
        candidate = (state_dir / KEY_FILE).read_bytes()
    return store.secret(KEY_NAME, candidate or secrets.token_bytes(32))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def boot_cycle(store: Store, record: NodeRecord) -> int:
    """The node's provisioning cycle: the id of the event that moved it into its current
    state (for `pxe-booting`, its latest `pxe-boot`); 0 if there is none."""
    state = record.state.value

    def entry(limit: int | None) -> int | None:
        for event in reversed(store.events(record.hostname, limit=limit)):
            if event.to_state == state and event.from_state != state:
                return event.id
        return None

    return entry(_CYCLE_SCAN) or entry(None) or 0


def _cycle_hash(hostname: str, cycle: int) -> str:
    return token_hash(f"cycle|{hostname}|{cycle}")


@dataclass
class AgentTokens:
    store: Store
    key: bytes
    boot_ttl_s: float = BOOT_TTL_S
    session_ttl_s: float = SESSION_TTL_S

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())

    def issue_boot(self, hostname: str, stage: BootStage = BootStage.INSTALL) -> str:
        """A boot token for the node's current cycle (read from the store; nothing written)."""
        record = self.store.get_node(hostname)
        cycle = boot_cycle(self.store, record) if record is not None else 0
        expires = int(time.time() + self.boot_ttl_s)
        payload = f"{hostname}|{expires}|{secrets.token_hex(8)}|{stage.value}|{cycle}"
        return f"{_b64(payload.encode())}.{self._sign(payload)}"

    def _open_boot(self, token: str) -> BootClaim:
        """What a genuine boot token says, or TokenRefused(401)."""
        encoded, _, signature = token.partition(".")
        try:
            payload = _unb64(encoded).decode()
            hostname, expires, _nonce, stage, cycle = payload.split("|")
            claim = BootClaim(hostname, int(expires), BootStage(stage), int(cycle))
        except (ValueError, UnicodeDecodeError):
            raise TokenRefused(401, "unknown boot token", "unknown") from None
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise TokenRefused(401, "unknown boot token", "unknown")
        return claim

    def cycle_spent(self, record: NodeRecord) -> bool:
        """Whether a boot token of the node's current cycle was already exchanged."""
        marker = _cycle_hash(record.hostname, boot_cycle(self.store, record))
        return self.store.get_token(marker) is not None

    def exchange(self, boot_token: str, node: NodeRecord) -> str:
        """Spend a boot token (once, and once per cycle) for a session token of `node`.

        Every refusal is counted and writes nothing (except when two exchanges race: the
        loser may leave its own token spent)."""
        try:
            return self._exchange(boot_token, node)
        except TokenRefused as exc:
            BOOT_TOKEN_REFUSED.labels("lookup", exc.code).inc()
            raise

    def _exchange(self, boot_token: str, node: NodeRecord) -> str:
        claim = self._open_boot(boot_token)
        now = time.time()
        if claim.expires < now:
            raise TokenRefused(401, "boot token expired; netboot the node again", "expired")
        if claim.hostname != node.hostname:
            raise TokenRefused(403, "this token belongs to another node", "other-node")
        spent_hash = token_hash(boot_token)
        if self.store.get_token(spent_hash) is not None:
            raise TokenRefused(401, "boot token already used (one-time)", "replayed")
        if claim.stage is BootStage.INSTALL:
            self._claim_cycle(claim, node, now)
        elif NEXT_BOOT[node.state] is not NextBoot.LOCAL_DISK:
            raise TokenRefused(
                409,
                f"{node.hostname} is {node.state.value}: a first-boot token is good only "
                "while the node boots its installed system",
                "wrong-state",
            )
        spent = Token(spent_hash, claim.hostname, TokenPurpose.BOOT, now, claim.expires, now)
        if not self.store.claim_token(spent):
            raise TokenRefused(401, "boot token already used (one-time)", "replayed")
        return self.issue_session(claim.hostname)

    def _claim_cycle(self, claim: BootClaim, node: NodeRecord, now: float) -> None:
        """An install token works only in the pxe-booting cycle it was issued in, once."""
        if node.state is not State.PXE_BOOTING:
            raise TokenRefused(
                409,
                f"{node.hostname} is {node.state.value}, not pxe-booting: an install boot "
                "token is exchanged only while its node netboots (a new install starts "
                "with the next netboot of a failed or re-enrolled node)",
                "wrong-state",
            )
        cycle = boot_cycle(self.store, node)
        if claim.cycle != cycle:
            raise TokenRefused(
                409,
                f"this boot token is from an earlier boot of {node.hostname}; netboot it again",
                "stale-cycle",
            )
        marker = Token(
            _cycle_hash(node.hostname, cycle),
            node.hostname,
            TokenPurpose.BOOT,
            now,
            now + max(self.boot_ttl_s, self.session_ttl_s),
            now,
        )
        if not self.store.claim_token(marker):
            raise TokenRefused(
                409,
                f"the installer of {node.hostname} already called in for this boot (one "
                "boot token exchange per provisioning cycle)",
                "cycle-spent",
            )

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
