"""An install that fails, then the fix, on one QEMU VM (TCG) in a namespace of its own.

The inventory names a disk the machine does not have: the VM PXE-boots the installer image
(Debian initramfs), serve runs `plasmaboot lab install` over SSH, it fails at step `wipe`
and the node is `install-failed` with the command's tail in its events. The operator fixes
the inventory, serve reloads it (SIGHUP), the VM is power-cycled, and the next attempt
installs Debian (standing in for NixOS) onto its disk: the failed attempt changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from plasmaboot.lab.installer_image import build_installer_image, lab_ssh_key
from plasmaboot.lab.os_image import build_os_image
from plasmaboot.lab.runner import Lab
from plasmaboot.lifecycle import State
from plasmaboot.store import EventRecord

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ROOT / "examples/lab/cluster.yaml"
IMAGE_CACHE = Path.home() / ".cache" / "plasmaboot" / "lab-image"
NODE = "node01"
FAIL_TIMEOUT_S = 600
INSTALL_TIMEOUT_S = 900
SSH_TIMEOUT_S = 300
GOOD_COMMAND = "plasmaboot lab install --node {node} --ip {ip} --extra-files {extra_files}"
BAD_COMMAND = GOOD_COMMAND + " --disk /dev/vdz"  # an inventory mistake: no such disk
FAILED = {State.BOOT_FAILED, State.INSTALL_FAILED, State.JOIN_FAILED}
INSTALLED_OR_LATER = {State.INSTALLED, State.FIRST_BOOT, State.JOINING, State.ACTIVE}
BOOTED = INSTALLED_OR_LATER - {State.INSTALLED}  # the installed OS has called in

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(FAIL_TIMEOUT_S + INSTALL_TIMEOUT_S + SSH_TIMEOUT_S + 600),
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root for namespaces and taps"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed"),
]


def write_inventory(path: Path, command: str) -> None:
    """The chain's inventory with `command`. Only node01 gets a VM; node02-03 stay listed
    because the inventory refuses fewer than 3 bootstrap nodes (a Raft cluster)."""
    doc = yaml.safe_load(CHAIN.read_text())
    doc["nodes"] = [n for n in doc["nodes"] if n.get("bootstrap")]
    assert [n["hostname"] for n in doc["nodes"]] == [NODE, "node02", "node03"]
    doc["server"]["installer"]["command"] = command
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def explain(lab: Lab) -> str:
    console = lab.vm_spec(NODE).console_log
    tail = console.read_text(errors="replace")[-3000:] if console.exists() else "-"
    serve = lab.server_log.read_text(errors="replace")[-4000:]
    return f"--- {NODE}: {lab.events(NODE)}\n{tail}\n--- serve log:\n{serve}"


def state(lab: Lab) -> State | None:
    return next((n.state for n in lab.nodes() if n.hostname == NODE), None)


def transitions(records: list[EventRecord]) -> list[tuple[str | None, str | None, str]]:
    # events that are no transition (install output) keep the state: from == to
    return [(e.from_state, e.to_state, e.event) for e in records if e.to_state != e.from_state]


def install_output(records: list[EventRecord]) -> list[str]:
    return [line for e in records if e.event == "install-output" for line in e.detail["lines"]]


def ssh(lab: Lab, ip: str, command: str) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-i", str(lab_ssh_key(IMAGE_CACHE)), "-F", "/dev/null",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
            "-o", "ServerAliveCountMax=3", f"root@{ip}", command]  # fmt: skip
    try:
        return subprocess.run(lab.network.exec_argv(*argv), capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    except subprocess.TimeoutExpired as hung:  # a connection the reboot cut: try again
        return subprocess.CompletedProcess(argv, 255, "", f"timed out: {hung}")


def test_a_failed_install_is_reported_and_the_fixed_command_installs(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    write_inventory(config, BAD_COMMAND)
    lab = Lab(tmp_path / "lab", config, netns="pbfail", firmware="bios")
    build_installer_image(lab.assets, cache=IMAGE_CACHE, progress=print)
    build_os_image(IMAGE_CACHE, progress=print)
    started = time.monotonic()
    try:
        lab.create_network()
        lab.start_server()
        lab.start_vm(NODE)

        # 1. The wrong disk: the command reaches the installer and fails at `wipe`.
        deadline = time.monotonic() + FAIL_TIMEOUT_S
        while state(lab) is not State.INSTALL_FAILED:
            current = state(lab)
            assert current not in INSTALLED_OR_LATER | FAILED - {State.INSTALL_FAILED}, (
                current, explain(lab))  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"{NODE} not install-failed in {FAIL_TIMEOUT_S} s:\n{explain(lab)}")
            time.sleep(2)
        failed_after = time.monotonic() - started
        records = lab.event_records(NODE)
        assert transitions(records) == [
            (None, "enrolled", "enroll"),
            ("enrolled", "pxe-booting", "pxe-boot"),
            ("pxe-booting", "installer-booted", "installer-booted"),
            ("installer-booted", "installing", "install-started"),
            ("installing", "install-failed", "fail"),
        ], explain(lab)
        fail = next(e for e in records if e.event == "fail")
        assert fail.detail["returncode"] == 1, fail.detail
        assert fail.detail["timed_out"] is False, fail.detail
        tail = fail.detail["tail"]
        last = next((line for line in tail if "FAILED at step wipe" in line), None)
        assert last is not None, tail
        assert "no disk /dev/vdz on the installer" in last, tail  # said by the installer
        output = install_output(records)
        assert any("] connect: " in line for line in output), output
        assert any("] wipe: /dev/vdz" in line for line in output), output  # sshd answered
        assert not any("] partition: " in line for line in output), output
        # The node's files (its credential, key, certificate) are gone from serve's disk.
        work = lab.state_dir / "install"
        assert not (work / NODE).exists()
        assert list(work.iterdir()) == [], list(work.iterdir())
        print(f"install-failed after {failed_after:.0f} s: {last}")

        # 2. The operator fixes the command; serve reloads it; the VM is power-cycled.
        write_inventory(config, GOOD_COMMAND)
        serve = lab._procs["serve"]
        log_mark = lab.server_log.stat().st_size

        def since_sighup() -> str:
            return lab.server_log.read_bytes()[log_mark:].decode(errors="replace")

        os.kill(serve.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "inventory reloaded" not in since_sighup():
            assert serve.poll() is None, explain(lab)
            assert "inventory reload refused" not in since_sighup(), explain(lab)
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not reload the inventory in 30 s:\n{explain(lab)}")
            time.sleep(0.5)
        events_before = len(records)
        lab.stop_vm(NODE)
        lab.start_vm(NODE)

        deadline = time.monotonic() + INSTALL_TIMEOUT_S
        while state(lab) not in INSTALLED_OR_LATER:
            after = lab.event_records(NODE)[events_before:]
            again = [e for e in after if e.to_state in {s.value for s in FAILED}]
            assert not again, (again, explain(lab))
            if time.monotonic() > deadline:
                pytest.fail(f"{NODE} not installed in {INSTALL_TIMEOUT_S} s:\n{explain(lab)}")
            time.sleep(2)
        installed_after = time.monotonic() - started
        records = lab.event_records(NODE)
        after = records[events_before:]
        assert transitions(after)[:4] == [
            ("install-failed", "pxe-booting", "pxe-boot"),
            ("pxe-booting", "installer-booted", "installer-booted"),
            ("installer-booted", "installing", "install-started"),
            ("installing", "installed", "installed"),
        ], transitions(after)
        started_event = next(e for e in after if e.event == "install-started")
        assert started_event.detail["command"] == GOOD_COMMAND, started_event.detail
        output = install_output(after)
        for step in ("connect", "wipe", "partition", "write-root", "extra-files", "done"):
            assert any(f"] {step}: " in line for line in output), (step, output)
        assert any("] wipe: /dev/vda" in line for line in output), output
        assert list((lab.state_dir / "install").iterdir()) == []
        print(f"installed after {installed_after:.0f} s; {transitions(after)}")

        # 3. The installed Debian reports its first boot with the credential the second
        # attempt put on its disk; serve never logged that credential.
        deadline = time.monotonic() + SSH_TIMEOUT_S
        while state(lab) not in BOOTED:
            assert state(lab) not in FAILED, explain(lab)
            if time.monotonic() > deadline:
                pytest.fail(f"no first boot in {SSH_TIMEOUT_S} s:\n{explain(lab)}")
            time.sleep(2)
        node = lab.inventory.node(NODE)
        assert node is not None
        read = "cat /etc/hostname /etc/nixos/secrets/cluster-config.json"
        done = ssh(lab, str(node.provisioning_ip), read)
        while done.returncode != 0:
            if time.monotonic() > deadline:
                pytest.fail(f"no SSH into the installed OS in {SSH_TIMEOUT_S} s:\n{explain(lab)}")
            time.sleep(3)
            done = ssh(lab, str(node.provisioning_ip), read)
        hostname, document = done.stdout.split("\n", 1)
        assert hostname == NODE, done.stdout
        credential = json.loads(document)["agent_token"]
        assert len(credential) >= 20, "a real credential"
        records = lab.event_records(NODE)
        serve_log = lab.server_log.read_text(errors="replace")
        assert credential not in serve_log
        assert "PRIVATE KEY" not in serve_log
        events_text = json.dumps([e.detail for e in records])
        assert credential not in events_text
        assert "PRIVATE KEY" not in events_text
    finally:
        lab.down()
        assert not lab.network.exists()
