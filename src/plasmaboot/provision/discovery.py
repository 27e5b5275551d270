"""Bounds on discovery: what an unauthenticated boot request may add to the store.

An unknown MAC asking for its iPXE script is recorded as a `discovered` node, so the
operator sees new hardware. Anyone on the segment can ask for any MAC, so two bounds keep
that from growing the store without end (both in the inventory, `server.discovery`):

- per source: a token bucket per requesting address (an IPv6 address counts by its /64),
  `per_source_per_minute` tokens a minute with a burst of as many; the table of sources
  is bounded (`MAX_SOURCES`, least recently seen evicted first), so it cannot grow either;
- in total: no new node once `max_discovered` nodes wait in `discovered`.

A refusal writes nothing, raises `DiscoveryRefused` (HTTP 429 with the reason and a
Retry-After) and is counted in `plasmaboot_discovery_refused_total{reason}`. 0 turns
discovery over HTTP off.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address, ip_network

from prometheus_client import Counter

from plasmaboot.inventory.models import DiscoveryLimits

MAX_SOURCES = 4096
CAP_RETRY_S = 60

DISCOVERY_REFUSED = Counter(
    "plasmaboot_discovery_refused_total",
    "Unknown machines not recorded as discovered, by reason",
    ["reason"],
)


class DiscoveryRefused(Exception):
    """Why an unknown machine was not recorded; `retry_after` in whole seconds."""

    def __init__(self, code: str, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.retry_after = retry_after


def source_key(remote: str | None) -> str:
    """Whom a request is counted against: its IPv4 address, or its IPv6 /64."""
    if not remote:
        return "unknown"
    try:
        address = ip_address(remote)
    except ValueError:
        return remote[:64]
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass
class DiscoveryLimiter:
    """Per-source token buckets (bounded) plus the total cap, checked before an insert."""

    max_sources: int = MAX_SOURCES
    clock: Callable[[], float] = time.monotonic
    # source -> (tokens left, when they were counted); oldest use first
    _buckets: OrderedDict[str, tuple[float, float]] = field(default_factory=OrderedDict)

    @property
    def sources(self) -> int:
        return len(self._buckets)

    def admit(self, remote: str | None, limits: DiscoveryLimits, discovered: int) -> None:
        """Take one token for `remote`, or raise DiscoveryRefused (counted)."""
        try:
            self._take(source_key(remote), limits.per_source_per_minute)
            if discovered >= limits.max_discovered:
                raise DiscoveryRefused(
                    "cap",
                    f"{discovered} unknown machines already wait in discovered "
                    f"(server.discovery.max_discovered is {limits.max_discovered}); add "
                    "them to the inventory, or raise the limit, for more to be recorded",
                    CAP_RETRY_S,
                )
        except DiscoveryRefused as exc:
            DISCOVERY_REFUSED.labels(exc.code).inc()
            raise

    def _take(self, key: str, per_minute: int) -> None:
        now = self.clock()
        rate = per_minute / 60.0
        tokens, then = self._buckets.pop(key, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + (now - then) * rate)
        if tokens < 1.0:
            self._remember(key, tokens, now)
            wait = math.ceil((1.0 - tokens) / rate) if rate > 0 else CAP_RETRY_S
            raise DiscoveryRefused(
                "rate",
                f"too many unknown machines asked from {key} "
                f"(server.discovery.per_source_per_minute is {per_minute})",
                max(1, wait),
            )
        self._remember(key, tokens - 1.0, now)

    def _remember(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)
