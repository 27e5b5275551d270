"""`plasmaboot lab install`: the lab's nixos-anywhere, over SSH into the installer image.

Same shape as `nixos-anywhere --extra-files DIR root@IP`: it reaches the installer over
SSH (bounded retries while sshd comes up), then, each step one line on stdout (the server
streams them into the node's events):

  connect -> wipe -> partition -> write-esp -> write-root -> mount -> extra-files ->
  configure -> bootloader -> finish -> reboot

Every attempt starts over from nothing: whatever a failed attempt left (mounts, partitions,
half-written filesystems) is unmounted and wiped first, so it cannot change the outcome.
The OS image is checked against its manifest before anything touches the network.
The disk layout (one MBR table, FAT ESP + ext4 root, bootable by BIOS and UEFI) is
described in `lab/disk_layout.py`; the partition images come from `lab/os_image.py`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.lab import disk_layout
from plasmaboot.lab.os_image import OsImage

TARGET = "/mnt/plasmaboot-target"
Emit = Callable[[str], None]


class InstallError(RuntimeError):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"step {step} failed: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True)
class InstallRequest:
    node: str
    ip: str
    extra_files: Path | None
    disk: str = "/dev/vda"
    ssh_wait_s: float = 180.0
    port: int = 22
    step_timeout_s: float = 900.0


class Ssh:
    """OpenSSH to root@IP with the lab key; one multiplexed connection for every step."""

    def __init__(self, ip: str, key: Path, control_dir: Path, port: int = 22) -> None:
        self.address = f"root@{ip}" + (f":{port}" if port != 22 else "")
        self.argv = [
            "ssh", "-i", str(key), "-F", "/dev/null", "-p", str(port),
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
            "-o", "ControlMaster=auto", "-o", f"ControlPath={control_dir}/master",
            "-o", "ControlPersist=60",
            f"root@{ip}",
        ]  # fmt: skip

    def run(self, step: str, script: str, *, stdin: Path | None = None, timeout_s: float) -> str:
        """Run a shell script on the target (bash -c); a failure raises for `step`."""
        command = [*self.argv, f"set -eu; {script}"]
        try:
            with stdin.open("rb") if stdin else open(os.devnull, "rb") as data:
                done = subprocess.run(
                    command, capture_output=True, text=True, stdin=data, timeout=timeout_s
                )
        except subprocess.TimeoutExpired:
            raise InstallError(
                step, f"no result from {self.address} in {timeout_s:.0f} s"
            ) from None
        if done.returncode != 0:
            detail = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()
            raise InstallError(
                step, f"exit {done.returncode} on {self.address}: {' | '.join(detail[-5:])}"
            )
        return done.stdout

    def wait(self, deadline_s: float, emit: Emit) -> None:
        """Retry until sshd answers and accepts the key, within `deadline_s`."""
        started = time.monotonic()
        attempt = 0
        last = ""
        while True:
            attempt += 1
            done = subprocess.run([*self.argv, "true"], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=30, check=False)  # fmt: skip
            if done.returncode == 0:
                return
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "no answer"
            waited = time.monotonic() - started
            if waited + 2 >= deadline_s:
                raise InstallError(
                    "connect",
                    f"cannot reach the installer over SSH at {self.address}: {attempt} "
                    f"attempt(s) in {waited:.0f} s, last: {last}",
                )
            if attempt == 1 or attempt % 5 == 0:
                emit(f"waiting for sshd at {self.address} ({last})")
            time.sleep(2)

    def close(self) -> None:
        subprocess.run([*self.argv[:-1], "-O", "exit", self.argv[-1]],
                       capture_output=True, timeout=10, check=False)  # fmt: skip


def extra_files_tar(source: Path, dest: Path) -> int:
    """DIR's tree as a tar (nixos-anywhere --extra-files): modes kept, owned by root."""

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    count = 0
    with tarfile.open(dest, "w") as archive:
        for path in sorted(source.rglob("*")):
            archive.add(path, arcname=str(path.relative_to(source)), recursive=False,
                        filter=as_root)  # fmt: skip
            count += 1
    return count


def install(request: InstallRequest, image: OsImage, key: Path, emit: Emit = print) -> None:
    """Install the lab OS on the installer at `request.ip`; raises InstallError naming the step."""
    disk = shlex.quote(request.disk)
    esp = shlex.quote(disk_layout.partition_device(request.disk, 1))
    root = shlex.quote(disk_layout.partition_device(request.disk, 2))
    timeout = request.step_timeout_s
    work = Path(tempfile.mkdtemp(prefix="pb-install-"))
    ssh = Ssh(request.ip, key, work, request.port)
    started = time.monotonic()

    def step(name: str, detail: str) -> None:
        emit(f"[{time.monotonic() - started:6.1f} s] {name}: {detail}")

    try:
        step("connect", f"{ssh.address} (waiting up to {request.ssh_wait_s:.0f} s for sshd)")
        ssh.wait(request.ssh_wait_s, lambda line: step("connect", line))
        step("wipe", f"{request.disk}: unmount and erase what an earlier attempt left")
        ssh.run("wipe", (
            f"test -b {disk} || {{ echo 'no disk {request.disk} on the installer' >&2; exit 1; }}; "
            f"if mountpoint -q {TARGET}; then umount -R {TARGET}; fi; "
            f"for part in {disk}?*; do [ -b \"$part\" ] && wipefs -a -q \"$part\" || true; done; "
            f"wipefs -a -q {disk}; dd if=/dev/zero of={disk} bs=1M count=1 conv=fsync status=none"
        ), timeout_s=timeout)  # fmt: skip
        step("partition", f"{request.disk}: MBR, ESP {disk_layout.ESP_MIB} MiB + ext4 root")
        table = work / "table.sfdisk"
        table.write_text(disk_layout.partition_table())
        ssh.run("partition", (
            f"sfdisk --quiet --wipe always --wipe-partitions always {disk} >/dev/null; "
            f"for _ in $(seq 50); do [ -b {root} ] && break; sleep 0.2; done; "
            f"test -b {esp} && test -b {root}"
        ), stdin=table, timeout_s=timeout)  # fmt: skip
        for name, part, source in (("write-esp", esp, image.esp), ("write-root", root, image.root)):
            step(name, f"{source.name} ({source.stat().st_size >> 20} MiB zstd) -> {part}")
            ssh.run(name, f"zstd -dcq | dd of={part} bs=4M iflag=fullblock conv=fsync status=none",
                    stdin=source, timeout_s=timeout)  # fmt: skip
        step("mount", f"{root} on {TARGET}, grown to its partition")
        ssh.run("mount", (
            f"mkdir -p {TARGET}; mount {root} {TARGET}; resize2fs {root} >/dev/null 2>&1"
        ), timeout_s=timeout)  # fmt: skip
        if request.extra_files is not None:
            bundle = work / "extra-files.tar"
            count = extra_files_tar(request.extra_files, bundle)
            step("extra-files", f"{count} entries from {request.extra_files}")
            ssh.run("extra-files",
                    f"tar -x -p --numeric-owner --no-overwrite-dir -f - -C {TARGET}",
                    stdin=bundle, timeout_s=timeout)  # fmt: skip
        step("configure", f"hostname {request.node}; the lab key for root")
        public = work / "lab.pub"
        public.write_text(key.with_name(key.name + ".pub").read_text())
        node = shlex.quote(request.node)
        ssh.run("configure", (
            f"echo {node} > {TARGET}/etc/hostname; "
            f"printf '127.0.1.1\\t%s\\n' {node} >> {TARGET}/etc/hosts; "
            f"install -d -m 0700 {TARGET}/root/.ssh; key=$(cat); "
            f"grep -qxF \"$key\" {TARGET}/root/.ssh/authorized_keys 2>/dev/null || "
            f"echo \"$key\" >> {TARGET}/root/.ssh/authorized_keys; "
            f"chmod 0600 {TARGET}/root/.ssh/authorized_keys"
        ), stdin=public, timeout_s=timeout)  # fmt: skip
        step("bootloader", "SYSLINUX mbr.bin (BIOS); systemd-boot is on the ESP (UEFI)")
        ssh.run("bootloader", f"dd of={disk} bs=440 count=1 conv=notrunc,fsync status=none",
                stdin=image.mbr, timeout_s=timeout)  # fmt: skip
        step("finish", f"unmount {TARGET}, sync")
        ssh.run("finish", f"umount {TARGET}; sync", timeout_s=timeout)
        step("reboot", "the installer reboots into the installed disk")
        ssh.run("reboot", "(sleep 1; busybox reboot -f) >/dev/null 2>&1 </dev/null &",
                timeout_s=60)  # fmt: skip
        step("done", f"{request.node} installed in {time.monotonic() - started:.1f} s")
    finally:
        ssh.close()
        shutil.rmtree(work, ignore_errors=True)
