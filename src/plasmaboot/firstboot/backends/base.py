"""The membership interface the agent and ``cluster verify`` use, and shared plumbing."""

from __future__ import annotations

import enum
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
import structlog

from plasmaboot.firstboot.config import ServicePlan, TLSFiles
from plasmaboot.firstboot.retry import Backoff

T = TypeVar("T")


class JoinOutcome(enum.Enum):
    JOINED = "joined"
    ALREADY_MEMBER = "already-member"


@dataclass(frozen=True)
class Member:
    id: str
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...] = ()
    is_learner: bool = False
    is_leader: bool = False
    healthy: bool | None = None


@dataclass(frozen=True)
class JoinPolicy:
    backoff: Backoff = field(default_factory=Backoff)
    max_attempts: int = 5
    health_timeout_s: float = 120.0
    catch_up_timeout_s: float = 120.0


class MembershipError(Exception):
    """The cluster answered but refused (e.g. a same-named member with another address)."""


class ClusterUnreachable(Exception):
    """No candidate URL answered; ``tried`` maps each URL to its last failure for the log."""

    def __init__(self, what: str, tried: dict[str, str], answered: bool = False) -> None:
        super().__init__(f"{what}; tried: " + "; ".join(f"{u}: {r}" for u, r in tried.items()))
        self.tried = tried
        self.answered = answered  # some member answered, but with a 5xx (busy, no leader)


class ClusterBusy(Exception):
    """The cluster refused for now (one learner at a time, members just reconnected)."""


class ClusterBackend(Protocol):
    #: True when the local service can only start after the member was added (etcd).
    starts_after_member_add: bool

    def healthy(self, client_url: str) -> bool: ...

    def members(self, urls: list[str]) -> list[Member]: ...

    def confirm_formed(self, plan: ServicePlan) -> list[Member]: ...

    def join(self, plan: ServicePlan) -> JoinOutcome: ...

    def remove(self, urls: list[str], name: str) -> None: ...


def http_client(tls: TLSFiles | None, timeout_s: float = 5.0) -> httpx.Client:
    """Verified TLS (CA + hostname) with the node certificate as client cert: no ``-k``."""
    if tls is None:
        return httpx.Client(timeout=timeout_s)
    context = ssl.create_default_context(cafile=str(tls.ca_cert))
    context.load_cert_chain(str(tls.node_cert), str(tls.node_key))
    return httpx.Client(verify=context, timeout=timeout_s)


def first_answer(urls: list[str], call: Callable[[str], T], what: str) -> T:
    """Run ``call`` against each URL in order until one answers; collect why others failed."""
    tried: dict[str, str] = {}
    answered = False
    for url in dict.fromkeys(urls):
        try:
            answer = call(url)
        except (httpx.TransportError, ServerUnavailable) as error:
            tried[url] = f"{type(error).__name__}: {error}"
            answered = answered or isinstance(error, ServerUnavailable)
            continue
        if tried:
            structlog.get_logger().warning(f"failed over to {url}", unreachable=tried)
        return answer
    raise ClusterUnreachable(what, tried, answered)


def retry_membership(policy: JoinPolicy, step: Callable[[], T]) -> T:
    """Retry a membership change with backoff and jitter.

    A cluster nobody answers for counts against ``max_attempts`` (the seeds' retry count);
    a cluster that answers "not now" (5xx, one learner at a time) is waited for up to
    ``catch_up_timeout_s`` instead, since etcd refuses reconfiguration for a while after
    any membership change and an attempt count cannot express that.
    """
    log = structlog.get_logger()
    tried: dict[str, str] = {}
    unreachable = 0
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return step()
        except ClusterUnreachable as error:
            tried.update(error.tried)
            reason, busy = str(error), error.answered
        except ClusterBusy as error:
            reason, busy = str(error), True
            tried["cluster"] = reason
        if not busy:
            unreachable += 1
            if unreachable >= policy.max_attempts:
                raise ClusterUnreachable(f"join failed after {unreachable} attempts", tried)
        elif time.monotonic() - start > policy.catch_up_timeout_s:
            raise ClusterUnreachable(
                f"join failed: cluster kept refusing for {policy.catch_up_timeout_s:.0f}s", tried
            )
        delay = policy.backoff.delay(attempt)
        log.warning("join attempt failed", attempt=attempt + 1, reason=reason, retry_s=delay)
        time.sleep(delay)
        attempt += 1


class ServerUnavailable(Exception):
    """A member answered 5xx (no leader, shutting down): try the next one."""


def peer_matches(peer: str, member: Member) -> bool:
    """``node02.example.com:2380``/``10.0.0.12:2380`` matches by address or by node name."""
    host, _, port = peer.rpartition(":")
    for url in member.peer_urls:
        parts = urlsplit(url)
        if str(parts.port) == port and host in (parts.hostname, member.name):
            return True
        if str(parts.port) == port and member.name and host.split(".")[0] == member.name:
            return True
    return False


def missing_peers(peers: tuple[str, ...], members: list[Member]) -> list[str]:
    """Initial peers that no member in ``members`` accounts for."""
    return [peer for peer in peers if not any(peer_matches(peer, m) for m in members)]
