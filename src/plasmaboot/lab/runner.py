"""`plasmaboot lab up|down`: a provisioning network, plasmaboot serve and QEMU VMs.

What the lab creates is written to `lab.json` in its work directory before it is
created, so `lab down` can remove it after a crash; it also kills whatever still runs
inside the lab namespace, so nothing survives a `lab down`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any

from plasmaboot.inventory import Inventory, load_inventory
from plasmaboot.lab.network import LabNetwork, run
from plasmaboot.lab.qemu import (
    FIRMWARES,
    REAL_DISK_BYTES,
    REAL_MEMORY_MB,
    Firmware,
    VmSpec,
    prepare,
    qemu_argv,
)
from plasmaboot.lifecycle import State
from plasmaboot.store import EventRecord, NodeRecord, SqliteStore

DEFAULT_NETNS = "pblab"
RECORD = "lab.json"


@dataclass
class LabRecord:
    netns: str
    config: str = ""
    firmware: str = "bios"
    assets: str = ""
    server_pid: int | None = None
    vm_pids: dict[str, int] = field(default_factory=dict)

    def save(self, workdir: Path) -> None:
        path = workdir / RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, workdir: Path) -> LabRecord | None:
        path = workdir / RECORD
        return cls(**json.loads(path.read_text())) if path.exists() else None


class LabError(RuntimeError):
    pass


class Lab:
    def __init__(
        self,
        workdir: Path,
        config: Path,
        *,
        netns: str = DEFAULT_NETNS,
        firmware: Firmware = "bios",
        assets: Path | None = None,
        simulate_disk_boot: bool | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self.config = config.resolve()
        self.inventory: Inventory = load_inventory(config)
        dhcp = self.inventory.provisioning.dhcp
        if dhcp is None or dhcp.interface is None:
            raise LabError(f"{config}: the lab needs networks[provisioning].dhcp.interface")
        prefix = self.inventory.provisioning.subnet.prefixlen
        self.network = LabNetwork(
            netns,
            dhcp.interface,
            IPv4Interface(f"{self.inventory.server.provisioning_ip}/{prefix}"),
        )
        self.firmware = firmware
        # The whole chain (cluster.yaml): an install command puts a real OS on each VM's
        # disk. Without one (miniature.yaml) the busybox image "installs" a marker.
        self.real_install = self.inventory.server.installer.command is not None
        # True: the miniature image's "disk boot" is another netboot (serve's
        # --simulate-disk-boot); False: iPXE gets the local-disk script, as for real disks.
        self.simulate_disk_boot = (
            not self.real_install if simulate_disk_boot is None else simulate_disk_boot
        )
        self.assets = assets or self.workdir / "assets"
        self.record = LabRecord(netns, str(self.config), firmware, str(self.assets))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def attach(cls, workdir: Path) -> Lab:
        """The lab running in `workdir`, for another process (the lab's simulated BMC)."""
        record = LabRecord.load(workdir)
        if record is None:
            raise LabError(f"no lab is running in {workdir}")
        firmware = record.firmware
        if firmware not in FIRMWARES:
            raise LabError(f"{workdir}: unknown firmware {firmware!r} in {RECORD}")
        lab = cls(workdir, Path(record.config), netns=record.netns, firmware=firmware,
                  assets=Path(record.assets))  # fmt: skip
        lab.record = record
        return lab

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def server_log(self) -> Path:
        return self.workdir / "serve.log"

    @property
    def vm_dir(self) -> Path:
        """Each VM's disk, firmware variables and console log."""
        return self.workdir / "vms"

    @property
    def router_advert_log(self) -> Path:
        return self.workdir / "router-advert.log"

    @property
    def http_base(self) -> str:
        return self.inventory.server.http_base()

    # ---- bring-up ------------------------------------------------------------------

    def create_network(self) -> None:
        """The namespace and bridge, and the bridge's router adverts (lab/router_advert.py).

        A new lab starts from nothing: the store, VM disks and logs a previous lab left in
        the work directory are removed first, or its nodes would show as `active` at once.
        The advertiser runs inside the lab namespace, so `lab down` stops it with the rest.
        """
        if self.network.exists():
            raise LabError(
                f"network namespace {self.network.netns} exists: a lab is running or a "
                "previous one crashed; run `plasmaboot lab down` first"
            )
        self._remove_previous_run()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.record.save(self.workdir)  # before creating: a crash now is still cleaned up
        self.network.create()
        argv = self.network.exec_argv(
            sys.executable, "-m", "plasmaboot.lab.router_advert",
            "--interface", self.network.bridge,
        )  # fmt: skip
        with self.router_advert_log.open("ab") as log:
            self._procs["router-advert"] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT
            )

    def _remove_previous_run(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.rmtree(self.vm_dir, ignore_errors=True)
        for log in (self.server_log, self.router_advert_log):
            log.unlink(missing_ok=True)

    def start_server(self, timeout_s: float = 30) -> None:
        argv = self.network.exec_argv(
            sys.executable, "-m", "plasmaboot", "serve",
            "-c", str(self.config),
            "--state-dir", str(self.state_dir),
            "--assets", str(self.assets),
            "--interface", self.network.bridge,
            *(["--simulate-disk-boot"] if self.simulate_disk_boot else []),
        )  # fmt: skip
        log = self.server_log.open("ab")
        # serve runs the install command (`plasmaboot lab install ...`) by name: this
        # interpreter's scripts come first on its PATH, as in an activated venv.
        scripts = str(Path(sys.executable).parent)
        env = {**os.environ, "PATH": f"{scripts}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._procs["serve"] = proc
        self.record.server_pid = proc.pid
        self.record.save(self.workdir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(
                    f"plasmaboot serve exited ({proc.returncode}); see {self.server_log}"
                )
            probe = run(
                *self.network.exec_argv("curl", "-sf", "-m", "2", f"{self.http_base}/health"),
                check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.3)
        raise LabError(f"plasmaboot serve did not become healthy in {timeout_s:.0f} s")

    def vm_spec(self, hostname: str) -> VmSpec:
        node = self.inventory.node(hostname)
        if node is None:
            raise LabError(f"{hostname} is not in {self.config}")
        index = self.inventory.nodes.index(node)
        spec = VmSpec(hostname, node.macs[0], self.network.tap_name(index), self.firmware,
                      self.vm_dir)  # fmt: skip
        if self.real_install:  # Debian and etcd need the room and the memory
            spec = replace(spec, memory_mb=REAL_MEMORY_MB, disk_bytes=REAL_DISK_BYTES)
        return spec

    def start_vm(self, hostname: str, **changes: Any) -> VmSpec:
        """Power a VM on (again); its disk persists between boots, as a real disk would.

        `changes` override fields of its `VmSpec` (memory, disk size, a direct kernel boot).
        """
        vm = replace(self.vm_spec(hostname), **changes)
        prepare(vm)
        if not self.network.has_link(vm.tap):
            self.network.add_tap(vm.tap)
        with vm.console_log.open("ab") as console:
            console.write(f"\n=== power on {time.strftime('%H:%M:%S')} ===\n".encode())
        vm.pid_file.unlink(missing_ok=True)
        proc = subprocess.Popen(
            self.network.exec_argv(*qemu_argv(vm)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives a BMC's chassis program that powered it on
        )
        self._procs[hostname] = proc
        self.record.vm_pids[hostname] = proc.pid
        self.record.save(self.workdir)
        return vm

    def vm_pid(self, hostname: str) -> int | None:
        """The VM's QEMU process if it runs (from QEMU's pid file: any process can ask)."""
        try:
            pid = int(self.vm_spec(hostname).pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_lab_process(pid) else None

    def stop_vm(self, hostname: str) -> None:
        """Pull the plug (a BMC power off)."""
        pid = self.vm_pid(hostname)
        if pid is not None:
            _kill(pid)

    def wait_vm_exit(self, hostname: str, timeout_s: float) -> int | None:
        proc = self._procs.get(hostname)
        if proc is None:
            return None
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    # ---- watching --------------------------------------------------------------------

    def nodes(self) -> list[NodeRecord]:
        store = SqliteStore.in_dir(self.state_dir)
        try:
            return store.list_nodes()
        finally:
            store.close()

    def events(self, hostname: str) -> list[tuple[str | None, str | None, str]]:
        return [(e.from_state, e.to_state, e.event) for e in self.event_records(hostname)]

    def event_records(self, hostname: str) -> list[EventRecord]:
        store = SqliteStore.in_dir(self.state_dir)
        try:
            return store.events(hostname)
        finally:
            store.close()

    def wait_for(
        self,
        hostnames: list[str],
        goal: State,
        timeout_s: float,
        on_tick: Callable[[list[NodeRecord]], None] | None = None,
    ) -> bool:
        """Poll the store until every named node is in `goal`, a VM dies early, or timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            nodes = [n for n in self.nodes() if n.hostname in hostnames]
            if on_tick:
                on_tick(nodes)
            if len(nodes) == len(hostnames) and all(n.state is goal for n in nodes):
                return True
            if any(n.state.value.endswith("failed") for n in nodes):
                return False
            time.sleep(1)
        return False

    # ---- tear-down -------------------------------------------------------------------

    def down(self) -> list[str]:
        return tear_down(self.workdir, self.network.netns)


def _is_lab_process(pid: int) -> bool:
    """Guard against a recorded PID reused by an unrelated process after a crash."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline or b"plasmaboot" in cmdline


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def tear_down(workdir: Path, netns: str = DEFAULT_NETNS) -> list[str]:
    """Remove everything a lab made: its processes, then its namespace (with every link)."""
    record = LabRecord.load(workdir)
    if record is not None:
        netns = record.netns
    removed = []
    network = LabNetwork(netns, "", IPv4Interface("0.0.0.0/32"))
    if network.exists():
        pids = run("ip", "netns", "pids", netns, check=False).stdout.split()
        for pid in [int(p) for p in pids]:
            _kill(pid)
        removed.append(f"{len(pids)} process(es) in namespace {netns}")
    if record is not None:
        for recorded in [record.server_pid, *record.vm_pids.values()]:
            if recorded and _is_lab_process(recorded):
                _kill(recorded)
    if network.exists():
        network.destroy()
        removed.append(f"namespace {netns} (bridge and taps)")
    if record is not None:
        (workdir / RECORD).unlink(missing_ok=True)
    return removed
