"""``cluster verify``: one place that decides whether a consensus cluster is healthy.

The runbook's checks (``jq '.members | length'``, one leader, every member healthy) plus
certificate expiry, which the seeds never check and which silently breaks TLS clusters.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plasmaboot.firstboot.backends import (
    ClusterBackend,
    ClusterUnreachable,
    Member,
    MembershipError,
    make_backend,
)
from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.firstboot.config import ServicePlan, TLSFiles
from plasmaboot.pki import CertInfo, cert_info


@dataclass
class ClusterReport:
    service: str
    members: list[Member] = field(default_factory=list)
    certs: list[CertInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def leaders(self) -> list[Member]:
        return [m for m in self.members if m.is_leader]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_cluster(
    service: str,
    backend: ClusterBackend,
    urls: list[str],
    expect_members: int | None = None,
    cert_paths: list[Path] | None = None,
    min_cert_days: float = 30.0,
    now: dt.datetime | None = None,
) -> ClusterReport:
    """Collect members and cert expiry; every failed check becomes a named problem."""
    report = ClusterReport(service)
    try:
        report.members = backend.members(urls)
    except (ClusterUnreachable, MembershipError) as error:
        report.problems.append(f"{service}: {error}")
    if report.members:
        if len(report.leaders) != 1:
            report.problems.append(f"{service}: {len(report.leaders)} leaders, expected 1")
        for member in report.members:
            if member.healthy is False:
                report.problems.append(f"{service}: member {member.name or member.id} unhealthy")
            if member.is_learner:
                report.problems.append(f"{service}: member {member.name or member.id} is a learner")
        if expect_members is not None and len(report.members) != expect_members:
            report.problems.append(
                f"{service}: {len(report.members)} members, expected {expect_members}"
            )
    for path in cert_paths or []:
        info = cert_info(path)
        report.certs.append(info)
        days = info.days_left(now)
        if days < min_cert_days:
            report.problems.append(f"certificate {path} expires in {days:.0f} days; renew it")
    return report


def verify_services(
    services: Sequence[ServicePlan],
    tls: TLSFiles | None,
    only: Sequence[str] = (),
    expect_members: int | None = None,
    min_cert_days: float = 30.0,
) -> list[ClusterReport]:
    """`verify_cluster` for each service (or those in `only`), its certificates the TLS
    files'. A node's cluster-config.json gives both here; a server gives the inventory's
    store URLs and its operator certificate (`membership.verify_inventory`). OSError: a TLS
    file cannot be read."""
    certs = [tls.node_cert, tls.ca_cert] if tls else []
    reports = []
    with http_client(tls) as client:
        for svc in services:
            if only and svc.service not in only:
                continue
            urls = [svc.client_url, *svc.candidate_urls()]
            backend = make_backend(svc, client)
            reports.append(
                verify_cluster(svc.service, backend, urls, expect_members, certs, min_cert_days)
            )
    return reports


def report_json(report: ClusterReport) -> dict[str, Any]:
    """The report as `cluster verify --json` prints it and the admin API returns it."""
    return {
        "service": report.service,
        "ok": report.ok,
        "problems": report.problems,
        "members": [asdict(m) for m in report.members],
        "certs": [
            {"path": str(c.path), "not_after": c.not_after.isoformat()} for c in report.certs
        ],
    }
