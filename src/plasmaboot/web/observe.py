"""/health in the seeds' exact shape, and /metrics in Prometheus text."""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from plasmaboot.lifecycle import State
from plasmaboot.provision import Provisioner
from plasmaboot.web.boot import PROVISIONER

SERVICES = ("dhcp", "tftp", "http")  # the seeds' shape, always reported


async def health(request: web.Request) -> web.Response:
    """The seeds' three services, then every other one `serve` probes (the admin
    listener); the same answer on either listener."""
    live = request.app[PROVISIONER].service_status()
    services = {name: live.get(name, "stopped") for name in SERVICES}
    services.update((name, status) for name, status in live.items() if name not in services)
    failing = {name: s for name, s in services.items() if s not in ("running", "disabled")}
    body: dict[str, object] = {
        "status": "unhealthy" if failing else "healthy",
        "services": services,
    }
    if failing:
        body["failing"] = sorted(failing)
    return web.json_response(body, status=503 if failing else 200)


async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


class LifecycleCollector(Collector):
    """Nodes per lifecycle state, read from the store at scrape time (never stale)."""

    def __init__(self, provisioner: Provisioner) -> None:
        self.provisioner = provisioner

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("plasmaboot_nodes", "Nodes by lifecycle state", labels=["state"])
        counts = self.provisioner.store.state_counts()
        for state in State:
            family.add_metric([state.value], counts.get(state.value, 0))
        yield family
