"""Chainfire membership through the runbook's HTTP admin API.

``POST /admin/member/add`` with ``{"id", "raft_addr"}`` (200/201 joined, 409 already a
member), ``GET /admin/cluster/members`` (``{"members": [{"id", "raft_addr", "status",
"role"}]}``), ``DELETE /admin/member/ID`` and ``GET /health``. Chainfire starts before it
is added (the seeds' order), so the agent waits for local health first, then joins, then
waits until the member list shows this node healthy as follower or leader (caught up).
"""

from __future__ import annotations

from typing import Any

import httpx

from plasmaboot.firstboot.backends.base import (
    ClusterUnreachable,
    JoinOutcome,
    JoinPolicy,
    Member,
    MembershipError,
    ServerUnavailable,
    first_answer,
    missing_peers,
    retry_membership,
)
from plasmaboot.firstboot.config import ServicePlan
from plasmaboot.firstboot.logs import service_logger

_VOTING_ROLES = ("leader", "follower")


class ChainfireBackend:
    starts_after_member_add = False

    def __init__(self, client: httpx.Client, policy: JoinPolicy) -> None:
        self._client = client
        self._policy = policy

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code >= 500:
            raise ServerUnavailable(f"HTTP {response.status_code} {response.text[:200]}")
        return response

    def healthy(self, client_url: str) -> bool:
        try:
            response = self._client.get(f"{client_url.rstrip('/')}/health")
        except httpx.TransportError:
            return False
        return response.status_code == 200

    def _list(self, url: str) -> list[Member]:
        response = self._checked(self._client.get(f"{url.rstrip('/')}/admin/cluster/members"))
        if response.status_code != 200:
            raise MembershipError(f"{url}: member list HTTP {response.status_code}")
        return [_member(raw, url) for raw in response.json().get("members", [])]

    def members(self, urls: list[str]) -> list[Member]:
        return first_answer(urls, self._list, "cannot list members")

    def confirm_formed(self, plan: ServicePlan) -> list[Member]:
        log = service_logger(plan.service, "bootstrap")
        urls = [plan.client_url, *plan.candidate_urls()]
        missing: list[str] = list(plan.initial_peers)
        for _ in self._policy.backoff.until(self._policy.catch_up_timeout_s):
            try:
                members = self.members(urls)
            except ClusterUnreachable as error:
                log.info("cluster not formed yet", reason=str(error))
                continue
            missing = missing_peers(plan.initial_peers, members)
            if not missing and sum(m.is_leader for m in members) == 1:
                return members
            log.info("waiting for initial peers and a leader", missing=missing)
        raise MembershipError(
            f"cluster did not form within {self._policy.catch_up_timeout_s:.0f}s; "
            f"initial peers missing: {missing or 'none'} or no single leader"
        )

    def _add(self, plan: ServicePlan, url: str) -> JoinOutcome:
        response = self._checked(
            self._client.post(
                f"{url.rstrip('/')}/admin/member/add",
                json={"id": plan.node_id, "raft_addr": plan.raft_addr},
            )
        )
        if response.status_code in (200, 201):
            return JoinOutcome.JOINED
        if response.status_code == 409:
            return JoinOutcome.ALREADY_MEMBER
        raise MembershipError(f"{url}: member add HTTP {response.status_code}: {response.text}")

    def join(self, plan: ServicePlan) -> JoinOutcome:
        urls = plan.candidate_urls()
        outcome = retry_membership(
            self._policy, lambda: first_answer(urls, lambda u: self._add(plan, u), "cannot add")
        )
        if outcome is JoinOutcome.ALREADY_MEMBER:
            service_logger(plan.service, "cluster-join").warning(
                "node already member of cluster (HTTP 409)"
            )
            return outcome
        self._wait_caught_up(plan, urls)
        return outcome

    def _wait_caught_up(self, plan: ServicePlan, urls: list[str]) -> None:
        log = service_logger(plan.service, "cluster-join")
        for _ in self._policy.backoff.until(self._policy.catch_up_timeout_s):
            try:
                members = self.members([plan.client_url, *urls])
            except ClusterUnreachable as error:
                log.info("waiting for member list", reason=str(error))
                continue
            mine = [m for m in members if m.name == plan.node_id]
            if mine and mine[0].healthy and not mine[0].is_learner:
                return
            log.info("waiting for this node to be a healthy voting member")
        raise MembershipError(
            f"{plan.node_id} added but not a healthy voting member within "
            f"{self._policy.catch_up_timeout_s:.0f}s"
        )

    def remove(self, urls: list[str], name: str) -> None:
        def delete(url: str) -> None:
            response = self._checked(self._client.delete(f"{url.rstrip('/')}/admin/member/{name}"))
            if response.status_code not in (200, 204):
                raise MembershipError(f"{url}: remove {name} HTTP {response.status_code}")

        first_answer(urls, delete, f"cannot remove {name}")


def _member(raw: dict[str, Any], url: str) -> Member:
    role = str(raw.get("role", ""))
    return Member(
        id=str(raw["id"]),
        name=str(raw["id"]),
        peer_urls=(f"{url.split('://')[0]}://{raw.get('raft_addr', '')}",),
        is_learner=role not in _VOTING_ROLES,
        is_leader=role == "leader",
        healthy=raw.get("status") == "healthy",
    )
