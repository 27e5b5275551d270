"""The first-boot sequence, in the seeds' systemd order: Chainfire, FlareDB, IAM, health.

Per consensus service: a marker present means done (exit 0, nothing touched); bootstrap
nodes wait for local health and confirm the initial cluster formed; join nodes add
themselves through the leader or any other member and wait until they are caught-up voting
members. FlareDB only runs after Chainfire succeeded (its unit ``Requires`` Chainfire's).
"""

from __future__ import annotations

import enum
import subprocess
import time
from pathlib import Path

import httpx
import structlog

from plasmaboot.firstboot.backends import (
    ClusterBackend,
    ClusterUnreachable,
    JoinOutcome,
    JoinPolicy,
    MembershipError,
    make_backend,
)
from plasmaboot.firstboot.config import FirstBootConfig, ServicePlan
from plasmaboot.firstboot.logs import service_logger
from plasmaboot.firstboot.markers import existing_marker, write_marker
from plasmaboot.firstboot.report import StageReporter
from plasmaboot.firstboot.results import StageResult, StageStatus
from plasmaboot.firstboot.retry import Backoff


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    ALREADY_MEMBER = 2
    INVALID_CONFIG = 3


class StageFailed(Exception):
    """A stage could not complete; the message says what was tried and what to check."""


def wait_healthy(backend: ClusterBackend, url: str, timeout_s: float, backoff: Backoff) -> None:
    for _ in backoff.until(timeout_s):
        if backend.healthy(url):
            return
    raise StageFailed(f"health check timeout: {url}/health not healthy after {timeout_s:.0f}s")


def run_service(
    plan: ServicePlan, backend: ClusterBackend, state_dir: Path, policy: JoinPolicy
) -> tuple[StageStatus, str]:
    """Bootstrap or join one consensus service; idempotent through its marker file."""
    log = service_logger(plan.service, "bootstrap" if plan.bootstrap else "cluster-join")
    marker = existing_marker(state_dir, plan.service)
    if marker is not None:
        return StageStatus.MARKER_PRESENT, f"marker {marker} present, nothing to do"
    if plan.bootstrap or not backend.starts_after_member_add:
        log.info(f"waiting for local {plan.service} service", url=plan.client_url)
        wait_healthy(backend, plan.client_url, policy.health_timeout_s, policy.backoff)
        log.info(f"local {plan.service} healthy")
    if plan.bootstrap:
        members = backend.confirm_formed(plan)
        write_marker(state_dir, plan.service, bootstrap=True)
        return StageStatus.BOOTSTRAPPED, f"bootstrap node, cluster of {len(members)} formed"
    outcome = backend.join(plan)
    if outcome is JoinOutcome.JOINED and backend.starts_after_member_add:
        wait_healthy(backend, plan.client_url, policy.health_timeout_s, policy.backoff)
    write_marker(state_dir, plan.service, bootstrap=False)
    if outcome is JoinOutcome.ALREADY_MEMBER:
        return StageStatus.ALREADY_MEMBER, "node already member of cluster"
    return StageStatus.JOINED, "joined cluster as a caught-up voting member"


def run_iam_setup(config: FirstBootConfig, state_dir: Path, client: httpx.Client) -> StageResult:
    """Wait for IAM's health URL, then run the initial-setup hook once (marker afterwards)."""
    start = time.monotonic()
    marker = state_dir / ".iam-initialized"
    if marker.exists():
        return StageResult("iam", StageStatus.MARKER_PRESENT, f"marker {marker} present", 0.0)
    if config.iam_health_url:
        _wait_http_ok(client, config.iam_health_url, config)
    if not config.iam_setup_command:
        message = "no iam_setup_command configured"
        return StageResult("iam", StageStatus.SKIPPED, message, _since(start))
    argv = list(config.iam_setup_command)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=config.health_timeout_s)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise StageFailed(f"IAM setup hook {argv[0]} could not run: {error}") from error
    if done.returncode != 0:
        raise StageFailed(
            f"IAM setup hook {argv[0]} exited {done.returncode}: {done.stderr.strip()[-300:]}"
        )
    write_marker(state_dir, "iam", bootstrap=True)
    return StageResult("iam", StageStatus.DONE, "IAM initial setup complete", _since(start))


def _wait_http_ok(client: httpx.Client, url: str, config: FirstBootConfig) -> None:
    for _ in Backoff(config.retry_base_s, config.retry_cap_s).until(config.health_timeout_s):
        try:
            if client.get(url).status_code == 200:
                return
        except httpx.TransportError:
            continue
    raise StageFailed(f"IAM health timeout: {url} not 200 after {config.health_timeout_s:.0f}s")


def check_cluster_health(
    config: FirstBootConfig, backends: dict[str, ClusterBackend]
) -> StageResult:
    """The seeds' cluster-health-check: local health plus this node voting in each cluster."""
    start = time.monotonic()
    problems: list[str] = []
    for plan in config.services:
        backend = backends[plan.service]
        if not backend.healthy(plan.client_url):
            problems.append(f"{plan.service}: local {plan.client_url} unhealthy")
            continue
        try:
            members = backend.members([plan.client_url, *plan.candidate_urls()])
        except (ClusterUnreachable, MembershipError) as error:
            problems.append(f"{plan.service}: {error}")
            continue
        if not any(m.name == plan.node_id and not m.is_learner for m in members):
            problems.append(f"{plan.service}: {plan.node_id} is not a voting member")
    if problems:
        raise StageFailed("cluster health check failed: " + "; ".join(problems))
    return StageResult("health-check", StageStatus.DONE, "cluster healthy", _since(start))


def _since(start: float) -> float:
    return round(time.monotonic() - start, 3)


def _log_result(result: StageResult, operation: str) -> None:
    service_logger(result.stage, operation).info(
        result.message, status=result.status.value, elapsed_s=result.elapsed_s
    )


STAGES = ("chainfire", "flaredb", "iam", "health")


def run_firstboot(
    config: FirstBootConfig, state_dir: Path, client: httpx.Client, only: str | None = None
) -> ExitCode:
    """All stages in order, or `only` one of STAGES (one systemd unit per stage); returns
    the seeds' exit code (1 > 2 > 0)."""
    services = [p for p in config.services if only in (None, p.service)]
    pending = [p.service for p in services if not existing_marker(state_dir, p.service)]
    if services and not pending:
        service_logger("first-boot", "check-markers").info(
            f"every marker present in {state_dir}, nothing to do"
        )
        return ExitCode.OK
    policy = JoinPolicy(
        backoff=Backoff(config.retry_base_s, config.retry_cap_s),
        max_attempts=config.join_max_attempts,
        health_timeout_s=config.health_timeout_s,
        catch_up_timeout_s=config.catch_up_timeout_s,
    )
    backends = {p.service: make_backend(p, client, policy, state_dir) for p in config.services}
    reporter = StageReporter(config, client)
    # One systemd unit per stage: the store stages say first boot started, and only the
    # run that ends with the health check says `joined` (the node is active only then).
    if pending or only is None:
        reporter.started(pending)
    results: list[StageResult] = []
    stage, operation = "first-boot", "setup"
    try:
        for plan in services:
            stage, operation = plan.service, "bootstrap" if plan.bootstrap else "cluster-join"
            structlog.contextvars.bind_contextvars(service=stage, operation=operation)
            start = time.monotonic()
            status, message = run_service(plan, backends[plan.service], state_dir, policy)
            results.append(StageResult(stage, status, message, _since(start)))
            _log_result(results[-1], operation)
        structlog.contextvars.clear_contextvars()
        if only in (None, "iam"):
            stage, operation = "iam", "setup"
            results.append(run_iam_setup(config, state_dir, client))
            _log_result(results[-1], operation)
        if only in (None, "health"):
            stage, operation = "health-check", "verify"
            results.append(check_cluster_health(config, backends))
            _log_result(results[-1], operation)
    except (StageFailed, ClusterUnreachable, MembershipError) as error:
        structlog.contextvars.clear_contextvars()
        service_logger(stage, operation).error(str(error))
        reporter.failed(stage, str(error), results)
        return ExitCode.FAILED
    if only in (None, "health"):
        reporter.finished(results)
    if any(r.status is StageStatus.ALREADY_MEMBER for r in results):
        return ExitCode.ALREADY_MEMBER
    return ExitCode.OK
