"""The first-boot sequence with the chainfire HTTP admin API.

Chainfire is not packaged anywhere, so no real peer can run in these tests; ``FakeChainfire``
is a stand-in that speaks the runbook's admin API (member add/list/remove, health). The
etcd backend is exercised against real etcd in tests/integration/test_firstboot_etcd.py.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from plasmaboot.firstboot.agent import ExitCode, run_firstboot
from plasmaboot.firstboot.config import build_config
from plasmaboot.firstboot.logs import configure_logging
from plasmaboot.firstboot.schema import validate_cluster_config
from plasmaboot.web.api import ReportRequest

LEADER = "https://node01.example.com:2379"
NODE02 = "https://node02.example.com:2379"
LOCAL = "https://10.0.200.20:2379"
TOKEN = "s3cret-agent-token-0123"


@dataclass
class FakeChainfire:
    """A fake chainfire cluster: no chainfire binary exists to run as a real peer."""

    members: dict[str, dict[str, str]] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    requests: list[str] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    busy_adds: int = 0  # answer this many member adds with 503 (leader election, reconfig)

    def handle(self, request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}:{request.url.port}"
        self.requests.append(f"{request.method} {base}{request.url.path}")
        if base in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/api/v1/agent/report":
            assert request.headers["authorization"] == f"Bearer {TOKEN}"
            self.reports.append(json.loads(request.content))
            return httpx.Response(204)
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "healthy"})
        if request.url.path == "/admin/cluster/members":
            return httpx.Response(200, json={"members": list(self.members.values())})
        if request.url.path == "/admin/member/add":
            if self.busy_adds > 0:
                self.busy_adds -= 1
                return httpx.Response(503, json={"error": "no leader"})
            body = json.loads(request.content)
            if body["id"] in self.members:
                return httpx.Response(409, json={"error": "already a member"})
            self.members[body["id"]] = {
                "id": body["id"], "raft_addr": body["raft_addr"],
                "status": "healthy", "role": "follower",
            }  # fmt: skip
            return httpx.Response(201, json={"ok": True})
        return httpx.Response(404)


def three_node_cluster() -> FakeChainfire:
    fake = FakeChainfire()
    for i, role in ((1, "leader"), (2, "follower"), (3, "follower")):
        fake.members[f"node0{i}"] = {
            "id": f"node0{i}", "raft_addr": f"10.0.200.1{i - 1}:2380",
            "status": "healthy", "role": role,
        }  # fmt: skip
    return fake


def join_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "node_id": "node04",
        "node_role": "worker",
        "bootstrap": False,
        "cluster_name": "prod-cluster",
        "leader_url": LEADER,
        "raft_addr": "10.0.200.20:2380",
        "member_urls": [NODE02],
        "flaredb_enabled": False,
        "retry_base_s": 0.001,
        "retry_cap_s": 0.002,
        "health_timeout_s": 0.5,
        "catch_up_timeout_s": 0.5,
        "join_max_attempts": 3,
    }
    doc.update(overrides)
    assert validate_cluster_config(doc) == []
    return doc


def run(
    fake: FakeChainfire, doc: dict[str, Any], state: Path, only: str | None = None
) -> tuple[ExitCode, list[Any]]:
    out = io.StringIO()
    configure_logging(out)
    with httpx.Client(transport=httpx.MockTransport(fake.handle)) as client:
        code = run_firstboot(build_config(doc), state, client, only)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_join_adds_member_through_leader_and_writes_joined_marker(tmp_path: Path) -> None:
    fake = three_node_cluster()
    code, lines = run(fake, join_doc(), tmp_path)
    assert code is ExitCode.OK
    assert f"POST {LEADER}/admin/member/add" in fake.requests
    assert fake.members["node04"]["raft_addr"] == "10.0.200.20:2380"
    assert (tmp_path / ".chainfire-joined").read_text().startswith("20")
    assert {"timestamp", "level", "service", "operation", "message"} <= lines[0].keys()
    assert lines[0]["service"] == "chainfire" and lines[0]["operation"] == "cluster-join"


def test_local_health_is_awaited_before_the_join(tmp_path: Path) -> None:
    fake = three_node_cluster()
    run(fake, join_doc(), tmp_path)
    assert fake.requests.index(f"GET {LOCAL}/health") < fake.requests.index(
        f"POST {LEADER}/admin/member/add"
    )


def test_leader_down_join_goes_through_another_member(tmp_path: Path) -> None:
    fake = three_node_cluster()
    fake.down.add(LEADER)
    code, lines = run(fake, join_doc(), tmp_path)
    assert code is ExitCode.OK
    assert f"POST {NODE02}/admin/member/add" in fake.requests
    assert any(LEADER in line.get("unreachable", {}) for line in lines)


def test_http_409_means_already_member_exit_2_and_marker(tmp_path: Path) -> None:
    fake = three_node_cluster()
    fake.members["node04"] = {**fake.members["node03"], "id": "node04"}
    code, lines = run(fake, join_doc(), tmp_path)
    assert code is ExitCode.ALREADY_MEMBER
    assert (tmp_path / ".chainfire-joined").exists()
    assert any(line["level"] == "WARN" and "409" in line["message"] for line in lines)


def test_marker_present_means_no_request_at_all(tmp_path: Path) -> None:
    (tmp_path / ".chainfire-joined").write_text("2025-12-10T10:30:45+00:00\n")
    fake = three_node_cluster()
    code, _ = run(fake, join_doc(), tmp_path)
    assert code is ExitCode.OK
    assert fake.requests == []


def test_unreachable_cluster_exits_1_after_retries_naming_every_url(tmp_path: Path) -> None:
    fake = three_node_cluster()
    fake.down |= {LEADER, NODE02}
    code, lines = run(fake, join_doc(), tmp_path)
    assert code is ExitCode.FAILED
    assert fake.requests.count(f"POST {LEADER}/admin/member/add") == 3
    error = [line for line in lines if line["level"] == "ERROR"][-1]
    assert "join failed after 3 attempts" in error["message"]
    assert LEADER in error["message"] and NODE02 in error["message"]
    assert not (tmp_path / ".chainfire-joined").exists()


def test_a_busy_cluster_is_waited_for_beyond_the_attempt_count(tmp_path: Path) -> None:
    fake = three_node_cluster()
    fake.busy_adds = 10  # 5 rounds of leader + node02 refusing, more than 3 attempts
    code, _ = run(fake, join_doc(), tmp_path)
    assert code is ExitCode.OK
    assert "node04" in fake.members


def test_a_cluster_refusing_past_the_catch_up_timeout_fails(tmp_path: Path) -> None:
    fake = three_node_cluster()
    fake.busy_adds = 10**6
    code, lines = run(fake, join_doc(catch_up_timeout_s=0.3), tmp_path)
    assert code is ExitCode.FAILED
    assert "cluster kept refusing" in lines[-1]["message"]
    assert "no leader" in lines[-1]["message"]


def test_local_service_never_healthy_fails_before_any_join(tmp_path: Path) -> None:
    fake = three_node_cluster()
    fake.down.add(LOCAL)
    code, lines = run(fake, join_doc(), tmp_path)
    assert code is ExitCode.FAILED
    assert not any("/admin/member/add" in r for r in fake.requests)
    assert "health check timeout" in lines[-1]["message"]


def test_bootstrap_waits_for_all_initial_peers_and_one_leader(tmp_path: Path) -> None:
    fake = three_node_cluster()
    doc = join_doc(
        node_id="node01", bootstrap=True, raft_addr="10.0.200.10:2380",
        initial_peers=["node01.example.com:2380", "node02:2380", "10.0.200.12:2380"],
    )  # fmt: skip
    code, _ = run(fake, doc, tmp_path)
    assert code is ExitCode.OK
    assert (tmp_path / ".chainfire-initialized").exists()
    assert not any("/admin/member/add" in r for r in fake.requests)


def test_bootstrap_without_a_leader_fails_naming_the_problem(tmp_path: Path) -> None:
    fake = three_node_cluster()
    fake.members["node01"]["role"] = "candidate"
    doc = join_doc(
        node_id="node01", bootstrap=True, raft_addr="10.0.200.10:2380",
        initial_peers=["node01:2380", "node02:2380", "node03:2380"],
    )  # fmt: skip
    code, lines = run(fake, doc, tmp_path)
    assert code is ExitCode.FAILED
    assert "no single leader" in lines[-1]["message"]


def test_flaredb_runs_after_chainfire_and_not_when_chainfire_fails(tmp_path: Path) -> None:
    fake = three_node_cluster()
    fake.down |= {LEADER, NODE02}
    doc = join_doc(flaredb_enabled=True, flaredb_member_urls=["https://node02.example.com:2479"])
    code, _ = run(fake, doc, tmp_path)
    assert code is ExitCode.FAILED
    assert not any(":2479" in r for r in fake.requests)
    fake.down.clear()
    code, lines = run(fake, doc, tmp_path / "second")
    assert code is ExitCode.ALREADY_MEMBER  # the fake is one cluster on both ports
    services = [line["service"] for line in lines if line.get("status")]
    assert services[:2] == ["chainfire", "flaredb"]


def test_stages_are_reported_with_the_token_and_the_token_is_never_logged(
    tmp_path: Path,
) -> None:
    fake = three_node_cluster()
    doc = join_doc(plasmaboot_url="http://10.0.100.1:8080", agent_token=TOKEN)
    code, lines = run(fake, doc, tmp_path)
    assert code is ExitCode.OK
    assert [r["stage"] for r in fake.reports] == ["first-boot", "joining", "joined"]
    for report in fake.reports:
        ReportRequest.model_validate(report)  # the server's own request model accepts it
        assert report["detail"]["node"] == "node04"
    stages = fake.reports[-1]["detail"]["stages"]
    assert [(s["stage"], s["status"]) for s in stages] == [
        ("chainfire", "joined"), ("iam", "skipped"), ("health-check", "done"),
    ]  # fmt: skip
    assert TOKEN not in json.dumps(lines)


def test_one_unit_per_stage_reports_joined_only_after_the_health_check(
    tmp_path: Path,
) -> None:
    """The rendered units run `--stage chainfire` then `--stage health`: the node must not
    be reported joined (active) before its health check has run."""
    fake = three_node_cluster()
    doc = join_doc(plasmaboot_url="http://10.0.100.1:8080", agent_token=TOKEN)
    assert run(fake, doc, tmp_path, only="chainfire")[0] is ExitCode.OK
    assert [r["stage"] for r in fake.reports] == ["first-boot", "joining"]
    assert run(fake, doc, tmp_path, only="health")[0] is ExitCode.OK
    assert [r["stage"] for r in fake.reports] == ["first-boot", "joining", "joined"]
    stages = fake.reports[-1]["detail"]["stages"]
    assert [(s["stage"], s["status"]) for s in stages] == [("health-check", "done")]


def test_a_failure_is_reported_with_the_failed_stage(tmp_path: Path) -> None:
    fake = three_node_cluster()
    fake.down |= {LEADER, NODE02}
    doc = join_doc(plasmaboot_url="http://10.0.100.1:8080", agent_token=TOKEN)
    code, _ = run(fake, doc, tmp_path)
    assert code is ExitCode.FAILED
    assert fake.reports[-1]["stage"] == "failed"
    assert fake.reports[-1]["detail"]["failed_stage"] == "chainfire"
    assert "join failed after 3 attempts" in fake.reports[-1]["detail"]["message"]


def test_marker_run_reports_nothing_and_a_down_server_never_fails_the_boot(
    tmp_path: Path,
) -> None:
    fake = three_node_cluster()
    fake.down.add("http://10.0.100.1:8080")
    doc = join_doc(plasmaboot_url="http://10.0.100.1:8080", agent_token=TOKEN)
    code, lines = run(fake, doc, tmp_path)
    assert code is ExitCode.OK
    assert any("report 'joined'" in line["message"] for line in lines if line["level"] == "WARN")
    fake.requests.clear()
    assert run(fake, doc, tmp_path)[0] is ExitCode.OK
    assert fake.requests == []


def test_iam_hook_runs_once_and_its_failure_is_reported(tmp_path: Path) -> None:
    fake = three_node_cluster()
    hook = tmp_path / "iam-setup"
    hook.write_text('#!/bin/sh\necho ran >> "$0.log"\n')
    hook.chmod(0o755)
    code, _ = run(fake, join_doc(iam_setup_command=[str(hook)]), tmp_path / "state")
    assert code is ExitCode.OK
    assert (tmp_path / "state" / ".iam-initialized").exists()
    (tmp_path / "state" / ".chainfire-joined").unlink()
    code, _ = run(fake, join_doc(iam_setup_command=[str(hook)]), tmp_path / "state")
    assert code is ExitCode.ALREADY_MEMBER
    assert (tmp_path / "iam-setup.log").read_text() == "ran\n"
    failing = join_doc(iam_setup_command=["/bin/sh", "-c", "echo no admin >&2; exit 4"])
    code, lines = run(three_node_cluster(), failing, tmp_path / "other")
    assert code is ExitCode.FAILED
    assert "exited 4: no admin" in lines[-1]["message"]
    missing = join_doc(iam_setup_command=[str(tmp_path / "no-such-hook")])
    code, lines = run(three_node_cluster(), missing, tmp_path / "third")
    assert code is ExitCode.FAILED
    assert "no-such-hook could not run" in lines[-1]["message"]


def test_iam_stage_waits_for_iam_health_before_the_hook(tmp_path: Path) -> None:
    fake = three_node_cluster()
    iam = "http://10.0.200.20:8080"
    fake.down.add(iam)
    doc = join_doc(iam_health_url=f"{iam}/health", iam_setup_command=["/bin/true"])
    code, lines = run(fake, doc, tmp_path)
    assert code is ExitCode.FAILED
    assert lines[-1]["service"] == "iam"
    assert lines[-1]["message"].startswith(f"IAM health timeout: {iam}/health")
    assert not (tmp_path / ".iam-initialized").exists()


@pytest.mark.parametrize("level", ["INFO", "WARN", "ERROR"])
def test_log_levels_use_the_seed_spelling(tmp_path: Path, level: str) -> None:
    fake = three_node_cluster()
    if level == "WARN":
        fake.members["node04"] = {**fake.members["node03"], "id": "node04"}
    if level == "ERROR":
        fake.down |= {LEADER, NODE02}
    _, lines = run(fake, join_doc(), tmp_path)
    assert level in {line["level"] for line in lines}
