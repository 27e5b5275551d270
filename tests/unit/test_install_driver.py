"""The installer driver with real subprocesses: success, failure with the output's tail,
timeout; output lands in the node's events; no command configured -> nothing runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from plasmaboot.install.driver import InstallDriver
from plasmaboot.inventory import InventoryError, parse_inventory
from plasmaboot.lifecycle import Event, State
from plasmaboot.provision import Provisioner, ProvisionerSettings
from plasmaboot.store import SqliteStore

ROOT = Path(__file__).resolve().parents[2]


def provisioner(tmp_path: Path, installer: dict[str, Any] | None) -> Provisioner:
    doc = yaml.safe_load((ROOT / "examples/lab/miniature.yaml").read_text())
    if installer is not None:
        doc["server"]["installer"] = installer
    inv = parse_inventory(doc)
    store = SqliteStore(tmp_path / "db")
    store.import_inventory(inv)
    settings = ProvisionerSettings(tmp_path, tmp_path, tmp_path, "http://10.77.0.1:8080")
    p = Provisioner(inv, store, settings)
    p.listeners.append(InstallDriver(p))
    return p


async def installer_booted(p: Provisioner) -> InstallDriver:
    p.fire("node01", Event.PXE_BOOT, "test")
    p.fire("node01", Event.INSTALLER_BOOTED, "agent")
    driver = p.listeners[0]
    assert isinstance(driver, InstallDriver)
    await asyncio.wait_for(asyncio.gather(*driver.tasks), 30)
    return driver


def state(p: Provisioner) -> State:
    node = p.store.get_node("node01")
    assert node is not None
    return node.state


async def test_successful_install_moves_node_to_installed(tmp_path: Path) -> None:
    script = "sh -c 'for i in 1 2 3; do echo installing {node} at {ip} step $i; done'"
    p = provisioner(tmp_path, {"command": script})
    await installer_booted(p)
    assert state(p) is State.INSTALLED
    events = p.store.events("node01")
    assert [e.event for e in events][-3:] == ["install-started", "install-output", "installed"]
    assert events[-2].detail["lines"] == [
        f"installing node01 at 10.77.0.50 step {i}" for i in (1, 2, 3)
    ]
    assert events[-1].actor == "installer" and events[-1].detail["returncode"] == 0


async def test_failed_install_keeps_the_tail(tmp_path: Path) -> None:
    p = provisioner(tmp_path, {"command": "sh -c 'echo disk /dev/vda not found >&2; exit 3'"})
    await installer_booted(p)
    assert state(p) is State.INSTALL_FAILED
    last = p.store.events("node01")[-1]
    assert last.detail["returncode"] == 3
    assert last.detail["tail"] == ["disk /dev/vda not found"]


async def test_install_timeout_fails_the_node(tmp_path: Path) -> None:
    p = provisioner(tmp_path, {"command": "sleep 60", "timeout_s": 10})
    driver = p.listeners[0]
    assert isinstance(driver, InstallDriver)
    driver.runner.timeout_s = 0.5
    await installer_booted(p)
    assert state(p) is State.INSTALL_FAILED
    assert p.store.events("node01")[-1].detail["timed_out"] is True


async def test_without_a_command_the_image_installs_itself(tmp_path: Path) -> None:
    p = provisioner(tmp_path, None)
    driver = await installer_booted(p)
    assert not driver.tasks and state(p) is State.INSTALLER_BOOTED


def test_unknown_placeholder_is_refused() -> None:
    doc = yaml.safe_load((ROOT / "examples/lab/miniature.yaml").read_text())
    doc["server"]["installer"] = {"command": "nixos-anywhere --flake {flake}#{host} root@{ip}"}
    with pytest.raises(InventoryError) as info:
        parse_inventory(doc)
    text = str(info.value)
    assert "server.installer.command" in text and "host" in text
    assert "server.installer.flake" in text


async def test_install_gets_the_node_files_and_they_are_removed_after(tmp_path: Path) -> None:
    script = (
        "sh -c 'cd {extra_files} && find . -type f | sort && "
        "stat -c %a etc/nixos/secrets/cluster-config.json etc/nixos/secrets/node01.key'"
    )
    p = provisioner(tmp_path, {"command": script})
    await installer_booted(p)
    assert state(p) is State.INSTALLED
    lines = [line for e in p.store.events("node01") if e.event == "install-output"
             for line in e.detail["lines"]]  # fmt: skip
    assert lines == [
        "./etc/nixos/secrets/ca.crt",
        "./etc/nixos/secrets/cluster-config.json",
        "./etc/nixos/secrets/node01.crt",
        "./etc/nixos/secrets/node01.key",
        "600",
        "600",
    ]
    assert list((tmp_path / "install").iterdir()) == []  # no secret left on the server
    assert "agent_token" not in str(p.store.events("node01"))  # nor in the history


async def test_failed_install_removes_the_node_files_too(tmp_path: Path) -> None:
    p = provisioner(tmp_path, {"command": "sh -c 'test -d {extra_files} && exit 4'"})
    await installer_booted(p)
    assert state(p) is State.INSTALL_FAILED
    assert p.store.events("node01")[-1].detail["returncode"] == 4
    assert list((tmp_path / "install").iterdir()) == []
