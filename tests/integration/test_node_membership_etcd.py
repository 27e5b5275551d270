"""`node decommission` leaves the cluster store by default, against a real 3-member TLS
etcd 3.4 cluster (Debian's etcd-server) started from plasmaboot's rendered files.

The state directory is plasmaboot's own: its PKI (`<state>/pki`) signed the members'
certificates, and the command reaches etcd with the operator certificate it issues there
on first use, at the URLs the inventory gives (no cluster-config.json). A removal that
would break quorum is refused and changes nothing; `--force` goes past plasmaboot's check
and etcd's own refusal is reported as it is; a node that is not a member says so.

The scenarios build on each other and run in file order on one module-scoped cluster.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from etcd_support import Cluster, missing_peer
from test_firstboot_etcd import voting_names, wait_healthy
from typer.testing import CliRunner

from plasmaboot.cli import app
from plasmaboot.cluster.membership import OPERATOR_CERT, inventory_membership
from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.inventory import parse_inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.operations.nodes import NodeOperations, OperationFailed
from plasmaboot.store import SqliteStore

pytestmark = pytest.mark.integration

NET = "127.0.87"
MEMBERS = ("node01", "node02", "node03")
TO_ACTIVE = (Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALLED, Event.FIRST_BOOT,
             Event.JOINED)  # fmt: skip
INVENTORY: dict[str, Any] = {
    "cluster": {"name": "mbtest", "domain": "member.test", "store": "etcd"},
    "networks": [{"name": "provisioning", "vlan": 100, "subnet": f"{NET}.0/24"}],
    "server": {"provisioning_ip": f"{NET}.1"},
    "profiles": {
        "control-plane": {"role": "control-plane", "services": ["chainfire"], "image": "x"},
    },
    "images": {"x": {"kernel": "x/vmlinuz", "initrd": "x/initrd"}},
    "nodes": [
        {
            "hostname": f"node0{i}",
            "macs": [f"52:54:00:87:00:0{i}"],
            "profile": "control-plane",
            "provisioning_ip": f"{NET}.1{i}",
            "bootstrap": i <= 3,
        }
        for i in (1, 2, 3, 4)  # node04 runs the store too, but its etcd never starts
    ],
}


@dataclass
class Lab:
    cluster: Cluster
    state_dir: Path
    inventory: Path


def url(name: str) -> str:
    return f"https://{NET}.1{name[-1]}:2379"


def client(lab: Lab) -> httpx.Client:
    return http_client(lab.cluster.client_tls("node01"))


def node(lab: Lab, *args: str) -> Any:
    argv = ["node", *args, "-c", str(lab.inventory), "--state-dir", str(lab.state_dir)]
    return CliRunner().invoke(app, argv, terminal_width=200)


def state_of(lab: Lab, name: str) -> State:
    store = SqliteStore.in_dir(lab.state_dir)
    try:
        record = store.get_node(name)
        assert record is not None
        return record.state
    finally:
        store.close()


def events_of(lab: Lab, name: str) -> list[str]:
    store = SqliteStore.in_dir(lab.state_dir)
    try:
        return [e.event for e in store.events(name)]
    finally:
        store.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = missing_peer()
    if reason:
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    state_dir = tmp_path_factory.mktemp("etcd-membership")
    inv = parse_inventory(INVENTORY)
    cluster = Cluster(state_dir, inv)  # its PKI is <state>/pki: plasmaboot's own
    inventory = state_dir / "cluster.yaml"
    inventory.write_text(yaml.safe_dump(INVENTORY))
    store = SqliteStore.in_dir(state_dir)
    store.import_inventory(inv)
    for name in (*MEMBERS, "node04"):
        for event in TO_ACTIVE:
            store.transition(name, event, "test")
    store.close()
    try:
        for name in MEMBERS:
            cluster.start(name)
        with http_client(cluster.client_tls("node01")) as c:
            for name in MEMBERS:
                wait_healthy(c, url(name), timeout=60)
        yield Lab(cluster, state_dir, inventory)
    finally:
        cluster.stop()


def test_a_removal_that_breaks_quorum_is_refused_and_changes_nothing(lab: Lab) -> None:
    lab.cluster.stop("node03")
    before = events_of(lab, "node02")
    result = node(lab, "decommission", "node02")
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "refused:" in text
    assert "1 of the 2 remaining voting members would be healthy (down: node03)" in text
    assert "a quorum needs 2" in text and "--force" in text and "nothing was done" in text
    assert state_of(lab, "node02") is State.ACTIVE  # not even drained
    assert events_of(lab, "node02") == before
    with client(lab) as c:
        assert voting_names(c, url("node01")) == set(MEMBERS)
    assert (lab.state_dir / "pki" / f"{OPERATOR_CERT}.crt").exists()


def test_cluster_remove_applies_the_same_quorum_rule(lab: Lab, tmp_path: Path) -> None:
    """`cluster remove` (runbook 7.6, from a member's cluster-config.json) refuses the
    same removal with node03 still down, and with --force meets etcd's own refusal."""
    tls = lab.cluster.client_tls("node01")
    config = tmp_path / "cluster-config.json"
    config.write_text(json.dumps({
        "node_id": "node01", "node_role": "control-plane", "bootstrap": False,
        "cluster_name": "mbtest", "leader_url": url("node01"), "raft_addr": f"{NET}.11:2380",
        "flaredb_enabled": False, "cluster_backend": "etcd",
        "tls": {"enabled": True, "ca_cert_path": str(tls.ca_cert),
                "node_cert_path": str(tls.node_cert), "node_key_path": str(tls.node_key)},
    }))  # fmt: skip
    argv = ["cluster", "remove", "-c", str(config), "node02", "--wait-s", "2"]

    refused = CliRunner().invoke(app, argv, terminal_width=200)
    assert refused.exit_code == 1, refused.output
    text = " ".join(refused.output.split())
    assert "chainfire: after removing node02, 1 of the 2 remaining voting members" in text
    assert "(down: node03)" in text and "nothing was removed (--force" in text

    forced = CliRunner().invoke(app, [*argv, "--force"], terminal_width=200)
    assert forced.exit_code == 1, forced.output
    assert "unhealthy cluster" in forced.output or "not enough started" in forced.output
    with client(lab) as c:
        assert voting_names(c, url("node01")) == set(MEMBERS)


def test_force_goes_past_the_check_and_reports_etcds_own_refusal(lab: Lab) -> None:
    """etcd (strict reconfiguration check) refuses too; --force cannot make it remove a
    member it needs for quorum, and the operator is told so, not told it worked."""
    inv = parse_inventory(INVENTORY)
    store = SqliteStore.in_dir(lab.state_dir)
    lines: list[str] = []
    try:
        ops = NodeOperations(
            inv, store, membership=inventory_membership(inv, lab.state_dir / "pki", wait_s=3),
            force=True, log=lines.append,
        )  # fmt: skip
        with pytest.raises(OperationFailed, match="leaving the cluster failed") as failure:
            asyncio.run(ops.decommission("node02"))
    finally:
        store.close()
    assert "unhealthy cluster" in str(failure.value) or "not enough started" in str(failure.value)
    assert "still a member" in str(failure.value)
    assert state_of(lab, "node02") is State.MAINTENANCE  # drained, not decommissioned
    with client(lab) as c:
        assert voting_names(c, url("node01")) == set(MEMBERS)


def test_decommission_removes_the_member_through_the_inventory_urls(lab: Lab) -> None:
    lab.cluster.start("node03")
    with client(lab) as c:
        wait_healthy(c, url("node03"), timeout=60)
    result = node(lab, "decommission", "node03")
    assert result.exit_code == 0, result.output
    assert "node03: removed from chainfire (member " in result.output
    assert state_of(lab, "node03") is State.DECOMMISSIONED
    assert events_of(lab, "node03")[-4:] == ["drain", "drained", "left-cluster", "decommission"]
    with client(lab) as c:
        assert voting_names(c, url("node01")) == {"node01", "node02"}


def test_a_node_that_is_not_a_member_says_so(lab: Lab) -> None:
    result = node(lab, "decommission", "node04")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "node04: already not a member of chainfire (members: node01, node02)" in text
    assert state_of(lab, "node04") is State.DECOMMISSIONED


def test_keep_member_skips_the_membership_and_says_so(lab: Lab) -> None:
    result = node(lab, "reprovision", "node02", "--keep-member", "--watch", "0")
    # node02 has no BMC: the reprovision stops at the power step, after the membership one
    assert "node02: cluster membership skipped with --keep-member" in result.output
    with client(lab) as c:
        assert voting_names(c, url("node01")) == {"node01", "node02"}
