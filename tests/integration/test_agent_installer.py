"""The installer agent, run as the installer image runs it, against the real HTTP side of
`plasmaboot serve` (the aiohttp app, lab inventory, loopback port).

The agent runs in a subprocess of the interpreter the venv was made from, with only
`plasmaboot/__init__.py` and `plasmaboot/agent/` on its path (what the image copies into
its initrd): no third-party package can be reached. Its kernel command line is the one
the node's iPXE script gives (fetched from the server as iPXE would); its sysfs is a
directory tree laid out as the kernel lays it out, with node01's MAC on one NIC; its
procfs is this machine's real /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import plasmaboot
from plasmaboot.agent import facts
from plasmaboot.inventory import load_inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.provision import Provisioner, ProvisionerSettings
from plasmaboot.store import SqliteStore
from plasmaboot.web.app import build_app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ADMIN = "agent-test-admin"
NODE01_MAC = "52:54:00:12:34:56"
NODE02_MAC = "52:54:00:12:34:57"
UNKNOWN_MAC = "02:00:00:00:00:99"
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
AGENT_TIMEOUT_S = 60
PCI = "devices/pci0000:00"


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def device(
    sys_root: Path, klass: str, name: str, parent: str | None, attrs: dict[str, str]
) -> None:
    """class/net/NAME or block/NAME -> its directory under devices/, `device` -> parent."""
    sub = "net" if klass == "class/net" else "block"
    home = f"{parent}/{sub}/{name}" if parent else f"devices/virtual/{sub}/{name}"
    for key, value in attrs.items():
        write(sys_root / home / key, value + "\n")
    if parent:
        (sys_root / home / "device").symlink_to(os.path.relpath(sys_root / parent, sys_root / home))
    entry = sys_root / klass / name
    entry.parent.mkdir(parents=True, exist_ok=True)
    entry.symlink_to(os.path.relpath(sys_root / home, entry.parent))


def machine_sysfs(root: Path) -> Path:
    """node01's sysfs: DMI, a SATA disk, an NVMe disk, a NIC the server does not know
    (link up, so tried first), node01's NIC, and a bridge that carries node02's MAC (not
    hardware: never tried)."""
    sys_root = root / "sys"
    dmi = sys_root / "class/dmi/id"
    for key, value in {
        "sys_vendor": "Dell Inc.",
        "product_name": "PowerEdge R650",
        "product_serial": "7XK2FJ3",
        "product_uuid": "4c4c4544-0058",
    }.items():
        write(dmi / key, value + "\n")
    sata = f"{PCI}/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0"
    write(sys_root / sata / "model", "MZ7KH480HAHQ0D3\n")
    write(sys_root / sata / "wwid", "naa.5002538e00000001\n")
    device(
        sys_root,
        "block",
        "sda",
        sata,
        {"size": "937703088", "removable": "0", "queue/rotational": "0"},
    )
    nvme = f"{PCI}/0000:65:00.0/nvme/nvme0"
    write(sys_root / nvme / "model", "Dell Ent NVMe P5600 MU U.2 1.6TB\n")
    write(sys_root / nvme / "serial", "PHAB123400AB1P6AGN\n")
    device(
        sys_root,
        "block",
        "nvme0n1",
        nvme,
        {"size": "3125627568", "removable": "0", "queue/rotational": "0"},
    )
    device(sys_root, "block", "loop0", None, {"size": "0", "removable": "0"})
    device(
        sys_root,
        "class/net",
        "eth0",
        f"{PCI}/0000:31:00.0",
        {"address": UNKNOWN_MAC, "operstate": "up", "carrier": "1", "speed": "25000"},
    )
    device(
        sys_root,
        "class/net",
        "eth1",
        f"{PCI}/0000:31:00.1",
        {"address": NODE01_MAC, "operstate": "up", "carrier": "1", "speed": "10000"},
    )
    device(sys_root, "class/net", "br0", None, {"address": NODE02_MAC, "operstate": "up"})
    device(sys_root, "class/net", "lo", None, {"address": "00:00:00:00:00:00"})
    return sys_root


def image_copy(root: Path) -> Path:
    source = Path(plasmaboot.__file__).parent
    (root / "plasmaboot").mkdir(parents=True)
    shutil.copy(source / "__init__.py", root / "plasmaboot/__init__.py")
    shutil.copytree(
        source / "agent", root / "plasmaboot/agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


async def run(argv: list[str], env: dict[str, str], timeout: float = AGENT_TIMEOUT_S) -> Run:
    process = await asyncio.create_subprocess_exec(
        *argv,
        env=env,
        cwd="/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"{argv[:4]} did not finish in {timeout} s")
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


@dataclass
class AgentLab:
    provisioner: Provisioner
    base: str
    tmp: Path
    sys_root: Path
    agent_path: Path

    @property
    def store(self) -> SqliteStore:
        store = self.provisioner.store
        assert isinstance(store, SqliteStore)
        return store

    @property
    def state_dir(self) -> Path:
        return self.provisioner.settings.state_dir

    @property
    def session_file(self) -> Path:
        return self.tmp / "run/plasmaboot/session"

    def node(self, hostname: str = "node01") -> Any:
        record = self.store.get_node(hostname)
        assert record is not None
        return record

    def last_event_id(self) -> int:
        return self.store.events("node01")[-1].id

    async def post(self, path: str, token: str, body: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.base + path, json=body, headers=headers) as response,
        ):
            return response.status, await response.json()

    async def admin_get(self, path: str) -> Any:
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with (
            aiohttp.ClientSession() as http,
            http.get(self.base + path, headers=headers) as response,
        ):
            assert response.status == 200, await response.text()
            return await response.json()

    async def netboot_cmdline(self, extra: str = "") -> Path:
        """The kernel command line node01's iPXE script gives (its boot token included)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.base}/boot/ipxe/node/{NODE01_MAC}.ipxe") as response,
        ):
            assert response.status == 200
            script = await response.text()
        sets = dict(re.findall(r"^set (\S+) (.*)$", script, re.MULTILINE))
        path = self.tmp / f"cmdline-{time.monotonic_ns()}"
        path.write_text(f"initrd=initrd {sets['cmdline']} {sets['node-args']} {extra}\n")
        return path

    async def agent(self, cmdline: Path, *extra: str) -> Run:
        argv = [
            str(BASE_PYTHON),
            "-S",
            "-m",
            "plasmaboot.agent",
            "--cmdline",
            str(cmdline),
            "--sys-root",
            str(self.sys_root),
            "--proc-root",
            "/proc",
            "--session-file",
            str(self.session_file),
            *extra,
        ]
        return await run(argv, {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(self.agent_path)})


def boot_token(cmdline: Path) -> str:
    match = re.search(r"plasmaboot\.token=(\S+)", cmdline.read_text())
    assert match
    return match.group(1)


def assert_console(result: Run, *secrets: str) -> None:
    """One `plasmaboot-agent:` line per step on stdout, and no token anywhere."""
    lines = result.stdout.splitlines()
    assert lines and all(line.startswith("plasmaboot-agent: ") for line in lines), result.stdout
    for secret in secrets:
        assert secret not in result.stdout + result.stderr, "a token reached the console"
    assert "Traceback" not in result.stderr, result.stderr


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def serve(provisioner: Provisioner, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(provisioner, ADMIN, list))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    provisioner.settings.http_base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return runner


def lab_provisioner(tmp: Path) -> Provisioner:
    inventory = load_inventory(ROOT / "examples/lab/miniature.yaml")
    state_dir = tmp / "state"
    store = SqliteStore.in_dir(state_dir)
    store.import_inventory(inventory)
    assets = tmp / "assets"
    for name in ("lab/vmlinuz", "lab/initrd"):
        write(assets / name, "image\n")
    settings = ProvisionerSettings(
        state_dir=state_dir,
        assets_dir=assets,
        tftp_root=Path("/usr/lib/ipxe"),
        http_base="http://unset",
    )
    return Provisioner(inventory, store, settings)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[AgentLab]:
    provisioner = lab_provisioner(tmp_path)
    runner = await serve(provisioner, 0)
    yield AgentLab(
        provisioner,
        provisioner.settings.http_base,
        tmp_path,
        machine_sysfs(tmp_path),
        image_copy(tmp_path / "image"),
    )
    await runner.cleanup()
    provisioner.store.close()


async def test_agent_reports_installer_booted_with_the_facts(lab: AgentLab) -> None:
    cmdline = await lab.netboot_cmdline()
    assert lab.node().state is State.PXE_BOOTING
    result = await lab.agent(cmdline)
    assert result.returncode == 0, result.stdout + result.stderr
    session = lab.session_file.read_text().strip()
    assert_console(result, boot_token(cmdline), session)
    assert f"lookup of {UNKNOWN_MAC} refused: HTTP 404" in result.stdout  # eth0 first
    assert NODE02_MAC not in result.stdout, "a bridge is not a NIC to look up with"
    assert "looked up: this is node01 (MAC 52:54:00:12:34:56" in result.stdout
    assert (
        result.stdout.splitlines()[-1] == "plasmaboot-agent: reported installer-booted for node01"
    )

    expected = facts.collect(lab.sys_root, Path("/proc"))
    assert expected["system"]["serial"] == "7XK2FJ3" and len(expected["disks"]) == 2
    node = lab.node()
    assert node.state is State.INSTALLER_BOOTED
    assert node.hardware == expected and node.hardware_at is not None
    event = lab.store.events("node01")[-1]
    assert (event.event, event.actor) == ("installer-booted", "agent")
    assert event.detail == {"node": "node01", "hardware": expected}  # the history keeps them

    assert lab.session_file.stat().st_mode & 0o777 == 0o600
    status, _ = await lab.post("/api/v1/agent/report", session, {"stage": "installing"})
    assert status == 200, "the session file holds the session token"

    shown = await lab.admin_get("/api/v1/nodes/node01")
    assert shown["hardware"] == expected and shown["state"] == "installing"

    cli = [
        sys.executable,
        "-m",
        "plasmaboot",
        "node",
        "show",
        "node01",
        "--state-dir",
        str(lab.state_dir),
    ]
    env = {"PATH": os.environ["PATH"], "COLUMNS": "200"}
    as_json = await run([*cli, "--json"], env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["hardware"] == expected
    readable = await run(cli, env)
    assert readable.returncode == 0, readable.stderr
    text = readable.stdout
    assert "hardware (reported" in text
    for line in (
        "Dell Inc. PowerEdge R650, serial 7XK2FJ3, uuid 4c4c4544-0058",
        "sda  447.1 GiB  MZ7KH480HAHQ0D3  serial naa.5002538e00000001  solid state",
        "nvme0n1  1490.4 GiB  Dell Ent NVMe P5600 MU U.2 1.6TB  serial PHAB123400AB1P6AGN",
        f"eth1  {NODE01_MAC}  link up  10000 Mb/s",
        f"eth0  {UNKNOWN_MAC}  link up  25000 Mb/s",
    ):
        assert line in text, text


async def test_replayed_boot_token_is_refused_with_the_reason(lab: AgentLab) -> None:
    cmdline = await lab.netboot_cmdline()
    assert (await lab.agent(cmdline)).returncode == 0
    mark = lab.last_event_id()
    replay = await lab.agent(cmdline)
    assert replay.returncode == 1
    assert_console(replay, boot_token(cmdline))
    assert f"lookup of {NODE01_MAC} refused: HTTP 401" in replay.stdout
    assert "boot token already used (one-time)" in replay.stdout
    assert lab.store.events("node01", after=mark) == []
    assert lab.node().state is State.INSTALLER_BOOTED


async def test_a_server_that_is_down_is_retried_then_exit_1(lab: AgentLab) -> None:
    cmdline = lab.tmp / "cmdline-down"
    port = closed_port()
    cmdline.write_text(f"plasmaboot.url=http://127.0.0.1:{port} plasmaboot.token=boot-secret\n")
    started = time.monotonic()
    result = await lab.agent(cmdline, "--attempts", "3", "--retry-delay", "0.2")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert_console(result, "boot-secret")
    retries = [line for line in result.stdout.splitlines() if "retry in" in line]
    assert len(retries) == 2 and "retry in 0.2 s" in retries[0] and "retry in 0.4 s" in retries[1]
    assert "did not answer after 3 attempts" in result.stdout
    assert 0.6 <= elapsed < 20
    assert not lab.session_file.exists()


async def test_a_server_that_comes_up_late_is_waited_for(tmp_path: Path) -> None:
    provisioner = lab_provisioner(tmp_path)
    port = closed_port()
    provisioner.settings.http_base = f"http://127.0.0.1:{port}"
    provisioner.fire("node01", Event.PXE_BOOT, "http")
    token = provisioner.tokens.issue_boot("node01")
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"plasmaboot.url={provisioner.settings.http_base} plasmaboot.token={token}")
    lab = AgentLab(
        provisioner,
        provisioner.settings.http_base,
        tmp_path,
        machine_sysfs(tmp_path),
        image_copy(tmp_path / "image"),
    )
    agent = asyncio.create_task(lab.agent(cmdline, "--attempts", "30", "--retry-delay", "0.1"))
    await asyncio.sleep(1.0)  # the agent is retrying: nothing listens yet
    runner = await serve(provisioner, port)
    try:
        result = await agent
        assert result.returncode == 0, result.stdout
        assert "no answer" in result.stdout
        assert lab.node().state is State.INSTALLER_BOOTED
    finally:
        await runner.cleanup()
        provisioner.store.close()


async def test_malformed_hardware_is_a_400_naming_the_field_and_changes_nothing(
    lab: AgentLab,
) -> None:
    token = boot_token(await lab.netboot_cmdline())
    status, answer = await lab.post("/api/v1/agent/lookup", token, {"mac": NODE01_MAC})
    assert status == 200
    session = answer["token"]
    good = facts.collect(lab.sys_root, Path("/proc"))
    mark = lab.last_event_id()
    bad_size = json.loads(json.dumps(good))
    bad_size["disks"][1]["size_bytes"] = "1.6 TB"
    too_many = dict(good, nics=good["nics"] * 40)
    for hardware, field in (
        (bad_size, "detail.hardware.disks.1.size_bytes"),
        (too_many, "detail.hardware.nics"),
        (dict(good, bios="2.1"), "detail.hardware.bios"),
        ("lots", "detail.hardware"),
    ):
        body = {"stage": "installer-booted", "detail": {"node": "node01", "hardware": hardware}}
        status, refusal = await lab.post("/api/v1/agent/report", session, body)
        assert status == 400, refusal
        assert [f["field"] for f in refusal["fields"]] == [field]
    assert lab.store.events("node01", after=mark) == []
    node = lab.node()
    assert node.state is State.PXE_BOOTING and node.hardware is None
    body = {"stage": "installer-booted", "detail": {"node": "node01", "hardware": good}}
    assert (await lab.post("/api/v1/agent/report", session, body))[0] == 200
    assert lab.node().hardware == good


async def test_a_lifecycle_refusal_is_printed_and_final(lab: AgentLab) -> None:
    cmdline = await lab.netboot_cmdline()
    lab.provisioner.fire("node01", Event.DECOMMISSION, "admin")  # while the machine boots
    mark = lab.last_event_id()
    result = await lab.agent(cmdline)
    assert result.returncode == 1
    assert_console(result, boot_token(cmdline))
    # the lookup itself is refused: a machine no longer pxe-booting gets no session
    assert f"FAILED: lookup of {NODE01_MAC} refused: HTTP 409" in result.stdout
    assert '"state": "decommissioned"' in result.stdout, "the 409 body reaches the console"
    assert lab.store.events("node01", after=mark) == []
    assert lab.node().hardware is None


async def test_a_failure_after_the_lookup_is_reported_failed(lab: AgentLab) -> None:
    cmdline = await lab.netboot_cmdline("plasmaboot.node=node02")  # the last word wins
    result = await lab.agent(cmdline)
    assert result.returncode == 1
    assert_console(result, boot_token(cmdline))
    assert "FAILED: the server says this machine is node01" in result.stdout
    assert result.stdout.splitlines()[-1] == "plasmaboot-agent: reported failed"
    event = lab.store.events("node01")[-1]
    assert event.event == "fail" and event.actor == "agent"
    assert "plasmaboot.node=node02" in event.detail["reason"]
    assert lab.node().state is State.BOOT_FAILED


async def test_a_bad_kernel_command_line_is_exit_2_and_spends_nothing(lab: AgentLab) -> None:
    cmdline = await lab.netboot_cmdline()
    without_url = lab.tmp / "cmdline-no-url"
    without_url.write_text(re.sub(r"plasmaboot\.url=\S+", "", cmdline.read_text()))
    result = await lab.agent(without_url)
    assert result.returncode == 2
    assert_console(result, boot_token(cmdline))
    assert "bad command line: no plasmaboot.url= on the kernel command line" in result.stdout
    firstboot = lab.tmp / "cmdline-firstboot"
    firstboot.write_text(cmdline.read_text().replace("stage=install", "stage=firstboot"))
    assert (await lab.agent(firstboot)).returncode == 2
    assert (await lab.agent(cmdline)).returncode == 0, "the boot token was not spent"
