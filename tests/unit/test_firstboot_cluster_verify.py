"""``cluster verify`` decisions: one leader, all healthy, no learners, count, cert expiry.

The member lists come from a fake chainfire admin API (no chainfire server is installable);
against real etcd the same checks run in tests/integration/test_firstboot_etcd.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from plasmaboot.cluster import verify_cluster
from plasmaboot.cluster.cli import app
from plasmaboot.firstboot.backends.base import JoinPolicy, Member, peer_matches
from plasmaboot.firstboot.backends.chainfire import ChainfireBackend
from plasmaboot.pki import init_ca, issue_node_cert

URL = "https://node01.example.com:2379"


def fake_chainfire(members: list[dict[str, Any]]) -> ChainfireBackend:
    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/admin/cluster/members"
        return httpx.Response(200, json={"members": members})

    client = httpx.Client(transport=httpx.MockTransport(handle))
    return ChainfireBackend(client, JoinPolicy())


def member(name: str, role: str = "follower", status: str = "healthy") -> dict[str, Any]:
    return {"id": name, "raft_addr": "10.0.200.10:2380", "role": role, "status": status}


HEALTHY = [member("node01", "leader"), member("node02"), member("node03")]


def test_healthy_three_node_cluster_passes() -> None:
    report = verify_cluster("chainfire", fake_chainfire(HEALTHY), [URL], expect_members=3)
    assert report.ok, report.problems
    assert [m.name for m in report.leaders] == ["node01"]


@pytest.mark.parametrize(
    ("members", "expect", "problem"),
    [
        ([member("node01"), member("node02")], None, "0 leaders, expected 1"),
        ([member("node01", "leader"), member("node02", "leader")], None, "2 leaders"),
        ([*HEALTHY[:2], member("node03", status="unreachable")], None, "node03 unhealthy"),
        ([*HEALTHY, member("node04", "learner")], None, "node04 is a learner"),
        (HEALTHY, 4, "3 members, expected 4"),
    ],
)
def test_each_failed_check_is_named(
    members: list[dict[str, Any]], expect: int | None, problem: str
) -> None:
    report = verify_cluster("chainfire", fake_chainfire(members), [URL], expect_members=expect)
    assert not report.ok
    assert any(problem in p for p in report.problems), report.problems


def test_unreachable_cluster_is_a_problem_not_a_crash() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    backend = ChainfireBackend(httpx.Client(transport=httpx.MockTransport(refuse)), JoinPolicy())
    report = verify_cluster("chainfire", backend, [URL])
    assert report.problems == [
        f"chainfire: cannot list members; tried: {URL}: ConnectError: refused"
    ]


def test_certificate_close_to_expiry_is_a_problem(tmp_path: Path) -> None:
    init_ca(tmp_path, "c")
    paths = issue_node_cert(tmp_path, "node01", None, [], days=60)
    backend = fake_chainfire(HEALTHY)
    assert verify_cluster("chainfire", backend, [URL], cert_paths=[paths.cert]).ok
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=35)
    report = verify_cluster("chainfire", backend, [URL], cert_paths=[paths.cert], now=later)
    assert report.problems == [f"certificate {paths.cert} expires in 25 days; renew it"]


def test_cli_names_config_and_tls_problems_with_exit_3(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"node_id": "node01"}')
    result = CliRunner().invoke(app, ["verify", "-c", str(bad)])
    assert result.exit_code == 3
    assert "$.raft_addr: required property is missing" in result.output
    doc = {
        "node_id": "node01", "node_role": "worker", "bootstrap": False,
        "cluster_name": "c", "leader_url": URL, "raft_addr": "10.0.200.10:2380",
        "tls": {
            "enabled": True, "ca_cert_path": str(tmp_path / "none.crt"),
            "node_cert_path": str(tmp_path / "n.crt"), "node_key_path": str(tmp_path / "n.key"),
        },
    }  # fmt: skip
    config = tmp_path / "cluster-config.json"
    config.write_text(json.dumps(doc))
    result = CliRunner().invoke(app, ["remove", "-c", str(config), "node02"])
    assert result.exit_code == 3
    assert "cannot load the tls files" in result.output


@pytest.mark.parametrize(
    ("peer", "matches"),
    [
        ("10.0.200.10:2380", True),  # by address
        ("node01:2380", True),  # by node name
        ("node01.example.com:2380", True),  # by FQDN whose first label is the name
        ("node01.example.com:2480", False),  # FlareDB port is another cluster
        ("10.0.200.11:2380", False),
        ("node011:2380", False),
    ],
)
def test_initial_peers_match_members_by_address_name_or_fqdn(peer: str, matches: bool) -> None:
    node01 = Member(id="1", name="node01", peer_urls=("https://10.0.200.10:2380",))
    assert peer_matches(peer, node01) is matches
