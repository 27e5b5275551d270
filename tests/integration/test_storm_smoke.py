"""The boot-storm benchmark at N=5: the generator and both systems (plasmaboot serve,
dnsmasq + nginx) get every client through DHCP, TFTP, DHCP as iPXE, the scripts, kernel +
initrd and, on plasmaboot, the agent report. Bounded to about a minute."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.integration

STORM = Path(__file__).resolve().parents[2] / "bench" / "storm"
MISSING = [tool for tool in ("dnsmasq", "nginx", "curl", "ip") if shutil.which(tool) is None]


@pytest.fixture
def storm_run() -> Iterator[ModuleType]:
    if MISSING:
        pytest.skip(f"the storm needs {', '.join(MISSING)} (apt-get install dnsmasq nginx curl)")
    if os.geteuid() != 0:
        pytest.skip("the storm creates network namespaces and binds ports 67/68/69: needs root")
    sys.path.insert(0, str(STORM))
    try:
        yield importlib.import_module("run")
    finally:
        sys.path.remove(str(STORM))


def test_storm_five_clients_boot_on_both_systems_with_zero_failures(
    storm_run: ModuleType, tmp_path: Path
) -> None:
    out, plot = tmp_path / "storm.json", tmp_path / "storm.png"
    argv = ["--clients", "5", "--initrd-mib", "4", "--runs", "1", "--deadline", "45",
            "--bandwidth-mib", "64", "--bandwidth-repeats", "1", "--out", str(out),
            "--plot", str(plot)]  # fmt: skip
    assert storm_run.main(argv) == 0

    (cell,) = json.loads(out.read_text())
    assert set(cell["systems"]) == {"plasmaboot", "dnsmasq+nginx"}
    tftp_bytes = {False: 74213, True: 850528}  # undionly.kpxe (BIOS), ipxe.efi (UEFI)
    image_bytes = (8 + 4) << 20
    expected = sum(tftp_bytes[i % 2 == 1] + image_bytes for i in range(5))
    assert cell["bytes"] == expected
    for name, summary in cell["systems"].items():
        assert summary["failures"] == 0, (name, summary["failure_samples"])
        assert len(summary["median_run_booted_at"]) == 5, name
        assert 0 < summary["all_booted_s"] < 45, name
        assert summary["cpu_s"] > 0 and summary["peak_rss_mib"] > 0, name
        for step in ("dhcp", "tftp", "dhcp_ipxe", "script", "kernel", "initrd"):
            assert summary["steps"][step]["p50"] > 0, (name, step)
    assert cell["systems"]["plasmaboot"]["not_installer_booted"] == 0
    assert cell["systems"]["plasmaboot"]["steps"]["agent"]["p50"] > 0
    assert cell["physical_limit_s"] > 0
    assert plot.stat().st_size > 10_000


def test_storm_five_clients_on_two_servers_sharing_postgresql_and_with_stream_watchers(
    storm_run: ModuleType, tmp_path: Path
) -> None:
    """The fleet systems (one and two serves on one PostgreSQL) and 3 event-stream
    watchers on a SQLite serve: every client boots, from whichever server answered; every
    watcher reads every event the storm stored."""
    out, plot = tmp_path / "storm.json", tmp_path / "storm.png"
    argv = ["--clients", "5", "--initrd-mib", "4", "--runs", "1", "--deadline", "45",
            "--bandwidth-mib", "64", "--bandwidth-repeats", "1", "--out", str(out),
            "--plot", str(plot), "--watchers", "3",
            "--systems", "plasmaboot-watched,plasmaboot-pg,plasmaboot-pg-x2"]  # fmt: skip
    assert storm_run.main(argv) == 0

    (cell,) = json.loads(out.read_text())
    systems = cell["systems"]
    for name, summary in systems.items():
        assert summary["failures"] == 0, (name, summary["failure_samples"])
        assert summary["not_installer_booted"] == 0, name
        (served,) = summary["served_by"]
        assert sum(served.values()) == 5, (name, served)
    assert set(systems["plasmaboot-pg-x2"]["served_by"][0]) <= {"10.88.0.1", "10.88.0.2"}
    assert set(systems["plasmaboot-pg"]["served_by"][0]) == {"10.88.0.1"}
    (watched,) = systems["plasmaboot-watched"]["watchers"]
    # each client: pxe-boot and installer-booted at least, each read by all 3 watchers
    assert watched["watchers"] == watched["complete"] == 3, watched
    assert watched["events"] >= 10 and watched["received_min"] == watched["events"], watched
