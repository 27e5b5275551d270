"""Membership changes an operator makes: removing a node from the Raft stores."""

from __future__ import annotations

import httpx

from plasmaboot.firstboot.backends import ClusterUnreachable, MembershipError, make_backend
from plasmaboot.firstboot.config import FirstBootConfig
from plasmaboot.firstboot.retry import Backoff


def remove_member(
    plan: FirstBootConfig,
    client: httpx.Client,
    name: str,
    services: list[str] | None = None,
    wait_s: float = 30.0,
) -> list[str]:
    """Remove `name` from each configured service's cluster (runbook 7.2/7.6).

    etcd refuses reconfiguration until every voting member has been connected for a few
    seconds ("unhealthy cluster"), so each removal is retried with backoff for `wait_s`;
    the last refusal is raised. Returns the services it was removed from.
    """
    removed = []
    for svc in plan.services:
        if services and svc.service not in services:
            continue
        backend = make_backend(svc, client)
        error: Exception | None = None
        for _ in Backoff(0.5, 4.0).until(wait_s):
            try:
                backend.remove([svc.client_url, *svc.candidate_urls()], name)
            except (ClusterUnreachable, MembershipError) as failure:
                error = failure
                continue
            error = None
            break
        if error is not None:
            raise MembershipError(f"{svc.service}: {error}") from error
        removed.append(svc.service)
    return removed
