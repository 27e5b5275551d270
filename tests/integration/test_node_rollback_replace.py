"""`node rollback` (runbook 9.1) and `node replace` (runbook 7.2) as an operator runs them,
against the real peers: a 3-member TLS etcd 3.4 cluster started from plasmaboot's rendered
files (etcd_support), a real sshd standing in for the nodes (every node address of this
test is a loopback address sshd listens on, so the rollback command really crosses SSH
and runs as root), and OpenIPMI's ipmi_sim as node03's BMC (the run's one sim, conftest.py).

Rollback: the inventory's command runs over SSH, its output lands in the node's events,
the health gate (health check over SSH, then `cluster verify` against etcd) decides, the
first failure stops the rest. Replace: quorum and foreign MACs are refused changing
nothing; a good replace removes the etcd member, rewrites only the MAC line of
cluster.yaml, moves the MAC in the store (history kept), reissues the certificate with
the same SANs and a new key, and PXE boots the new machine through its BMC.

The scenarios build on each other and run in file order on one module-scoped cluster.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import test_power_ipmi_sim as ipmi_sim
from etcd_support import Cluster, missing_peer
from ssh_support import SshHost, missing_sshd, running_sshd
from test_firstboot_etcd import voting_names, wait_healthy
from typer.testing import CliRunner

from plasmaboot.cli import app
from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.inventory import load_inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.pki import cert_info
from plasmaboot.store import SqliteStore

pytestmark = pytest.mark.integration


NET = "127.0.88"
SSHD_PORT = 17125
MEMBERS = ("node01", "node02", "node03")
NEW_MAC = "52:54:00:88:00:33"
BMC_ENV = "PBP_IT_REPLACE_BMC_PW"
TO_ACTIVE = (Event.PXE_BOOT, Event.INSTALLER_BOOTED, Event.INSTALLED, Event.FIRST_BOOT,
             Event.JOINED)  # fmt: skip
HEADER = "# The replace test's cluster: comments and order must survive plasmaboot's edits.\n"
INVENTORY = """\
cluster:
  name: rbtest
  domain: rollback.test
  store: etcd  # etcd stands in for Chainfire

networks:
  - name: provisioning
    vlan: 100
    subnet: {net}.0/24

server:
  provisioning_ip: {net}.1
  rollback:
    # the test's stand-in for nixos-rebuild switch --rollback, run on the node over SSH
    command: sh {marks}/rollback {{node}}

profiles:
  control-plane: {{role: control-plane, services: [chainfire], image: x}}

images:
  x: {{kernel: x/vmlinuz, initrd: x/initrd}}

nodes:
  - hostname: node01
    macs: ["52:54:00:88:00:01"]
    profile: control-plane
    provisioning_ip: {net}.11
    bootstrap: true
  - hostname: node02
    macs: ["52:54:00:88:00:02"]
    profile: control-plane
    provisioning_ip: {net}.12
    bootstrap: true
  # node03's machine is the one that fails and is replaced
  - hostname: node03
    macs: ["52:54:00:88:00:03"]
    profile: control-plane
    provisioning_ip: {net}.13
    bootstrap: true
    bmc: {{address: 127.0.0.1, port: {bmc_port}, username: {bmc_user}, password_env: {env}}}
"""


@dataclass
class Lab:
    cluster: Cluster
    ssh: SshHost
    state_dir: Path
    inventory: Path
    marks: Path


def url(name: str) -> str:
    return f"https://{NET}.1{name[-1]}:2379"


def cli(lab: Lab, *args: str) -> Any:
    argv = [*args, "-c", str(lab.inventory), "--state-dir", str(lab.state_dir)]
    return CliRunner().invoke(app, argv, terminal_width=200)


def rollback(lab: Lab, *args: str) -> Any:
    ssh = [arg for option in lab.ssh.options() for arg in ("--ssh-option", option)]
    health = shlex.join(lab.ssh.command("true"))  # the node answers over SSH
    return cli(lab, "node", "rollback", *args, *ssh, "--health", health)


def events_of(lab: Lab, name: str) -> list[Any]:
    store = SqliteStore.in_dir(lab.state_dir)
    try:
        return store.events(name)
    finally:
        store.close()


def record(lab: Lab, name: str) -> Any:
    store = SqliteStore.in_dir(lab.state_dir)
    try:
        return store.get_node(name)
    finally:
        store.close()


def members(lab: Lab) -> set[str]:
    with http_client(lab.cluster.client_tls("node01")) as c:
        return voting_names(c, url("node01"))


def text(result: Any) -> str:
    return " ".join(result.output.split())


def seed(state: Path, config: Path, marks: Path, net: str, bmc_port: int, env: str) -> Cluster:
    """Write the inventory (its rollback command leaves marks) and a store in which the
    three members are active; returns their etcd cluster, not started."""
    (marks / "rollback").write_text(
        f'echo rolling back "$1"; test ! -e {marks}/broken-"$1" && touch {marks}/rolled-"$1"\n'
    )
    config.write_text(HEADER + INVENTORY.format(
        net=net, marks=marks, bmc_port=bmc_port, bmc_user=ipmi_sim.USER, env=env,
    ))  # fmt: skip
    inv = load_inventory(config)
    cluster = Cluster(state, inv)  # its PKI is <state>/pki: plasmaboot's own
    store = SqliteStore.in_dir(state)
    store.import_inventory(inv)
    for name in MEMBERS:
        for event in TO_ACTIVE:
            store.transition(name, event, "test")
    store.close()
    return cluster


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = missing_peer() or missing_sshd()
    if reason:
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    state_dir = tmp_path_factory.mktemp("rollback-replace")
    marks = state_dir / "marks"
    marks.mkdir()
    inventory = state_dir / "cluster.yaml"
    cluster = seed(state_dir, inventory, marks, NET, ipmi_sim.SIM_PORT, BMC_ENV)
    addresses = [f"{NET}.1{i}" for i in (1, 2, 3)]
    (state_dir / "sshd").mkdir()
    try:
        for name in MEMBERS:
            cluster.start(name)
        with http_client(cluster.client_tls("node01")) as c:
            for name in MEMBERS:
                wait_healthy(c, url(name), timeout=60)
        with running_sshd(state_dir / "sshd", SSHD_PORT, addresses) as ssh:
            yield Lab(cluster, ssh, state_dir, inventory, marks)
    finally:
        cluster.stop()


def test_unknown_names_are_refused_at_once_with_the_closest_names(lab: Lab) -> None:
    before = len(events_of(lab, "node01"))
    result = rollback(lab, "nod01", "node9", "node02")
    assert result.exit_code == 1
    assert "no such node: nod01 (did you mean node01 or" in text(result)
    assert "), node9 (did you mean node03 or node02 or node01?)" in text(result)
    assert "nothing was done" in text(result)
    assert len(events_of(lab, "node01")) == before
    assert not list(lab.marks.glob("rolled-*"))


def test_rollback_runs_the_inventorys_command_over_ssh_then_passes_the_gate(lab: Lab) -> None:
    result = rollback(lab, "node01", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "ok": True, "not_started": [],
        "nodes": [{"node": "node01", "ok": True, "state": "active", "reason": ""}],
    }  # fmt: skip
    assert (lab.marks / "rolled-node01").exists()  # run by root through sshd
    events = events_of(lab, "node01")
    names = [e.event for e in events]
    assert names[-6:] == ["drain", "rollback-output", "rollback-command", "rollback-health",
                          "rollback-cluster-verified", "activate"]  # fmt: skip
    output = next(e for e in events if e.event == "rollback-output")
    assert output.detail["lines"] == ["rolling back node01"]
    command = next(e for e in events if e.event == "rollback-command")
    assert (command.detail["returncode"], command.detail["timed_out"]) == (0, False)


def test_rollback_stops_at_the_first_failure(lab: Lab) -> None:
    (lab.marks / "broken-node02").touch()
    before = len(events_of(lab, "node03"))
    result = rollback(lab, "node01", "node02", "node03")
    assert result.exit_code == 1
    out = text(result)
    assert "node01: rolled back, healthy (now active)" in out
    assert "node02: failed: the rollback command" in out and "node events node02" in out
    assert "not started: node03" in out
    assert record(lab, "node02").state is State.DRAINING  # for an operator to look at
    assert [e.detail.get("returncode") for e in events_of(lab, "node02")
            if e.event == "rollback-command"] == [1]  # fmt: skip
    assert len(events_of(lab, "node03")) == before
    assert not (lab.marks / "rolled-node03").exists()
    assert cli(lab, "node", "activate", "node02").exit_code == 0
    (lab.marks / "broken-node02").unlink()


def test_a_failing_cluster_verify_stops_the_rollback(lab: Lab) -> None:
    lab.cluster.stop("node03")
    result = rollback(lab, "node01", "node02", "--health-timeout", "3")
    assert result.exit_code == 1
    out = text(result)
    assert "node01: failed: after the rollback, cluster verify failed:" in out
    assert "node03" in out and "not started: node02" in out
    assert events_of(lab, "node01")[-1].event == "rollback-health-failed"
    assert record(lab, "node01").state is State.DRAINING
    assert cli(lab, "node", "activate", "node01").exit_code == 0


def test_replace_that_would_break_quorum_is_refused_and_changes_nothing(lab: Lab) -> None:
    """node03 is still down: removing node02 would leave 1 of 2 healthy."""
    before, events = lab.inventory.read_text(), len(events_of(lab, "node02"))
    result = cli(lab, "node", "replace", "node02", "--mac", NEW_MAC, "--no-provision")
    assert result.exit_code == 1
    assert "a quorum needs 2" in text(result) and "nothing was done" in text(result)
    assert lab.inventory.read_text() == before
    assert len(events_of(lab, "node02")) == events
    assert members(lab) == set(MEMBERS)
    lab.cluster.start("node03")
    with http_client(lab.cluster.client_tls("node01")) as c:
        wait_healthy(c, url("node03"), timeout=60)


def test_replace_refuses_a_mac_of_another_node(lab: Lab) -> None:
    before = lab.inventory.read_text()
    result = cli(lab, "node", "replace", "node03", "--mac", "52-54-00-88-00-01")
    assert result.exit_code == 1
    assert "--mac 52:54:00:88:00:01 is already node01's MAC" in text(result)
    assert lab.inventory.read_text() == before
    assert list(lab.state_dir.glob(".cluster.yaml.*")) == []  # no staged file left


def test_replace_moves_the_identity_to_the_new_machine_and_provisions_it(
    lab: Lab, ipmi_machine: ipmi_sim.Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BMC_ENV, ipmi_sim.PASSWORD)
    facts = {"system": {"vendor": "Replacement Inc."}, "disks": [], "nics": []}
    store = SqliteStore.in_dir(lab.state_dir)
    discovered = store.discover(NEW_MAC, "http", {"remote": "127.0.0.9"}).hostname
    store.set_hardware(discovered, facts)  # the new machine netbooted here while unknown
    store.close()
    history = [e.id for e in events_of(lab, "node03")]
    before = lab.inventory.read_text()
    pki = lab.state_dir / "pki"
    old_sans, old_key = cert_info(pki / "node03.crt"), (pki / "node03.key").read_bytes()
    ipmi_machine.forget_calls()

    result = cli(lab, "node", "replace", "node03", "--mac", NEW_MAC)

    assert result.exit_code == 0, result.output
    out = text(result)
    assert "node03: removed from chainfire (member " in out
    assert f"node03: MACs 52:54:00:88:00:03 -> {NEW_MAC}" in out
    assert "certificate reissued, same SANs, new key" in out
    assert "node03: PXE boot once (uefi), power cycled" in out
    assert members(lab) == {"node01", "node02"}
    # cluster.yaml: only node03's MAC line changed; comments, order and quoting kept
    after = lab.inventory.read_text()
    assert after == before.replace('"52:54:00:88:00:03"', f'"{NEW_MAC}"')
    assert after.startswith(HEADER)
    checked = CliRunner().invoke(app, ["inventory", "check", "-c", str(lab.inventory)])
    assert checked.exit_code == 0, checked.output
    # the store: the MAC moved, the history stayed, the new machine's facts came along
    node = record(lab, "node03")
    assert (node.macs, node.state, node.hardware) == ((NEW_MAC,), State.ENROLLED, facts)
    events = events_of(lab, "node03")
    assert [e.id for e in events][: len(history)] == history
    assert [e.event for e in events][len(history):] == [
        "discovered", "left-cluster", "inventory-updated", "replaced", "reprovision",
        "provision-requested",
    ]  # fmt: skip
    # the discovered record of the new machine is folded in: its events are node03's now
    assert record(lab, discovered) is None and events_of(lab, discovered) == []
    updated = next(e for e in events if e.event == "inventory-updated")
    assert updated.detail["discovered_as"] == [discovered]
    # the certificate: same SANs, new key
    new_sans = cert_info(pki / "node03.crt")
    assert (new_sans.dns_names, new_sans.ip_addresses) == (
        old_sans.dns_names, old_sans.ip_addresses,
    )  # fmt: skip
    assert (pki / "node03.key").read_bytes() != old_key
    # the new machine: one-time PXE boot, then power cycled through its BMC
    sets = [c for c in ipmi_machine.calls() if c.startswith("set")]
    assert "set boot pxe" in sets and sets.index("set boot pxe") < len(sets) - 1
    assert ipmi_machine.read("boot") == "pxe" and ipmi_machine.read("power") == "1"
