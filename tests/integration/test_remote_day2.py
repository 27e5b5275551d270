"""`node rollback`, `node replace` and `node adopt` from a workstation (`--server`, a token
file, plasmaboot's CA) against a real `plasmaboot serve`, and the same commands on the
server itself: the same output, text and --json. The peers are the local tests' (see
test_node_rollback_replace.py): a 3-member TLS etcd cluster from plasmaboot's rendered
files, a real sshd standing in for the nodes (the rollback command crosses SSH from the
server as root), and ipmi_sim as node03's BMC, driven by the server.

The server edits its own inventory (replace, adopt) and reloads it in-process: it boots
the adopted machine as its node with no SIGHUP. Options that would run what the caller
gives on the server (`--health`, `--command`, an ssh setting that runs a command) are
refused with the reason, by the CLI and by the server.

`rollout` through the server runs plasmaboot's default update command there.

The scenarios build on each other and run in file order on one module-scoped lab; its
addresses (127.0.86.0/24) and ports are this file's own.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_power_ipmi_sim as ipmi_sim
from etcd_support import Cluster, missing_peer
from events_support import ServeProcess
from ssh_support import SshHost, missing_sshd, running_sshd
from test_firstboot_etcd import voting_names, wait_healthy
from test_node_rollback_replace import MEMBERS, NEW_MAC, seed
from test_remote_cli import BMC_ENV, Site, same

from plasmaboot.boot.paths import node_script_path
from plasmaboot.firstboot.backends.base import http_client
from plasmaboot.inventory import load_inventory
from plasmaboot.store import SqliteStore

pytestmark = pytest.mark.integration

NET = "127.0.86"
SSHD_PORT = 17126
SIM_PORT = 17127
ADOPTED_MAC = "52:54:00:86:00:04"


@dataclass
class Lab:
    site: Site
    cluster: Cluster
    ssh: SshHost
    marks: Path
    bmc: ipmi_sim.Machine

    def ssh_options(self) -> list[str]:
        return [arg for option in self.ssh.options() for arg in ("--ssh-option", option)]

    def rollback(self, *args: str, remote: bool) -> subprocess.CompletedProcess[str]:
        argv = ("node", "rollback", *args, *self.ssh_options())
        return self.site.remote(*argv) if remote else self.site.local(*argv, config=True)

    def events(self, name: str) -> list[str]:
        store = SqliteStore.in_dir(self.site.state)
        try:
            return [e.event for e in store.events(name)]
        finally:
            store.close()

    def members(self) -> set[str]:
        with http_client(self.cluster.client_tls("node01")) as c:
            return voting_names(c, url("node01"))

    def wait_healthy(self, name: str) -> None:
        with http_client(self.cluster.client_tls("node01")) as c:
            wait_healthy(c, url(name), timeout=60)


def url(name: str) -> str:
    return f"https://{NET}.1{name[-1]}:2379"


def reloads(lab: Lab) -> list[dict[str, Any]]:
    """The server's "inventory reloaded" log records."""
    records = [json.loads(line) for line in lab.site.server.log.read_text().splitlines()
               if line.startswith("{")]  # fmt: skip
    return [r for r in records if r["event"] == "inventory reloaded"]


def text(run: subprocess.CompletedProcess[str]) -> str:
    return " ".join((run.stdout + run.stderr).split())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = missing_peer() or missing_sshd()
    if reason:
        print(f"SKIP reason: {reason}")
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("remote-day2")
    state, home, marks = tmp / "state", tmp / "home", tmp / "marks"
    for directory in (state, home, marks, tmp / "sshd", tmp / "bmc"):
        directory.mkdir()
    config = tmp / "cluster.yaml"
    cluster = seed(state, config, marks, NET, SIM_PORT, BMC_ENV)  # its PKI: the server's too
    server = None
    try:
        for name in MEMBERS:
            cluster.start(name)
        addresses = [f"{NET}.1{i}" for i in (1, 2, 3)]
        with (
            ipmi_sim.running_sim(tmp / "bmc", SIM_PORT) as bmc,
            running_sshd(tmp / "sshd", SSHD_PORT, addresses) as ssh,
            pytest.MonkeyPatch.context() as env,
        ):
            env.setenv(BMC_ENV, ipmi_sim.PASSWORD)  # the server drives node03's BMC
            server = ServeProcess.start(state, config=config)
            site = Site(server, config, state, home)
            site.make_tokens()
            lab = Lab(site, cluster, ssh, marks, bmc)
            for name in MEMBERS:
                lab.wait_healthy(name)
            yield lab
    finally:
        if server is not None:
            server.stop()
        cluster.stop()


def test_what_would_run_the_callers_command_on_the_server_is_refused(lab: Lab) -> None:
    before = lab.events("node01")
    health = lab.site.remote("node", "rollback", "node01", "--health", "true")
    assert health.returncode == 2 and "Traceback" not in health.stderr
    assert "--health with --server: the server would run a command given over the network" in (
        text(health)
    )
    proxy = lab.site.remote("node", "rollback", "node01", "--ssh-option", "ProxyCommand=sh -c x")
    assert proxy.returncode == 2
    assert "--ssh-option 'ProxyCommand=sh -c x' with --server: a server takes only" in text(proxy)
    rollout = lab.site.remote("rollout", "node01", "--command", "touch {node}")
    assert rollout.returncode == 2 and "--command with --server" in text(rollout)
    # the server refuses them too, whoever asks
    token = lab.site.token_file("write").read_text().strip()
    answer = httpx.post(
        f"{lab.site.server.base}/api/v1/procedures/rollback",
        json={"nodes": ["node01"], "ssh_options": ["LocalCommand=touch /tmp/x"]},
        headers={"Authorization": f"Bearer {token}"}, verify=lab.site.server.tls,
    )  # fmt: skip
    assert answer.status_code == 400 and "LocalCommand" in answer.json()["error"]
    assert lab.events("node01") == before, "nothing was done"
    assert not list(lab.marks.glob("rolled-*"))


def test_rollback_runs_over_ssh_from_the_server_and_says_the_same(lab: Lab) -> None:
    args = ("node01", "--no-health-gate", "--json")
    remote = lab.rollback(*args, remote=True)
    assert remote.returncode == 0, remote.stderr
    assert json.loads(remote.stdout) == {
        "ok": True, "not_started": [],
        "nodes": [{"node": "node01", "ok": True, "state": "active", "reason": ""}],
    }  # fmt: skip
    assert remote.stderr == "node01: drain\nnode01: activate\n"  # the steps, off stdout
    assert (lab.marks / "rolled-node01").exists()  # run as root through sshd, by the server
    assert lab.events("node01")[-4:] == ["drain", "rollback-output", "rollback-command",
                                         "activate"]  # fmt: skip
    same(remote, lab.rollback(*args, remote=False))


def test_a_failing_rollback_stops_the_same_way_through_the_server(lab: Lab) -> None:
    (lab.marks / "broken-node02").touch()
    untouched = lab.events("node01")
    runs = []
    try:
        for remote in (True, False):
            failed = lab.rollback("node02", "node01", remote=remote)
            assert failed.returncode == 1
            assert "node02: failed: the rollback command (sh " in text(failed)
            assert "not started: node01" in text(failed)
            assert lab.site.state_of("node02") == "draining"  # for an operator to look at
            activated = lab.site.remote("node", "activate", "node02")
            assert activated.returncode == 0, activated.stderr
            runs.append(failed)
    finally:
        (lab.marks / "broken-node02").unlink()
    same(*runs)
    assert lab.events("node01") == untouched


def test_the_health_gate_runs_on_the_server_as_here(lab: Lab) -> None:
    """The default health check (systemctl is-system-running over the same SSH) and
    `cluster verify` through the server's operator certificate: whatever this host's
    systemd says, both ways say it alike, and the gate was run."""
    args = ("node01", "--health-timeout", "2")
    remote = lab.rollback(*args, remote=True)
    assert "rollback-health" in lab.events("node01")[-4:]
    if lab.site.state_of("node01") != "active":
        assert lab.site.remote("node", "activate", "node01").returncode == 0
    here = lab.rollback(*args, remote=False)
    same(remote, here)
    assert remote.stdout.startswith("node01: ")
    if lab.site.state_of("node01") != "active":
        assert lab.site.remote("node", "activate", "node01").returncode == 0


def test_rollout_through_the_server_runs_the_default_update_there(lab: Lab) -> None:
    """The server runs plasmaboot's update command (nixos-rebuild, not on this host: the
    update fails), stops there and leaves the node draining, as here."""
    runs = []
    for remote in (True, False):
        args = ("rollout", "node01", "node02", "--no-health-gate")
        run = lab.site.remote(*args) if remote else lab.site.local(*args, config=True)
        assert run.returncode == 1 and run.stdout == "node01: drain\nupdated: none\n"
        assert "stopped at node01: the update command failed; it is left draining. Not " in (
            text(run)
        )
        assert lab.site.state_of("node01") == "draining"
        store = SqliteStore.in_dir(lab.site.state)
        update = [e for e in store.events("node01") if e.event == "rollout-update"][-1]
        store.close()
        assert "cannot start 'nixos-rebuild'" in update.detail["tail"][0]
        assert lab.site.remote("node", "activate", "node01").returncode == 0
        runs.append(run)
    same(*runs)
    unknown = lab.site.remote("rollout", "node1")
    assert unknown.returncode == 1 and "no such node: node1 (did you mean node01" in text(unknown)


def test_replace_through_the_server_refuses_what_the_local_one_refuses(lab: Lab) -> None:
    before = lab.site.config.read_text()
    lab.cluster.stop("node03")  # removing node02 now would leave 1 of 2 healthy
    try:
        quorum = lab.site.remote("node", "replace", "node02", "--mac", NEW_MAC, "--no-provision")
        assert quorum.returncode == 1
        assert "a quorum needs 2" in text(quorum) and "nothing was done" in text(quorum)
    finally:
        lab.cluster.start("node03")
        lab.wait_healthy("node03")
    foreign = ("node", "replace", "node03", "--mac", "52-54-00-88-00-01")
    refused = lab.site.remote(*foreign)
    assert same(refused, lab.site.local(*foreign, config=True)) == ""
    assert "--mac 52:54:00:88:00:01 is already node01's MAC" in text(refused)
    assert lab.site.config.read_text() == before
    assert lab.members() == set(MEMBERS)


def test_replace_through_the_server_moves_the_identity_and_reloads_it(lab: Lab) -> None:
    before = lab.site.config.read_text()
    lab.bmc.forget_calls()

    result = lab.site.remote("node", "replace", "node03", "--mac", NEW_MAC)

    assert result.returncode == 0, result.stderr
    out = " ".join(result.stdout.split())
    assert "node03: removed from chainfire (member " in out
    assert f"node03: MACs 52:54:00:88:00:03 -> {NEW_MAC} ({lab.site.config} and the store)" in out
    assert f"this server reloaded {lab.site.config}" in out
    assert "certificate reissued, same SANs, new key" in out
    assert "node03: PXE boot once (uefi), power cycled" in out
    assert out.endswith("next: follow the install with `plasmaboot watch node03`")
    assert lab.members() == {"node01", "node02"}
    assert lab.site.config.read_text() == before.replace('"52:54:00:88:00:03"', f'"{NEW_MAC}"')
    shown = json.loads(lab.site.remote("node", "show", "node03", "--json", scope="read").stdout)
    assert (shown["macs"], shown["state"]) == ([NEW_MAC], "enrolled")
    sets = [c for c in lab.bmc.calls() if c.startswith("set")]  # by the server
    assert "set boot pxe" in sets and sets.index("set boot pxe") < len(sets) - 1, sets
    assert lab.bmc.read("boot") == "pxe" and lab.bmc.read("power") == "1"
    assert [r["updated"] for r in reloads(lab)] == [[]]  # in-process; the store had it


def test_adopt_through_the_server_and_it_boots_the_node_at_once(lab: Lab) -> None:
    boot = f"{lab.site.server.boot}{node_script_path(ADOPTED_MAC)}"
    unknown = httpx.get(boot)  # the machine netboots here unknown: discovered
    assert unknown.status_code == 200 and "menu PlasmaCloud netboot" in unknown.text
    before = lab.site.config.read_text()
    bad = ("node", "adopt", ADOPTED_MAC, "--name", "node04", "--profile", "storage")
    refused = lab.site.remote(*bad)
    same(refused, lab.site.local(*bad, config=True))
    assert refused.returncode == 1
    assert f"refused, {lab.site.config} unchanged:" in refused.stderr
    assert f"{lab.site.config}: nodes[3].profile = 'storage'" in text(refused)
    assert lab.site.config.read_text() == before

    adopt = ("node", "adopt", ADOPTED_MAC, "--name", "node04", "--profile", "control-plane",
             "--ip", f"{NET}.14", "--json")  # fmt: skip
    adopted = lab.site.remote(*adopt)

    assert adopted.returncode == 0, adopted.stderr
    assert adopted.stderr == f"this server reloaded {lab.site.config}\n"
    found = json.loads(adopted.stdout)
    assert found == {
        "hostname": "node04", "discovered_as": "discovered-525400860004", "state": "enrolled",
        "inventory": str(lab.site.config),
        "entry": {"hostname": "node04", "macs": [ADOPTED_MAC], "profile": "control-plane",
                  "provisioning_ip": f"{NET}.14"},
    }  # fmt: skip
    assert lab.site.config.read_text().startswith(before)
    assert load_inventory(lab.site.config).node("node04") is not None
    # No SIGHUP, no reload call: the server's inventory has node04, so it installs it
    # (with its old inventory it would answer the menu, where node04 is not).
    script = httpx.get(boot)
    assert script.status_code == 200, script.text
    assert "menu" not in script.text and "set node-args plasmaboot.node=node04 " in script.text
    assert lab.site.state_of("node04") == "pxe-booting"
    assert [r["added"] for r in reloads(lab)][-1] == []  # adopt had imported it
