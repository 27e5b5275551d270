"""The remote CLI: `plasmaboot node ...`, `watch` and `cluster verify` run as real processes
with `--server https://...` and a token file against a real `plasmaboot serve` (its admin
listener, TLS from plasmaboot's CA), and the same commands run on the server itself
(`--state-dir`, the same store): the output, text and --json, is the same. node01's BMC
is OpenIPMI's ipmi_sim (the server drives it); node02's is manual. Refusals: a wrong
token (401), a read token asking to act (403 naming the scope), a server that does not
answer, an untrusted certificate, a token file others can read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import test_power_ipmi_sim as ipmi_sim
import yaml
from events_support import TO_ACTIVE, ServeProcess, free_port

from plasmaboot.provision import LifecycleService
from plasmaboot.store import SqliteStore

pytestmark = pytest.mark.integration

BMC_ENV = "PBP_IT_REMOTE_BMC_PW"
NOT_A_TOKEN = "not-a-token-of-this-server"


def inventory() -> dict[str, Any]:
    """Four control-plane nodes on loopback addresses (nothing serves their cluster store:
    `cluster verify` finds it unreachable at once); node01 behind ipmi_sim, node02 manual."""
    bmcs: list[dict[str, Any] | None] = [
        {"address": "127.0.0.1", "driver": "ipmi", "port": ipmi_sim.SIM_PORT,
         "username": ipmi_sim.USER, "password_env": BMC_ENV},
        {"address": "rack 2, U7", "driver": "manual"}, None, None,
    ]  # fmt: skip
    nodes = []
    for i, bmc in enumerate(bmcs, start=1):
        node = {"hostname": f"node0{i}", "macs": [f"52:54:00:00:05:0{i}"], "profile": "control",
                "provisioning_ip": f"127.0.0.{20 + i}", "bootstrap": i <= 3}  # fmt: skip
        if bmc is not None:
            node["bmc"] = bmc
        nodes.append(node)
    return {
        "cluster": {"name": "remote", "domain": "remote.internal"},
        "networks": [{"name": "provisioning", "vlan": 100, "subnet": "127.0.0.0/24"}],
        "server": {"provisioning_ip": "127.0.0.2"},
        "profiles": {"control": {"role": "control-plane", "services": ["chainfire"],
                                 "image": "img"}},
        "images": {"img": {"kernel": "k", "initrd": "i"}},
        "nodes": nodes,
    }  # fmt: skip


@dataclass
class Site:
    """The server, and a workstation: its own home (no state directory, no default token
    or CA) with a private token file for each scope."""

    server: ServeProcess
    config: Path
    state: Path
    home: Path

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith("PLASMABOOT_")}
        environ = {**keep, "HOME": str(self.home), "COLUMNS": "200",
                   BMC_ENV: ipmi_sim.PASSWORD, **(env or {})}  # fmt: skip
        return subprocess.run([sys.executable, "-m", "plasmaboot", *args], capture_output=True,
                              text=True, timeout=120, env=environ)  # fmt: skip

    def token_file(self, scope: str) -> Path:
        return self.home / f"{scope}.token"

    def remote(self, *args: str, scope: str = "write") -> subprocess.CompletedProcess[str]:
        return self.run(*args, "--server", self.server.base, "--ca", str(self.server.ca),
                        "--token-file", str(self.token_file(scope)),
                        "--state-dir", str(self.home / "no-state"))  # fmt: skip

    def local(self, *args: str, config: bool = False) -> subprocess.CompletedProcess[str]:
        return self.run(*args, "--state-dir", str(self.state),
                        *(["-c", str(self.config)] if config else []))  # fmt: skip

    def state_of(self, hostname: str) -> str:
        shown = self.local("node", "show", hostname, "--json")
        return str(json.loads(shown.stdout)["state"])

    def make_tokens(self) -> None:
        """A private token file of each scope, made on the server."""
        for scope in ("read", "write"):
            made = self.local("admin", "token", "create", "--name", f"laptop-{scope}",
                              "--scope", scope)  # fmt: skip
            assert made.returncode == 0, made.stderr
            self.token_file(scope).write_text(made.stdout)
            self.token_file(scope).chmod(0o600)


@pytest.fixture(scope="module")
def site(
    ipmi_machine: ipmi_sim.Machine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("remote")
    config, state, home = tmp / "cluster.yaml", tmp / "state", tmp / "home"
    config.write_text(yaml.safe_dump(inventory()))
    state.mkdir()
    home.mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv(BMC_ENV, ipmi_sim.PASSWORD)  # the server drives the BMC
        server = ServeProcess.start(state, config=config)
    site = Site(server, config, state, home)
    try:
        site.make_tokens()
        yield site
    finally:
        server.stop()


def said(stderr: str) -> str:
    """stderr without log records (JSON lines when it is not a terminal): where the server
    runs a step, its records go to the server's log."""
    return "".join(line for line in stderr.splitlines(keepends=True)
                   if not line.startswith('{"timestamp"'))  # fmt: skip


def same(remote: subprocess.CompletedProcess[str], local: subprocess.CompletedProcess[str]) -> str:
    """Both ran and said the same; what they said."""
    assert (remote.returncode, remote.stdout, said(remote.stderr)) == (
        local.returncode, local.stdout, said(local.stderr),
    ), f"remote: {remote.stdout}{remote.stderr}\nlocal: {local.stdout}{local.stderr}"  # fmt: skip
    assert "Traceback" not in remote.stderr
    return remote.stdout


def test_reads_print_the_same_through_the_server(site: Site) -> None:
    listed = same(site.remote("node", "list", "--json"), site.local("node", "list", "--json"))
    assert [n["hostname"] for n in json.loads(listed)] == ["node01", "node02", "node03", "node04"]
    table = same(site.remote("node", "list"), site.local("node", "list"))
    assert "node04" in table and "127.0.0.24" in table
    for args in (("node", "show", "node01"), ("node", "show", "node01", "--json"),
                 ("node", "events", "node01", "--json", "--limit", "2"),
                 ("node", "events", "node01")):  # fmt: skip
        assert "enrolled" in same(site.remote(*args, scope="read"), site.local(*args))
    missing = same(site.remote("node", "show", "node09"), site.local("node", "show", "node09"))
    assert missing == ""


def test_power_status_reads_the_bmc_through_the_server(site: Site) -> None:
    args = ("node", "power", "status", "node01", "node02")
    text = same(site.remote(*args, scope="read"), site.local(*args, config=True))
    assert "node01: " in text and "[ipmi 127.0.0.1:17123]" in text
    assert "node02: unknown (manual BMC: plasmaboot cannot read it" in text

    def results(run: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
        assert run.returncode == 0, run.stderr
        return [{k: v for k, v in r.items() if k != "duration_s"} for r in json.loads(run.stdout)]

    remote = results(site.remote(*args, "--json", scope="read"))
    assert remote == results(site.local(*args, "--json", config=True))
    assert [(r["node"], r["ok"], r["driver"]) for r in remote] == [
        ("node01", True, "ipmi"), ("node02", True, "manual"),
    ]  # fmt: skip


def test_provision_drives_the_bmc_from_the_server(
    site: Site, ipmi_machine: ipmi_sim.Machine
) -> None:
    ipmi_machine.forget_calls()
    args = ("node", "provision", "node01", "--watch", "0")
    remote = site.remote(*args)
    assert remote.returncode == 0, remote.stderr
    assert remote.stdout == "node01: PXE boot once (uefi), power cycled\n"
    sets = [c for c in ipmi_machine.calls() if c.startswith("set")]
    assert sets == ["set boot pxe", "set power 1"] and ipmi_machine.read("power") == "1"
    same(remote, site.local(*args, config=True))
    events = json.loads(site.local("node", "events", "node01", "--json").stdout)
    requested = [e for e in events if e["event"] == "provision-requested"]
    assert [e["actor"] for e in requested] == ["operator", "operator"]
    assert requested[0]["detail"] == {"power": "cycle", "boot": "pxe", "firmware": "uefi"}


def test_drain_and_activate_say_the_same_through_the_server(site: Site) -> None:
    store = SqliteStore.in_dir(site.state)  # the machine's reports, as the agent makes them
    lifecycle = LifecycleService(store)
    for event in TO_ACTIVE:
        lifecycle.fire("node03", event, "test")
    store.close()
    drained = site.remote("node", "drain", "node03")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout.startswith("node03: drain\nnode03: drained\nnode03: no server.drain")
    assert site.state_of("node03") == "maintenance"
    activated = site.remote("node", "activate", "node03")
    assert (activated.returncode, activated.stdout) == (0, "node03: activate\n")
    assert site.state_of("node03") == "active"
    same(drained, site.local("node", "drain", "node03", config=True))
    same(activated, site.local("node", "activate", "node03", config=True))

    refused = same(site.remote("node", "activate", "node04"),
                   site.local("node", "activate", "node04", config=True))  # fmt: skip
    assert refused == ""
    stderr = site.remote("node", "activate", "node04").stderr
    assert "refused: node node04 is enrolled: event 'activate' is not allowed" in stderr

    watched = site.remote("watch", "node03", "--timeout", "20", scope="read")
    here = site.local("watch", "node03", "--timeout", "20")
    assert watched.returncode == here.returncode == 0, watched.stderr
    assert watched.stdout.splitlines()[-1] == here.stdout.splitlines()[-1]
    assert watched.stdout.splitlines()[-1] == "all 1 watched nodes are active"


def test_cluster_verify_through_the_server(site: Site) -> None:
    text = site.remote("cluster", "verify", scope="read")
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert "problem: chainfire:" in text.stdout and "127.0.0.21:2379" in text.stdout
    assert "plasmaboot-operator.crt: expires" in " ".join(text.stdout.split())
    payload = json.loads(site.remote("cluster", "verify", "--json", scope="read").stdout)
    assert [(r["service"], r["ok"], r["members"]) for r in payload] == [("chainfire", False, [])]
    assert {Path(c["path"]).name for c in payload[0]["certs"]} == {
        "plasmaboot-operator.crt", "ca.crt",
    }  # fmt: skip
    local_only = site.run("cluster", "backup", "-c", "x.json", "--out", "b", "--server",
                          site.server.base)  # fmt: skip
    assert local_only.returncode == 2 and "runs only here" in local_only.stderr


def test_refusals_are_one_clear_line(site: Site) -> None:
    wrong = site.token_file("wrong")
    wrong.write_text(NOT_A_TOKEN)
    wrong.chmod(0o600)
    denied = site.remote("node", "list", scope="wrong")
    assert denied.returncode == 1 and "Traceback" not in denied.stderr
    assert "refused the admin token (HTTP 401: unknown or revoked admin token)" in denied.stderr
    assert NOT_A_TOKEN not in denied.stderr + denied.stdout

    before = site.state_of("node03")
    acting = site.remote("node", "drain", "node03", scope="read")
    message = " ".join(acting.stderr.split())
    assert acting.returncode == 1 and "HTTP 403" in message
    assert "'laptop-read' has scope read; this needs scope write" in message
    assert "plasmaboot admin token create --scope write" in message
    assert site.state_of("node03") == before, "nothing was done"

    nobody = f"https://127.0.0.1:{free_port()}"
    gone = site.run("node", "list", "--server", nobody, "--token-file",
                    str(site.token_file("read")))  # fmt: skip
    assert gone.returncode == 1 and f"cannot reach {nobody}" in " ".join(gone.stderr.split())

    untrusted = site.run("node", "list", "--server", site.server.base, "--token-file",
                         str(site.token_file("read")), "--state-dir", str(site.home))  # fmt: skip
    assert untrusted.returncode == 1
    assert "cannot verify" in untrusted.stderr and "--ca" in untrusted.stderr
    usual = site.home / ".config" / "plasmaboot"  # the CA where a workstation keeps it
    usual.mkdir(parents=True)
    (usual / "ca.crt").write_bytes(site.server.ca.read_bytes())
    by_env = {"PLASMABOOT_ADMIN_TOKEN": site.token_file("read").read_text().strip()}
    trusted = site.run("node", "list", "--json", "--server", site.server.base,
                       "--state-dir", str(site.home), env=by_env)  # fmt: skip
    assert trusted.returncode == 0, trusted.stderr

    site.token_file("read").chmod(0o644)
    try:
        loose = site.remote("node", "list", scope="read")
    finally:
        site.token_file("read").chmod(0o600)
    assert loose.returncode == 1 and "mode 0644" in loose.stderr
    assert f"chmod 600 {site.token_file('read')}" in " ".join(loose.stderr.split())

    both = site.remote("node", "drain", "node03", "-c", str(site.config))
    assert both.returncode == 2 and "-c/--config with --server" in both.stderr
