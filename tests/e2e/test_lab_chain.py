"""The whole chain, nothing simulated, on four QEMU VMs (TCG) in a namespace of its own:

firmware PXE -> plasmaboot DHCP -> iPXE -> the installer image (Debian initramfs) -> the
installer agent reports the machine -> serve runs `plasmaboot lab install` over SSH with
the node's files (cluster-config.json, CA, node certificate, rendered units) -> the VM
reboots, iPXE gets the local-disk script, the VM boots Debian from its own disk -> systemd
runs the first-boot units plasmaboot rendered -> etcd (standing in for Chainfire) forms
from node01-03 over TLS from plasmaboot's CA, node04 joins -> every node `active`. Then the
day-2 work on the same machines: node04 reboots from its disk, is reprovisioned through a
real IPMI BMC, node02's certificate is rotated under its systemd, and the whole cluster is
backed up, lost (every member's data deleted) and restored from the archive over SSH.

Debian stands in for NixOS (it cannot be built offline) and etcd for Chainfire.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from plasmaboot.boot import paths
from plasmaboot.lab.bmc import start_bmc
from plasmaboot.lab.installer_image import build_installer_image, lab_ssh_key
from plasmaboot.lab.os_image import build_os_image
from plasmaboot.lab.runner import Lab
from plasmaboot.lifecycle import State
from plasmaboot.provision.timeline import PHASES, phase_seconds
from plasmaboot.render.cluster_config import cluster_config

ROOT = Path(__file__).resolve().parents[2]
CHAIN = ROOT / "examples/lab/cluster.yaml"
IMAGE_CACHE = Path.home() / ".cache" / "plasmaboot" / "lab-image"
NAMES = ["node01", "node02", "node03", "node04"]
CHAIN_TIMEOUT_S = 1500
REBOOT_TIMEOUT_S = 600
MARKERS = "/var/lib/first-boot-automation"
BMC_PORT = 17643
BMC_USER, BMC_PASSWORD = "pblab", "pbLabBmcS3cret"
ANSI = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(2 * CHAIN_TIMEOUT_S + 900),
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root for namespaces and taps"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed"),
]

SEQUENCE = [
    (None, "enrolled", "enroll"),
    ("enrolled", "pxe-booting", "pxe-boot"),
    ("pxe-booting", "installer-booted", "installer-booted"),
    ("installer-booted", "installing", "install-started"),
    ("installing", "installed", "installed"),
    ("installed", "first-boot", "first-boot"),
    ("first-boot", "joining", "join-started"),
    ("joining", "active", "joined"),
]


def ssh(lab: Lab, ip: str, command: str) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-i", str(lab_ssh_key(IMAGE_CACHE)), "-F", "/dev/null",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10", f"root@{ip}", command]  # fmt: skip
    return subprocess.run(lab.network.exec_argv(*argv), capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def explain(lab: Lab) -> str:
    parts = []
    for name in NAMES:
        console = lab.vm_spec(name).console_log
        tail = console.read_text(errors="replace")[-2500:] if console.exists() else "-"
        parts.append(f"--- {name}: {lab.events(name)}\n{tail}")
    serve = lab.server_log.read_text(errors="replace")[-4000:]
    return "\n".join(parts) + f"\n--- serve log:\n{serve}"


def test_four_machines_install_boot_from_disk_and_form_a_cluster(tmp_path: Path) -> None:
    lab = Lab(tmp_path / "lab", CHAIN, netns="pbchain", firmware="bios")
    build_installer_image(lab.assets, cache=IMAGE_CACHE, progress=print)
    build_os_image(IMAGE_CACHE, progress=print)
    try:
        lab.create_network()
        lab.start_server()
        for name in NAMES:
            lab.start_vm(name)
        reached = lab.wait_for(NAMES, State.ACTIVE, CHAIN_TIMEOUT_S)
        assert reached, explain(lab)

        for name in NAMES:
            records = lab.event_records(name)
            # events that are no transition (install output) keep the state: from == to
            transitions = [(e.from_state, e.to_state, e.event) for e in records
                           if e.to_state != e.from_state]  # fmt: skip
            assert transitions == SEQUENCE, (name, transitions)
            # the installer agent's facts, the install's own output, the OS's reports
            booted = next(e for e in records if e.event == "installer-booted")
            assert booted.detail["hardware"]["memory_bytes"] > 900 << 20
            output = [line for e in records if e.event == "install-output"
                      for line in e.detail["lines"]]  # fmt: skip
            assert any("] write-root: " in line for line in output), output
            assert any("] extra-files: " in line for line in output), output
            joined = next(e for e in records if e.event == "joined")
            stages = {s["stage"]: s["status"] for s in joined.detail["stages"]}
            assert stages == {"health-check": "done"}, joined.detail
            print(name, {p: round(s) for p, s in phase_seconds(records).items()})
            assert set(phase_seconds(records)) == set(PHASES)

        node01 = lab.inventory.node("node01")
        assert node01 is not None
        ip = str(node01.provisioning_ip)
        # On the installed disk, run by systemd: the rendered units and etcd with TLS.
        units = ssh(lab, ip, "systemctl is-active etcd.service chainfire-cluster-join.service; "
                    "stat -c '%a %n' /etc/nixos/secrets/cluster-config.json "
                    "/etc/nixos/secrets/node01.key; findmnt -no SOURCE /")  # fmt: skip
        assert units.returncode == 0, units.stdout + units.stderr
        lines = units.stdout.split()
        assert lines[:2] == ["active", "active"], units.stdout
        assert "600 /etc/nixos/secrets/cluster-config.json" in units.stdout
        assert "600 /etc/nixos/secrets/node01.key" in units.stdout
        assert lines[-1] == "/dev/vda2", "the root is the VM's own disk"
        # plasmaboot's own verifier, on the node, over TLS with the node's certificate
        verify = ssh(lab, ip, "plasmaboot cluster verify --json --expect-members 4 "
                     "-c /etc/nixos/secrets/cluster-config.json")  # fmt: skip
        assert verify.returncode == 0, verify.stdout + verify.stderr
        report = json.loads(verify.stdout)
        print(report)
        text = json.dumps(report)
        for name in NAMES:
            assert f'"{name}"' in text, (name, report)

        host_sees_the_cluster(lab, tmp_path)
        node04_reboots_from_its_disk(lab)
        node04_is_reprovisioned(lab, tmp_path)
        host_sees_the_cluster(lab, tmp_path)
        node02_certificate_is_rotated(lab, tmp_path)
        the_lost_cluster_is_restored_from_a_backup(lab, tmp_path)
        host_sees_the_cluster(lab, tmp_path)
    finally:
        lab.down()
        assert not lab.network.exists()


def host_cluster_config(lab: Lab, tmp_path: Path) -> Path:
    """node01's cluster-config.json with the TLS files of serve's PKI, on the host."""
    node01 = lab.inventory.node("node01")
    assert node01 is not None
    pki = lab.state_dir / "pki"
    doc = cluster_config(lab.inventory, node01)
    doc["tls"] = {"enabled": True, "ca_cert_path": str(pki / "ca.crt"),
                  "node_cert_path": str(pki / "node01.crt"),
                  "node_key_path": str(pki / "node01.key")}  # fmt: skip
    config = tmp_path / "host-cluster-config.json"
    config.write_text(json.dumps(doc))
    return config


def plasmaboot(lab: Lab, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """The CLI on the provisioning network (the lab's namespace), as an operator runs it."""
    argv = [sys.executable, "-m", "plasmaboot", *args]
    return subprocess.run(lab.network.exec_argv(*argv), capture_output=True, text=True,
                          timeout=timeout_s)  # fmt: skip


def host_sees_the_cluster(lab: Lab, tmp_path: Path) -> None:
    """`plasmaboot cluster verify` from the provisioning server, with node01's certificate
    from serve's PKI: 4 healthy members, one leader, certificates valid."""
    config = host_cluster_config(lab, tmp_path)
    done = plasmaboot(lab, "cluster", "verify", "--json", "--expect-members", "4", "-c",
                      str(config), timeout_s=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (report,) = json.loads(done.stdout)
    members = report["members"]
    assert sorted(m["name"] for m in members) == NAMES, members
    assert all(m["healthy"] for m in members), members
    assert sum(1 for m in members if m["is_leader"]) == 1, members
    assert not any(m["is_learner"] for m in members), "node04 was promoted to a voter"


def image_fetches(lab: Lab) -> float:
    """serve's own count of kernels and initrds it handed out."""
    argv = ["curl", "-sf", "-m", "10", f"{lab.http_base}/metrics"]
    text = subprocess.run(lab.network.exec_argv(*argv), capture_output=True, text=True,
                          timeout=30, check=True).stdout  # fmt: skip
    route = f'route="{paths.IMAGE_ROUTE}"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("plasmaboot_http_requests_total{") and route in line)  # fmt: skip


def node04_reboots_from_its_disk(lab: Lab) -> None:
    """A reboot of an active node: no kernel or initrd fetched, the join skipped by its
    marker, etcd back, still active, nothing reinstalled.

    The console shows the next kernel starting; whether the boot finished is asked over
    SSH (`systemctl is-system-running --wait`): systemd stops printing its status lines on
    the serial console once the getty there has started, so "Reached target
    multi-user.target" may never appear on it.
    """
    node04 = lab.inventory.node("node04")
    assert node04 is not None
    ip = str(node04.provisioning_ip)
    fetched = image_fetches(lab)
    events_before = len(lab.event_records("node04"))
    console = lab.vm_spec("node04").console_log
    mark = console.stat().st_size
    ssh(lab, ip, "systemctl reboot")  # the connection may drop before it answers
    deadline = time.monotonic() + REBOOT_TIMEOUT_S
    tail = ""
    while "Linux version" not in tail:  # the kernel of the next boot
        if time.monotonic() > deadline:
            pytest.fail(f"node04 did not boot again in {REBOOT_TIMEOUT_S} s:\n{tail[-3000:]}")
        time.sleep(2)
        tail = ANSI.sub("", console.read_bytes()[mark:].decode(errors="replace"))
    state = ""
    while state != "running":
        if time.monotonic() > deadline:
            pytest.fail(f"node04's boot did not finish in {REBOOT_TIMEOUT_S} s: {state!r}")
        done = ssh(lab, ip, "timeout 60 systemctl is-system-running --wait")
        state = done.stdout.strip()
        assert state not in ("degraded", "maintenance"), ssh(lab, ip, "systemctl --failed").stdout
    checks = ssh(lab, ip, "systemctl is-active etcd.service; "
                 "systemctl show -p ConditionResult chainfire-cluster-join.service; "
                 f"test -e {MARKERS}/.chainfire-joined && echo marker")  # fmt: skip
    assert checks.stdout.split() == ["active", "ConditionResult=no", "marker"], checks
    assert image_fetches(lab) == fetched, "a reboot of an active node fetched a kernel or initrd"
    after = lab.event_records("node04")[events_before:]
    assert [e.event for e in after if e.to_state != e.from_state] == [], after
    assert next(n for n in lab.nodes() if n.hostname == "node04").state is State.ACTIVE


def node04_is_reprovisioned(lab: Lab, tmp_path: Path) -> None:
    """`plasmaboot node reprovision node04` through a real IPMI BMC (ipmi_sim, its chassis
    wired to the VM): node04 leaves the etcd cluster, netboots, is installed onto its disk
    again, boots it and joins again. The CLI runs in the lab's namespace, where it reaches
    both the BMC and the cluster, as an operator's would on the provisioning network."""
    doc = yaml.safe_load(CHAIN.read_text())
    node04 = next(n for n in doc["nodes"] if n["hostname"] == "node04")
    node04["bmc"] = {"address": "127.0.0.1", "port": BMC_PORT, "driver": "ipmi",
                     "username": BMC_USER, "password_env": "PB_LAB_BMC_PASSWORD"}  # fmt: skip
    config = tmp_path / "cluster-with-bmc.yaml"
    config.write_text(yaml.safe_dump(doc))
    events_before = len(lab.event_records("node04"))
    bmc = start_bmc(lab, "node04", BMC_PORT, BMC_USER, BMC_PASSWORD, in_lab=True)
    try:
        argv = [sys.executable, "-m", "plasmaboot", "node", "reprovision", "node04",
                "-c", str(config), "--state-dir", str(lab.state_dir),
                "--watch", str(CHAIN_TIMEOUT_S)]  # fmt: skip
        env = {**os.environ, "PB_LAB_BMC_PASSWORD": BMC_PASSWORD}
        done = subprocess.run(lab.network.exec_argv(*argv), capture_output=True, text=True,
                              env=env, timeout=CHAIN_TIMEOUT_S + 120)  # fmt: skip
    finally:
        bmc.terminate()
        bmc.wait(10)
    print(done.stdout[-2000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + explain(lab)
    assert BMC_PASSWORD not in done.stdout + done.stderr
    after = lab.event_records("node04")[events_before:]
    left = next(e for e in after if e.event == "left-cluster")
    assert left.detail["services"], left.detail
    moves = [(e.from_state, e.to_state, e.event) for e in after if e.to_state != e.from_state]
    assert moves[0][2] == "reprovision", moves
    assert [m[1:] for m in moves[-len(SEQUENCE) + 1 :]] == [s[1:] for s in SEQUENCE[1:]], moves


def lab_ssh_options() -> list[str]:
    options = [f"IdentityFile={lab_ssh_key(IMAGE_CACHE)}", "StrictHostKeyChecking=no",
               "UserKnownHostsFile=/dev/null", "LogLevel=ERROR"]  # fmt: skip
    return [arg for option in options for arg in ("--ssh-option", option)]


def serial_of(pem: str) -> int:
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def node02_certificate_is_rotated(lab: Lab, tmp_path: Path) -> None:
    """Runbook 10.2 on a lab VM: `plasmaboot pki rotate node02` reissues its certificate
    from serve's PKI, delivers it over SSH, restarts etcd under the VM's systemd and passes
    the health gate; etcd then serves the new certificate."""
    node02 = lab.inventory.node("node02")
    assert node02 is not None
    ip = str(node02.provisioning_ip)
    on_disk = "cat /etc/nixos/secrets/node02.crt"
    before = serial_of(ssh(lab, ip, on_disk).stdout)
    started = time.monotonic()
    done = plasmaboot(lab, "pki", "rotate", "node02", "-c", str(CHAIN), "--state-dir",
                      str(lab.state_dir), *lab_ssh_options(), timeout_s=900)  # fmt: skip
    print(done.stdout[-2000:])
    print(f"pki rotate node02 (health gate included): {time.monotonic() - started:.0f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    after = serial_of(ssh(lab, ip, on_disk).stdout)
    assert after != before
    issued = serial_of((lab.state_dir / "pki" / "node02.crt").read_text())
    assert after == issued, "the node holds the certificate serve's PKI issued"
    pki = lab.state_dir / "pki"
    handshake = subprocess.run(lab.network.exec_argv(
        "openssl", "s_client", "-connect", f"{ip}:2379", "-CAfile", str(pki / "ca.crt"),
        "-cert", str(pki / "node01.crt"), "-key", str(pki / "node01.key"),
    ), input="", capture_output=True, text=True, timeout=60)  # fmt: skip
    served = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                       handshake.stdout, re.S)  # fmt: skip
    assert served is not None, handshake.stdout + handshake.stderr
    assert serial_of(served.group(0)) == after, "etcd was restarted with the new certificate"
    assert ssh(lab, ip, "systemctl is-active etcd.service").stdout.strip() == "active"


def etcdctl(lab: Lab, *args: str) -> str:
    """etcdctl on the provisioning network with node01's certificate from serve's PKI."""
    pki = lab.state_dir / "pki"
    endpoints = ",".join(f"https://10.77.0.5{i}:2379" for i in range(4))
    argv = ["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={endpoints}",
            f"--cacert={pki / 'ca.crt'}", f"--cert={pki / 'node01.crt'}",
            f"--key={pki / 'node01.key'}", "--command-timeout=30s", *args]  # fmt: skip
    done = subprocess.run(lab.network.exec_argv(*argv), capture_output=True, text=True,
                          timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def the_lost_cluster_is_restored_from_a_backup(lab: Lab, tmp_path: Path) -> None:
    """Runbook 9.4 then 9.3 on the lab's etcd: keys written, `cluster backup` from the
    provisioning server while serve runs, more keys written; then every member's etcd is
    stopped and its data directory deleted (the cluster is gone) and `cluster restore`
    rebuilds all four over SSH: the keys from before the backup are back, the later ones
    are not, and (checked by the caller) four healthy members with one leader."""
    for i in range(10):
        etcdctl(lab, "put", f"before/{i}", f"value {i}")
    archive = tmp_path / "lab-backup.tar"
    config = host_cluster_config(lab, tmp_path)
    started = time.monotonic()
    done = plasmaboot(lab, "cluster", "backup", "-c", str(config), "--inventory", str(CHAIN),
                      "--state-dir", str(lab.state_dir), "--out", str(archive))  # fmt: skip
    print(done.stdout)
    print(f"cluster backup: {time.monotonic() - started:.1f} s, {archive.stat().st_size} bytes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "plasmaboot: its sqlite store" in done.stdout
    etcdctl(lab, "put", "after/0", "written after the backup")

    for name in NAMES:
        node = lab.inventory.node(name)
        assert node is not None
        lost = ssh(
            lab,
            str(node.provisioning_ip),
            "systemctl stop etcd.service && rm -rf /var/lib/etcd/lab && echo lost",
        )
        assert lost.stdout.strip() == "lost", lost
    started = time.monotonic()
    done = plasmaboot(lab, "cluster", "restore", "--backup", str(archive), "--yes",
                      *lab_ssh_options(), "--verify-config", str(config), "--wait-s", "300",
                      timeout_s=900)  # fmt: skip
    print(done.stdout[-3000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "restored 4 members" in done.stdout
    assert "verified: 4 healthy members (node01, node02, node03, node04), 1 leader" in done.stdout
    print(f"restore of 4 lab members: {time.monotonic() - started:.0f} s")
    assert etcdctl(lab, "get", "before/9", "--print-value-only").strip() == "value 9"
    assert etcdctl(lab, "get", "after/0", "--print-value-only").strip() == ""
