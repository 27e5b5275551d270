"""Membership changes an operator makes: removing a node from the Raft stores.

`StoreMembership` is what `node decommission` and `node reprovision` use: it finds the
node's member (by name, or by its peer address, so a member left behind by a wiped node is
found too), refuses a removal that would leave fewer healthy voting members than a
majority of the new membership (or no member at all) unless forced, and says per service
what it did. Its URLs and TLS come from the inventory (`inventory_membership`: every store
node's client URL, plasmaboot's own operator certificate from its PKI) or from a node's
cluster-config.json.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from plasmaboot.cluster.verify import ClusterReport, verify_cluster, verify_services
from plasmaboot.firstboot.backends import (
    ClusterUnreachable,
    Member,
    MembershipError,
    make_backend,
)
from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.firstboot.config import FirstBootConfig, ServicePlan, TLSFiles
from plasmaboot.firstboot.retry import Backoff
from plasmaboot.inventory import Inventory
from plasmaboot.pki import PKIError, cert_info, issue_client_cert, node_cert_paths
from plasmaboot.pki.authority import CA_CERT
from plasmaboot.render.cluster_config import (
    CHAINFIRE_CLIENT,
    CHAINFIRE_RAFT,
    FLAREDB_CLIENT,
    FLAREDB_RAFT,
)
from plasmaboot.render.common import cluster_ip, services_of

OPERATOR_CERT = "plasmaboot-operator"  # <pki>/plasmaboot-operator.crt and .key
_PORTS = {
    "chainfire": (CHAINFIRE_CLIENT, CHAINFIRE_RAFT),
    "flaredb": (FLAREDB_CLIENT, FLAREDB_RAFT),
}  # service -> (client port, raft port)
_REISSUE_DAYS = 30


class QuorumRefused(MembershipError):
    """Removing the member would break the cluster's quorum (or end the cluster)."""


@dataclass(frozen=True)
class Removal:
    """What one service's membership change did: `removed` or `not-a-member`."""

    service: str
    outcome: str
    member: str = ""
    note: str = ""

    def line(self, hostname: str) -> str:
        if self.outcome == "removed":
            return f"removed from {self.service} (member {self.member}){self.note}"
        return f"already not a member of {self.service}{self.note}"


def quorum_problem(members: Sequence[Member], target: Member, hostname: str) -> str | None:
    """Why removing `target` would break the cluster, or None when it is safe.

    A learner never votes: removing one is always safe. A voting member may go only if at
    least one voting member stays and the healthy voting members that stay are a majority
    of the voting members that stay (etcd's own rule for a reconfiguration).
    """
    if target.is_learner:
        return None
    remaining = [m for m in members if not m.is_learner and m.id != target.id]
    if not remaining:
        return f"{hostname} is the last voting member: removing it ends the cluster"
    healthy = [m.name or m.id for m in remaining if m.healthy]
    need = len(remaining) // 2 + 1
    if len(healthy) < need:
        down = [m.name or m.id for m in remaining if not m.healthy]
        return (
            f"after removing {hostname}, {len(healthy)} of the {len(remaining)} remaining voting "
            f"members would be healthy (down: {', '.join(down)}); a quorum needs {need}"
        )
    return None


def _peer_host_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port


@dataclass
class StoreMembership:
    """Remove a node from every store service listed in `services` (see the module doc).

    `peer_address(hostname, service)` gives the node's raft `IP:port` when known, so a
    member is found by its address as well as by its name; `tls` is called on first use.
    """

    services: Sequence[ServicePlan]
    tls: Callable[[], TLSFiles | None]
    peer_address: Callable[[str, str], str | None] = lambda hostname, service: None
    wait_s: float = 30.0

    def _target(self, members: list[Member], hostname: str, service: str) -> Member | None:
        address = self.peer_address(hostname, service)
        for member in members:
            if member.name == hostname:
                return member
        if address is None:
            return None
        host, _, port = address.rpartition(":")
        for member in members:
            if any(_peer_host_port(u) == (host, int(port)) for u in member.peer_urls):
                return member
        return None

    def _urls(self, svc: ServicePlan, hostname: str) -> list[str]:
        """Every URL of the service, the node's own last (it may be down or wiped)."""
        urls = list(dict.fromkeys([svc.client_url, *svc.candidate_urls()]))
        address = self.peer_address(hostname, svc.service)
        own = address.rpartition(":")[0] if address else hostname
        return sorted(urls, key=lambda url: urlsplit(url).hostname in (own, hostname))

    def _each(self, hostname: str, force: bool, change: bool) -> list[Removal]:
        results = []
        with http_client(self.tls()) as client:
            for svc in self.services:
                results.append(self._one(client, svc, hostname, force, change))
        return results

    def _one(
        self, client: httpx.Client, svc: ServicePlan, hostname: str, force: bool, change: bool
    ) -> Removal:
        backend = make_backend(svc, client)
        urls = self._urls(svc, hostname)
        members = backend.members(urls)
        target = self._target(members, hostname, svc.service)
        if target is None:
            names = ", ".join(sorted(m.name or m.id for m in members)) or "none"
            return Removal(svc.service, "not-a-member", note=f" (members: {names})")
        note = ""
        problem = quorum_problem(members, target, hostname)
        if problem is not None:
            if not force:
                raise QuorumRefused(f"{svc.service}: {problem}")
            note = f"; forced past: {problem}"
        if target.name and target.name != hostname:
            raise MembershipError(
                f"{svc.service}: the member with {hostname}'s peer address is named "
                f"{target.name}; check the inventory, then `plasmaboot cluster remove "
                f"{target.name}`"
            )
        if not change:
            return Removal(svc.service, "removed", target.id, note)
        # A member that never started has no name: etcd finds it by its peer URL.
        key = target.name or target.peer_urls[0]
        error: Exception | None = None
        for _ in Backoff(0.5, 4.0).until(self.wait_s):
            try:
                backend.remove(urls, key)
            except (ClusterUnreachable, MembershipError) as failure:
                error = failure
                continue
            return Removal(svc.service, "removed", target.id, note)
        raise MembershipError(f"{svc.service}: {error}") from error

    def check(self, hostname: str, force: bool = False) -> list[Removal]:
        """What `remove` would do, changing nothing; raises QuorumRefused when it must not."""
        return self._each(hostname, force, change=False)

    def remove(self, hostname: str, force: bool = False) -> list[Removal]:
        return self._each(hostname, force, change=True)

    def verify(self, hostname: str) -> list[str]:
        """`cluster verify` for a health gate: one leader, every member healthy and
        voting, and `hostname` a member where the inventory says it runs the service."""
        problems: list[str] = []
        with http_client(self.tls()) as client:
            for svc in self.services:
                backend = make_backend(svc, client)
                urls = self._urls(svc, hostname)
                report = verify_cluster(svc.service, backend, urls)
                problems += report.problems
                address = self.peer_address(hostname, svc.service)
                own = address.rpartition(":")[0] if address else None
                runs_it = any(urlsplit(url).hostname == own for url in urls)
                missing = self._target(report.members, hostname, svc.service) is None
                if report.members and runs_it and missing:
                    problems.append(f"{svc.service}: {hostname} is not a member")
        return problems


def operator_tls(pki: Path) -> TLSFiles:
    """plasmaboot's own client certificate for the cluster store, issued from its PKI (the
    CA that signed every node certificate) on first use and again near expiry."""
    if not (pki / CA_CERT).exists():
        raise MembershipError(
            f"no cluster CA in {pki}: plasmaboot issued no node certificates here, so it "
            "cannot reach the store; pass --cluster-config (a member's cluster-config.json)"
        )
    paths = node_cert_paths(pki, OPERATOR_CERT)
    fresh = paths.cert.exists() and paths.key.exists()
    if fresh and cert_info(paths.cert).days_left(dt.datetime.now(dt.UTC)) < _REISSUE_DAYS:
        fresh = False
    if not fresh:
        try:
            issue_client_cert(pki, OPERATOR_CERT)
        except PKIError as error:
            raise MembershipError(str(error)) from error
    return TLSFiles(paths.ca_cert, paths.cert, paths.key)


def store_services(inv: Inventory) -> list[ServicePlan]:
    """One plan per store service, its URLs every inventory node running it (cluster IP)."""
    plans = []
    for service in ("chainfire", "flaredb"):
        client_port = _PORTS[service][0]
        urls = tuple(
            f"https://{cluster_ip(inv, node)}:{client_port}"
            for node in inv.nodes
            if service in services_of(inv, node)
        )
        if not urls:
            continue
        plan = ServicePlan(
            service=service, backend=inv.cluster.store, node_id="plasmaboot",
            bootstrap=False, leader_url=urls[0], member_urls=urls, client_url=urls[0],
            raft_addr="", initial_peers=(),
        )  # fmt: skip
        plans.append(plan)
    return plans


def inventory_peer_address(inv: Inventory) -> Callable[[str, str], str | None]:
    """hostname, service -> the node's raft address (cluster IP and the service's port)."""

    def address(hostname: str, service: str) -> str | None:
        node = inv.node(hostname)
        if node is None or service not in _PORTS:
            return None
        return f"{cluster_ip(inv, node)}:{_PORTS[service][1]}"

    return address


def inventory_membership(inv: Inventory, pki: Path, wait_s: float = 30.0) -> StoreMembership:
    """Membership from the inventory's cluster settings and plasmaboot's operator cert."""
    return StoreMembership(
        store_services(inv), lambda: operator_tls(pki), inventory_peer_address(inv), wait_s
    )


def config_membership(
    plan: FirstBootConfig,
    inv: Inventory | None = None,
    wait_s: float = 30.0,
    services: Sequence[str] | None = None,
) -> StoreMembership:
    """Membership from a member's cluster-config.json (its URLs and TLS files); `services`
    limits it to some of the configured ones (chainfire, flaredb)."""
    peer = inventory_peer_address(inv) if inv is not None else (lambda hostname, service: None)
    chosen = [s for s in plan.services if not services or s.service in services]
    return StoreMembership(chosen, lambda: plan.tls, peer, wait_s)


def verify_inventory(
    inv: Inventory,
    pki: Path,
    only: Sequence[str] = (),
    expect_members: int | None = None,
    min_cert_days: float = 30.0,
) -> list[ClusterReport]:
    """`cluster verify` through the inventory's store URLs and plasmaboot's operator
    certificate (what a server runs for `cluster verify --server`). No usable certificate
    is each service's problem, as an unreachable store is."""
    services = [s for s in store_services(inv) if not only or s.service in only]
    try:
        return verify_services(services, operator_tls(pki), only, expect_members, min_cert_days)
    except (MembershipError, OSError) as error:
        return [ClusterReport(s.service, problems=[f"{s.service}: {error}"]) for s in services]
