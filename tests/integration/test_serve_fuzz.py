"""The fast slice of bench/fuzz/run.py: a few thousand mutated DHCP and TFTP packets and a
short schemathesis run against a real `plasmaboot serve` in its own namespace; the server
must read every packet delivered, count each TFTP request in /metrics, log no error, and
still serve udhcpc, tftp-hpa and /health on both listeners. The full run (1,000,000 of
each) is the same command with bigger counts: docs/performance/fuzz.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_serve_survives_a_fuzz_slice_and_counts_every_packet() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    for binary in ("ip", "curl", "udhcpc", "tftp"):
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not installed (Debian packages in the Makefile)")
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/fuzz/run.py"), "--dhcp", "5000", "--tftp", "3000",
         "--examples", "10", "--max-seconds", "120"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["ok"], json.dumps(report, indent=2)
    assert report["dhcp"]["sent"] == 5000 and report["tftp"]["sent"] == 3000
    assert report["dhcp"]["counted"]["decode_errors"] > 0  # mutations reach the parsers
    assert report["tftp"]["refused"]["malformed"] > 0 and report["log_errors"] == 0
