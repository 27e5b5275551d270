"""The whole chain for real, in QEMU under TCG: installer image -> `plasmaboot lab install`
over SSH -> the VM netboots, iPXE gets serve's local-disk script and the machine starts
the installed Debian from its own disk (BIOS: SeaBIOS + QEMU's iPXE ROM; UEFI: OVMF).

The installer boots by QEMU's -kernel/-initrd (its agent is not under test here: the test
makes the agent's calls itself, so the node's state is what serve would hold); every SSH
connection and DHCP exchange runs on the lab bridge inside a namespace the test creates.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from plasmaboot.lab.image import DEFAULT_WORK_DIR
from plasmaboot.lab.installer_image import InstallerImage, build_installer_image, lab_ssh_key
from plasmaboot.lab.os_image import MANIFEST, OsImage, build_os_image
from plasmaboot.lab.qemu import REAL_DISK_BYTES, DirectBoot, Firmware
from plasmaboot.lab.runner import Lab
from plasmaboot.lifecycle import State

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "examples/lab/miniature.yaml"
NODE = "node01"
MEMORY_MB = 1024
INSTALLER_UP_S = 240
INSTALL_S = 600
DISK_BOOT_S = 600
ANSI = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")


@pytest.fixture(scope="module")
def real_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[InstallerImage, OsImage]:
    """Both images, from the cache when their inputs have not changed."""
    assets = tmp_path_factory.mktemp("real-assets")
    installer = build_installer_image(assets, cache=DEFAULT_WORK_DIR, progress=print)
    return installer, build_os_image(DEFAULT_WORK_DIR, progress=print)


def console_text(lab: Lab) -> str:
    log = lab.vm_spec(NODE).console_log
    return ANSI.sub("", log.read_text(errors="replace")) if log.exists() else ""


def wait_console(lab: Lab, pattern: str, timeout_s: float, after: int = 0) -> re.Match[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.compile(pattern).search(console_text(lab), after)
        if found:
            return found
        if lab.vm_pid(NODE) is None and time.monotonic() > deadline - timeout_s + 5:
            break  # the VM is gone: waiting longer cannot help
        time.sleep(1)
    pytest.fail(f"no /{pattern}/ on the console in {timeout_s:.0f} s:\n{console_text(lab)[-4000:]}")


def http_json(lab: Lab, method: str, path: str, token: str = "", body: object = None) -> str:
    """curl inside the lab namespace (serve listens on the lab bridge only)."""
    argv = ["curl", "-sS", "-m", "20", "-X", method, f"{lab.http_base}{path}"]
    if token:
        argv += ["-H", f"Authorization: Bearer {token}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    done = subprocess.run(lab.network.exec_argv(*argv), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def node_script_fetches(lab: Lab) -> float:
    """How many node iPXE scripts serve has handed out (its Prometheus counter)."""
    metrics = http_json(lab, "GET", "/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("plasmaboot_http_requests_total{")
        and 'route="/boot/ipxe/node/{mac}.ipxe"' in line
        and 'status="200"' in line
    )


HTTP_IN_GUEST = """
import sys, urllib.error, urllib.request
method, url, token, body = sys.argv[1:5]
request = urllib.request.Request(url, data=body.encode() or None, method=method)
if token:
    request.add_header("Authorization", "Bearer " + token)
request.add_header("Content-Type", "application/json")
try:
    with urllib.request.urlopen(request, timeout=20) as answer:
        print(answer.read().decode())
except urllib.error.HTTPError as refused:
    print(refused.read().decode())
"""


class Agent:
    """The installer agent's calls, made by the test from inside the installer VM (serve
    hands a node's boot token only to the address its DHCP leased to the node): boot
    script -> boot token -> lookup -> session -> stages."""

    def __init__(self, lab: Lab, ip: str, mac: str) -> None:
        self.lab, self.ip = lab, ip
        script = self.call("GET", f"/boot/ipxe/node/{mac}.ipxe")  # fires pxe-boot
        boot_token = re.search(r"plasmaboot\.token=(\S+)", script)
        assert boot_token, script
        answer = json.loads(self.call("POST", "/api/v1/agent/lookup", boot_token.group(1),
                                      {"mac": mac}))  # fmt: skip
        assert "token" in answer, answer
        self.session = answer["token"]

    def call(self, method: str, path: str, token: str = "", body: object = None) -> str:
        payload = "" if body is None else json.dumps(body)
        argv = [method, f"{self.lab.http_base}{path}", token, payload]
        done = ssh(self.lab, self.ip, "python3 - " + " ".join(shlex.quote(a) for a in argv),
                   stdin=HTTP_IN_GUEST)  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def report(self, stage: str, *, from_host: bool = False) -> None:
        """From the installer, or (once it has rebooted) from the host with the session."""
        body = {"stage": stage, "detail": {"node": NODE}}
        if from_host:
            answer = http_json(self.lab, "POST", "/api/v1/agent/report", self.session, body)
        else:
            answer = self.call("POST", "/api/v1/agent/report", self.session, body)
        assert '"error"' not in answer, answer


def ssh(lab: Lab, ip: str, command: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-i", str(lab_ssh_key(DEFAULT_WORK_DIR)), "-F", "/dev/null",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=5", f"root@{ip}", command]  # fmt: skip
    return subprocess.run(lab.network.exec_argv(*argv), capture_output=True, text=True,
                          input=stdin, timeout=60)  # fmt: skip


def wait_ssh(lab: Lab, ip: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ssh(lab, ip, "true").returncode == 0:
            return
        time.sleep(2)
    pytest.fail(f"no SSH into the installed OS at {ip} in {timeout_s:.0f} s")


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path: Path,
        real_images: tuple[InstallerImage, OsImage]) -> Iterator[Lab]:  # fmt: skip
    firmware: Firmware = request.param
    installer, _ = real_images
    lab = Lab(tmp_path / "lab", LAB, netns=f"pbinst{firmware[:4]}", firmware=firmware,
              assets=installer.kernel.parent.parent, simulate_disk_boot=False)  # fmt: skip
    try:
        lab.create_network()
        lab.start_server()
        yield lab
    finally:
        lab.down()
        assert not lab.network.exists()


@pytest.mark.e2e
@pytest.mark.timeout(INSTALLER_UP_S + INSTALL_S + DISK_BOOT_S + 300)
@pytest.mark.parametrize("lab", ["bios", "uefi"], indirect=True)
@pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root for namespaces and taps")
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed")
@pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="mmdebstrap not installed")
def test_install_over_ssh_then_the_vm_boots_debian_from_its_own_disk(
    lab: Lab, real_images: tuple[InstallerImage, OsImage], tmp_path: Path
) -> None:
    installer, image = real_images
    mac = lab.vm_spec(NODE).mac
    extra = tmp_path / "extra"
    (extra / "etc/plasmaboot").mkdir(parents=True)
    secret = extra / "etc/plasmaboot/secret"
    secret.write_text("lab secret\n")
    secret.chmod(0o600)

    started = time.monotonic()
    boot = DirectBoot(installer.kernel, installer.initrd, "console=ttyS0,115200")
    lab.start_vm(NODE, memory_mb=MEMORY_MB, disk_bytes=REAL_DISK_BYTES, direct=boot,
                 no_reboot=True)  # fmt: skip
    leased = wait_console(lab, r"has (\d+\.\d+\.\d+\.\d+)/", INSTALLER_UP_S)
    ip = leased.group(1)
    wait_console(lab, "sshd is listening", INSTALLER_UP_S)
    installer_up = time.monotonic() - started
    wait_ssh(lab, ip, 60)
    agent = Agent(lab, ip, mac)
    agent.report("installer-booted")
    agent.report("installing")

    began = time.monotonic()
    done = subprocess.run(
        lab.network.exec_argv(sys.executable, "-m", "plasmaboot", "lab", "install",
                              "--node", NODE, "--ip", ip, "--extra-files", str(extra),
                              "--firmware", lab.firmware),
        capture_output=True, text=True, timeout=INSTALL_S,
    )  # fmt: skip
    install_s = time.monotonic() - began
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr + console_text(lab)[-3000:]
    for step in ("connect", "wipe", "partition", "write-esp", "write-root", "extra-files",
                 "configure", "bootloader", "reboot", "done"):  # fmt: skip
        assert f"] {step}: " in done.stdout, step
    assert lab.wait_vm_exit(NODE, 60) is not None, "the installer did not reboot"
    agent.report("installed", from_host=True)
    assert next(n for n in lab.nodes() if n.hostname == NODE).state is State.INSTALLED

    # Power on: network boot first; iPXE gets serve's local-disk script and hands over
    # (BIOS: sanboot of the disk; UEFI: `exit 1`, and OVMF boots its next entry, the disk).
    mark = len(console_text(lab))
    fetched_before = node_script_fetches(lab)
    began = time.monotonic()
    lab.start_vm(NODE, memory_mb=MEMORY_MB, disk_bytes=REAL_DISK_BYTES)
    # The installed kernel's command line (from the ESP's loader entry / syslinux.cfg) proves
    # the disk booted: the installer was started with console= only.
    disk_kernel = wait_console(
        lab, rf"Command line: .*root=UUID={image.root_uuid} rw", DISK_BOOT_S, mark
    )
    if lab.firmware == "uefi":
        # ipxe.efi prints on the serial console (QEMU's BIOS iPXE ROM does not): it ran
        # serve's local-disk script, whose `exit 1` sent OVMF on to the disk.
        handover = console_text(lab)[mark : disk_kernel.start()]
        assert "Handing back to the firmware boot order" in handover, handover[-3000:]
        wait_console(lab, "EFI stub: Loaded initrd", 5, mark)  # systemd-boot, not SYSLINUX
    wait_console(lab, r"Reached target multi-user\.target", DISK_BOOT_S, mark)
    disk_boot_s = time.monotonic() - began
    wait_ssh(lab, ip, 120)
    checks = ssh(lab, ip, "stat -c '%a %U' /etc/plasmaboot/secret; cat /etc/plasmaboot/secret; "
                 "cat /etc/hostname; etcd --version; systemctl is-active multi-user.target; "
                 "plasmaboot firstboot --help >/dev/null && echo firstboot-ok")  # fmt: skip
    assert checks.returncode == 0, checks.stderr
    lines = checks.stdout.splitlines()
    assert lines[:3] == ["600 root", "lab secret", NODE], lines
    assert any(line.startswith("etcd Version: 3.4") for line in lines), lines
    assert lines[-2:] == ["active", "firstboot-ok"], lines
    # The disk boot went through serve: iPXE fetched the node's script (local-disk) again.
    assert node_script_fetches(lab) > fetched_before, "the disk boot did not ask serve"
    assert next(n for n in lab.nodes() if n.hostname == NODE).state is State.INSTALLED
    print(f"{lab.firmware}: installer up {installer_up:.0f} s, install {install_s:.0f} s, "
          f"disk boot to multi-user {disk_boot_s:.0f} s")  # fmt: skip
    lab.stop_vm(NODE)


def _fake_image(directory: Path) -> Path:
    """A tiny image with a valid manifest (the checks do not care about content)."""
    directory.mkdir(parents=True)
    files = {}
    for role, name in (("root", "root.ext4.zst"), ("esp", "esp.img.zst"), ("mbr", "mbr.bin")):
        (directory / name).write_bytes(role.encode() * 10)
        files[role] = {"name": name, "sha256": hashlib.sha256(role.encode() * 10).hexdigest()}
    (directory / MANIFEST).write_text(json.dumps({"root_uuid": "u", "files": files}))
    return directory


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _lab_install(*args: str, key: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "plasmaboot", "lab", "install", "--node", NODE,
                           "--key", str(key), *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    return done, time.monotonic() - started


@pytest.fixture
def throwaway_key(tmp_path: Path) -> Path:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def test_install_gives_up_naming_the_address_when_nothing_answers_ssh(
    tmp_path: Path, throwaway_key: Path
) -> None:
    image = _fake_image(tmp_path / "os")
    port = _free_loopback_port()  # nothing listens there: every attempt is refused
    done, took = _lab_install("--ip", "127.0.0.1", "--port", str(port), "--ssh-wait", "5",
                              "--os-image", str(image), key=throwaway_key)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED at step connect" in done.stdout
    assert f"root@127.0.0.1:{port}" in done.stdout.splitlines()[-1]
    assert took < 30


@pytest.mark.parametrize("damage", ["missing-manifest", "missing-file", "bad-checksum"])
def test_a_damaged_or_missing_os_image_is_refused_before_any_connection(
    tmp_path: Path, throwaway_key: Path, damage: str
) -> None:
    image = _fake_image(tmp_path / "os")
    if damage == "missing-manifest":
        (image / MANIFEST).unlink()
        named = str(image / MANIFEST)
    elif damage == "missing-file":
        (image / "esp.img.zst").unlink()
        named = str(image / "esp.img.zst")
    else:
        (image / "root.ext4.zst").write_bytes(b"flipped")
        named = str(image / "root.ext4.zst")
    done, _ = _lab_install("--ip", "127.0.0.1", "--port", str(_free_loopback_port()),
                           "--os-image", str(image), key=throwaway_key)  # fmt: skip
    assert done.returncode == 1
    assert "FAILED at step image" in done.stdout and named in done.stdout, done.stdout
    assert "plasmaboot lab image" in done.stdout
    assert "connect" not in done.stdout, "it must not reach for the installer first"
