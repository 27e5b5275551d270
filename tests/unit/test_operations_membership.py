"""Leaving the cluster on decommission/reprovision: the quorum rule, refusals that change
nothing, --keep-member and --force as the CLI passes them, and the rollout's health gate
with a cluster check. The real etcd side is tests/integration/test_node_membership_etcd.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from plasmaboot.cli import app
from plasmaboot.cluster.membership import QuorumRefused, Removal, quorum_problem
from plasmaboot.firstboot.backends import Member
from plasmaboot.inventory import load_inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.operations.nodes import NodeOperations, OperationError
from plasmaboot.operations.rollout import HealthGate, Rollout
from plasmaboot.store import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "examples/lab/miniature.yaml"
TO_ACTIVE = (Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALLED, Event.FIRST_BOOT,
             Event.JOINED)  # fmt: skip


def member(name: str, healthy: bool = True, learner: bool = False) -> Member:
    return Member(name, name, (f"https://{name}:2380",), is_learner=learner, healthy=healthy)


def test_quorum_rule() -> None:
    three = [member("a"), member("b"), member("c")]
    assert quorum_problem(three, three[0], "a") is None
    one_down = [member("a"), member("b"), member("c", healthy=False)]
    problem = quorum_problem(one_down, one_down[1], "b")
    assert problem == (
        "after removing b, 1 of the 2 remaining voting members would be healthy "
        "(down: c); a quorum needs 2"
    )
    assert quorum_problem(one_down, one_down[2], "c") is None  # the down one may go
    assert "last voting member" in (quorum_problem([member("a")], member("a"), "a") or "")
    learner = member("d", healthy=False, learner=True)
    assert quorum_problem([*one_down, learner], learner, "d") is None
    five = [member(n) for n in "abc"] + [member("d", False), member("e", False)]
    assert quorum_problem(five, five[0], "a") is not None  # 2 of 4 healthy, quorum 3


@dataclass
class FakeMembership:
    refuse: str | None = None
    calls: list[tuple[str, str, bool]] = field(default_factory=list)

    def check(self, hostname: str, force: bool = False) -> Sequence[Removal]:
        self.calls.append(("check", hostname, force))
        if self.refuse and not force:
            raise QuorumRefused(self.refuse)
        return [Removal("chainfire", "removed", "1")]

    def remove(self, hostname: str, force: bool = False) -> Sequence[Removal]:
        self.calls.append(("remove", hostname, force))
        return [Removal("chainfire", "removed", "1")]


def operations(tmp_path: Path, **kwargs: object) -> NodeOperations:
    inv = load_inventory(INVENTORY)
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(inv)
    for name in ("node01", "node02", "node03"):
        for event in TO_ACTIVE:
            store.transition(name, event, "test")
    return NodeOperations(inv, store, poll_s=0.01, **kwargs)  # type: ignore[arg-type]


def state(ops: NodeOperations, name: str) -> State:
    record = ops.store.get_node(name)
    assert record is not None
    return record.state


async def test_a_quorum_refusal_comes_before_the_drain(tmp_path: Path) -> None:
    fake = FakeMembership(refuse="chainfire: would break quorum")
    ops = operations(tmp_path, membership=fake)
    before = ops.store.events("node02")
    with pytest.raises(OperationError, match=r"nothing was done.*--force.*--keep-member"):
        await ops.decommission("node02")
    assert state(ops, "node02") is State.ACTIVE
    assert ops.store.events("node02") == before
    assert fake.calls == [("check", "node02", False)]


async def test_force_is_passed_to_the_check_and_the_removal(tmp_path: Path) -> None:
    fake = FakeMembership(refuse="chainfire: would break quorum")
    lines: list[str] = []
    ops = operations(tmp_path, membership=fake, force=True, log=lines.append)
    await ops.decommission("node02")
    assert fake.calls == [("check", "node02", True), ("remove", "node02", True)]
    assert state(ops, "node02") is State.DECOMMISSIONED
    assert "node02: removed from chainfire (member 1)" in lines
    left = [e for e in ops.store.events("node02") if e.event == "left-cluster"]
    assert left and left[0].detail["forced"] is True


async def test_keep_member_skips_the_membership_and_records_it(tmp_path: Path) -> None:
    fake = FakeMembership()
    lines: list[str] = []
    ops = operations(tmp_path, membership=fake, keep_member=True, log=lines.append)
    await ops.decommission("node03")
    assert fake.calls == []
    assert "node03: cluster membership skipped with --keep-member" in lines
    assert "membership-kept" in [e.event for e in ops.store.events("node03")]


async def test_reprovision_checks_then_removes(tmp_path: Path) -> None:
    fake = FakeMembership()
    ops = operations(tmp_path, membership=fake)
    with pytest.raises(OperationError, match="no bmc"):  # the miniature has no BMCs
        await ops.reprovision("node01")
    assert fake.calls == [("check", "node01", False), ("remove", "node01", False)]


@pytest.mark.parametrize("command", ["decommission", "reprovision"])
def test_cli_options(command: str) -> None:
    result = CliRunner().invoke(app, ["node", command, "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--keep-member", "--force", "--cluster-config"):
        assert option in result.output


def test_decommission_without_plasmaboots_pki_is_refused_naming_the_ways_out(
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    argv = ["-c", str(INVENTORY), "--state-dir", str(state_dir)]
    store = SqliteStore.in_dir(state_dir)
    store.import_inventory(load_inventory(INVENTORY))
    for event in TO_ACTIVE:
        store.transition("node01", event, "test")
    store.close()
    result = CliRunner().invoke(app, ["node", "decommission", "node01", *argv])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "no cluster CA in" in text and "--cluster-config" in text
    assert "--keep-member" in text and "nothing was done" in text
    kept = CliRunner().invoke(app, ["node", "decommission", "node01", "--keep-member", *argv])
    assert kept.exit_code == 0, kept.output
    assert "cluster membership skipped with --keep-member" in kept.output


def test_rollout_is_gated_by_default_and_says_how_to_turn_it_off() -> None:
    result = CliRunner().invoke(app, ["rollout", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--no-health-gate" in text and "systemctl is-system-running" in text


async def test_the_gate_waits_for_cluster_verify_and_stops_the_rollout(tmp_path: Path) -> None:
    ops = operations(tmp_path)
    checks: list[str] = []

    def cluster(hostname: str) -> list[str]:
        checks.append(hostname)
        return [] if hostname == "node01" else ["chainfire: member node02 unhealthy"]

    gate = HealthGate(ops, "true", cluster, timeout_s=0.3, poll_s=0.05)
    result = await Rollout(ops, "true", gate).run(["node01", "node02", "node03"])
    assert result.updated == ["node01"] and result.failed == "node02"
    assert result.reason == (
        "after the update, cluster verify failed: chainfire: member node02 unhealthy"
    )
    assert result.not_started == ["node03"]
    assert checks.count("node01") == 1 and checks.count("node02") > 1  # polled
    assert "rollout-cluster-verified" in [e.event for e in ops.store.events("node01")]
    assert ops.store.events("node02")[-1].event == "rollout-health-failed"
