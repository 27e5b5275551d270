"""etcd v3 membership through the JSON gRPC gateway (``/v3/...`` on the client port).

httpx on the gateway instead of a gRPC stack keeps the agent dependency-light; etcd 3.4
serves every call used here (member list/add/promote/remove, maintenance status).

Join order (etcd refuses a new member that was not added first, so the seeds' "service
starts, then join" cannot hold for etcd): the agent adds this node as a *learner* through
the leader (or any other member), writes an EnvironmentFile with ``ETCD_NAME``,
``ETCD_INITIAL_CLUSTER`` and ``ETCD_INITIAL_CLUSTER_STATE=existing`` for the local etcd unit,
waits for the local etcd to come up, then promotes it once etcd reports it caught up.
etcd allows one learner at a time; a second joiner backs off until the first is promoted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from plasmaboot.firstboot.backends.base import (
    ClusterBusy,
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
from plasmaboot.firstboot.markers import write_text_atomic
from plasmaboot.firstboot.retry import Backoff

# Promotion is polled faster than joins are retried: only one learner exists at a time, so
# one node polls, and a promote that etcd refuses ("not in sync") is cheap for the leader.
_CATCH_UP_POLL = Backoff(base_s=0.05, cap_s=1.0)
_RETRYABLE = ("too many learner members", "in sync with leader", "not have leader")


class EtcdError(MembershipError):
    """The gateway answered with an error body (``{"error", "code", "message"}``)."""


class EtcdBackend:
    starts_after_member_add = True

    def __init__(self, client: httpx.Client, policy: JoinPolicy, env_file: Path) -> None:
        self._client = client
        self._policy = policy
        self._env_file = env_file

    def _post(self, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self._client.post(f"{url.rstrip('/')}{path}", json=body)
        if response.status_code >= 500 and response.status_code != 501:
            raise ServerUnavailable(f"HTTP {response.status_code} {response.text[:200]}")
        data: dict[str, Any] = response.json() if response.content else {}
        if response.status_code != 200:
            raise EtcdError(str(data.get("message") or data.get("error") or response.text))
        return data

    def healthy(self, client_url: str) -> bool:
        try:
            response = self._client.get(f"{client_url.rstrip('/')}/health")
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.json().get("health") == "true"

    def _status(self, url: str) -> dict[str, Any]:
        return self._post(url, "/v3/maintenance/status", {})

    def _list(self, url: str) -> list[Member]:
        data = self._post(url, "/v3/cluster/member/list", {})
        return [_member(raw) for raw in data.get("members", [])]

    def members(self, urls: list[str]) -> list[Member]:
        """Members with leader and per-member health filled in (for ``cluster verify``)."""
        members = first_answer(urls, self._list, "cannot list members")
        leader = first_answer(urls, self._status, "cannot read status").get("leader", "0")
        return [
            Member(
                id=m.id,
                name=m.name,
                peer_urls=m.peer_urls,
                client_urls=m.client_urls,
                is_learner=m.is_learner,
                is_leader=m.id == str(leader),
                healthy=any(self.healthy(url) for url in m.client_urls),
            )
            for m in members
        ]

    def confirm_formed(self, plan: ServicePlan) -> list[Member]:
        """Bootstrap: wait until every initial peer has started and a leader is elected."""
        log = service_logger(plan.service, "bootstrap")
        urls = [plan.client_url, *plan.candidate_urls()]
        missing: list[str] = list(plan.initial_peers)
        for _ in self._policy.backoff.until(self._policy.catch_up_timeout_s):
            try:
                members = first_answer(urls, self._list, "cannot list members")
                leader = first_answer(urls, self._status, "cannot read status").get("leader")
            except (ClusterUnreachable, EtcdError) as error:
                log.info("cluster not formed yet", reason=str(error))
                continue
            started = [m for m in members if m.name and not m.is_learner]
            missing = missing_peers(plan.initial_peers, started)
            if not missing and leader not in (None, "0"):
                return members
            log.info("waiting for initial peers", missing=missing, leader=leader or "none")
        raise MembershipError(
            f"cluster did not form within {self._policy.catch_up_timeout_s:.0f}s; "
            f"initial peers not started: {missing or 'none'}, check their etcd logs"
        )

    def _find_self(self, plan: ServicePlan, members: list[Member]) -> Member | None:
        for member in members:
            if plan.peer_url in member.peer_urls and member.name not in ("", plan.node_id):
                raise MembershipError(
                    f"peer URL {plan.peer_url} belongs to member {member.name}; remove it first: "
                    f"plasmaboot cluster remove {member.name}"
                )
            if plan.peer_url in member.peer_urls:
                return member
            if member.name == plan.node_id:
                raise MembershipError(
                    f"a member named {plan.node_id} exists with peer URLs {member.peer_urls}, "
                    f"not {plan.peer_url}; remove it first: plasmaboot cluster remove "
                    f"{plan.node_id}"
                )
        return None

    def _add_learner(
        self, plan: ServicePlan, urls: list[str], members: list[Member], mine: Member | None
    ) -> tuple[str, list[Member]]:
        """Add this node as a learner, or resume the learner an interrupted run added."""
        if mine is not None:
            return mine.id, members
        waiting = [m.name or m.id for m in members if m.is_learner]
        if waiting:
            raise ClusterBusy(f"too many learner members: {waiting} still catching up")
        body = {"peerURLs": [plan.peer_url], "isLearner": True}
        data = first_answer(
            urls, lambda url: self._post(url, "/v3/cluster/member/add", body), "cannot add"
        )
        return str(data["member"]["ID"]), [_member(raw) for raw in data.get("members", [])]

    def _write_env(self, plan: ServicePlan, member_id: str, members: list[Member]) -> None:
        cluster = [
            f"{plan.node_id if m.id == member_id else m.name}={url}"
            for m in members
            if m.name or m.id == member_id
            for url in m.peer_urls
        ]
        lines = [
            f"ETCD_NAME={plan.node_id}",
            f"ETCD_INITIAL_CLUSTER={','.join(cluster)}",
            "ETCD_INITIAL_CLUSTER_STATE=existing",
            f"ETCD_INITIAL_ADVERTISE_PEER_URLS={plan.peer_url}",
        ]
        write_text_atomic(self._env_file, "\n".join(lines) + "\n")

    def join(self, plan: ServicePlan) -> JoinOutcome:
        log = service_logger(plan.service, "cluster-join")
        urls = plan.candidate_urls()

        def add_or_find() -> tuple[Member | None, str, list[Member]]:
            members = first_answer(urls, self._list, "cannot list members")
            urls.extend(u for m in members for u in m.client_urls if u not in urls)
            mine = self._find_self(plan, members)
            if mine is not None and mine.name and not mine.is_learner:
                return mine, mine.id, members
            try:
                return None, *self._add_learner(plan, urls, members, mine)
            except EtcdError as error:
                if any(text in str(error) for text in _RETRYABLE):
                    raise ClusterBusy(str(error)) from error
                raise

        voting, member_id, members = retry_membership(self._policy, add_or_find)
        if voting is not None:
            log.warning("node already a voting member", member_id=member_id)
            return JoinOutcome.ALREADY_MEMBER
        self._write_env(plan, member_id, members)
        log.info(
            "learner added; local etcd may start", member_id=member_id, env=str(self._env_file)
        )
        self._promote_when_caught_up(plan, member_id, urls)
        return JoinOutcome.JOINED

    def _promote_when_caught_up(self, plan: ServicePlan, member_id: str, urls: list[str]) -> None:
        log = service_logger(plan.service, "cluster-join")
        reason = "local etcd never answered"
        body = {"ID": member_id}
        for _ in _CATCH_UP_POLL.until(self._policy.catch_up_timeout_s):
            try:
                first_answer(
                    urls,
                    lambda url: self._post(url, "/v3/cluster/member/promote", body),
                    "cannot promote",
                )
            except ClusterUnreachable as error:
                reason = str(error)
            except EtcdError as error:
                if "not a learner" in str(error):
                    return  # promoted by an earlier, interrupted run
                reason = str(error)
            else:
                log.info("learner caught up and promoted to voting member", member_id=member_id)
                return
            log.info("waiting for learner to catch up", reason=reason)
        raise MembershipError(
            f"learner {plan.node_id} not promoted within {self._policy.catch_up_timeout_s:.0f}s "
            f"({reason}); is the local etcd running with {self._env_file}?"
        )

    def remove(self, urls: list[str], name: str) -> None:
        members = first_answer(urls, self._list, "cannot list members")
        matches = [m for m in members if m.name == name or name in m.peer_urls]
        if not matches:
            raise MembershipError(f"no member named {name}; members: {[m.name for m in members]}")
        body = {"ID": matches[0].id}
        first_answer(
            urls, lambda url: self._post(url, "/v3/cluster/member/remove", body), "cannot remove"
        )


def _member(raw: dict[str, Any]) -> Member:
    return Member(
        id=str(raw["ID"]),
        name=str(raw.get("name", "")),
        peer_urls=tuple(raw.get("peerURLs", [])),
        client_urls=tuple(raw.get("clientURLs", [])),
        is_learner=bool(raw.get("isLearner", False)),
    )
