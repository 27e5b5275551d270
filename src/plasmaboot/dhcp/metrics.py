"""DHCP counters for /metrics, read from the live servers' stats at scrape time.

A collector instead of Counter.inc() per packet keeps the packet path free of the
client library's locks; the numbers are the same ones `DhcpServer.stats` returns.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class _HasStats(Protocol):
    @property
    def stats(self) -> Mapping[str, int]: ...

    @property
    def active_leases(self) -> int: ...


_SERVERS: weakref.WeakSet[_HasStats] = weakref.WeakSet()


def track(server: _HasStats) -> None:
    _SERVERS.add(server)


def untrack(server: _HasStats) -> None:
    _SERVERS.discard(server)


class DhcpCollector(Collector):
    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        events = CounterMetricFamily(
            "plasmaboot_dhcp_events",
            "DHCP packets received by type, replies sent, NAKs, drops and decode errors",
            labels=["event"],
        )
        leases = GaugeMetricFamily("plasmaboot_dhcp_active_leases", "Bound, unexpired leases")
        totals: dict[str, int] = {}
        active = 0
        for server in list(_SERVERS):
            for name, value in server.stats.items():
                totals[name] = totals.get(name, 0) + value
            active += server.active_leases
        for name, value in sorted(totals.items()):
            events.add_metric([name], value)
        leases.add_metric([], active)
        yield events
        yield leases


REGISTRY.register(DhcpCollector())
