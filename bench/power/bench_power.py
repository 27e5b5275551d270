"""Side-by-side latency of plasmaboot's power drivers and installer runner vs the usual tools.

Usage: .venv/bin/python bench/power/bench_power.py [--runs 5] [--ops 20]

* ipmi power_state: IpmiDriver (pyghmi, session kept) vs ``ipmitool -I lanplus`` per call,
  both against ipmi_sim on 127.0.0.1:17123.
* redfish power_state: RedfishDriver (httpx) vs ``curl`` per call, both against
  sushy-emulator (fake driver, HTTPS) on 127.0.0.1:17180.
* installer: InstallRunner streaming 200k lines vs ``subprocess.run(capture_output=True)``.

Each run times ``--ops`` sequential calls; the figure is the median over runs of the
per-call median. Ratios are plasmaboot / peer (below 1 means plasmaboot is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from plasmaboot.install import InstallRunner
from plasmaboot.inventory.models import Bmc
from plasmaboot.pki import init_ca, issue_node_cert
from plasmaboot.power import PowerDriver, driver_for

USER, PASSWORD = "pbpbench", "pbpBenchPw1"
IPMI_PORT, REDFISH_PORT = 17123, 17180
SYSTEM_ID = "8f6a3c2e-5b1d-4e7a-9c0f-0000000000b1"

LAN_CONF = f"""name "pbpbench"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {IPMI_PORT}
    priv_limit admin
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{{chassis}} 0x20"
  user 2 true "{USER}" "{PASSWORD}" admin 10 none md2 md5 straight
"""
EMU = "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
EMU += "mc_enable 0x20\n"
CHASSIS = '#!/bin/sh\n[ "$2" = get ] && echo "power:1"\nexit 0\n'


@contextmanager
def running(argv: list[str], cwd: Path) -> Iterator[None]:
    with (cwd / "server.log").open("wb") as log:
        process = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(2.0)
            yield
        finally:
            process.terminate()
            process.wait(10)


def ipmi_sim(base: Path) -> AbstractContextManager[None]:
    chassis = base / "chassis"
    chassis.write_text(CHASSIS)
    chassis.chmod(0o755)
    (base / "lan.conf").write_text(LAN_CONF.format(chassis=chassis))
    (base / "sim.emu").write_text(EMU)
    (base / "state").mkdir()
    return running(["ipmi_sim", "-c", "lan.conf", "-f", "sim.emu", "-s", "state", "-n"], base)


def sushy(base: Path) -> AbstractContextManager[None]:
    import bcrypt

    init_ca(base, "pbp-bench-bmc")
    tls = issue_node_cert(base, "bmc", None, ["127.0.0.1"], days=1)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (base / "htpasswd").write_text(f"{USER}:{hashed}\n")
    systems = [{"uuid": SYSTEM_ID, "name": "bench", "power_state": "On", "nics": []}]
    (base / "emu.conf").write_text(
        f"SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
        f"SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {REDFISH_PORT}\n"
        f"SUSHY_EMULATOR_AUTH_FILE = '{base}/htpasswd'\nSUSHY_EMULATOR_STATE_DIR = '{base}/st'\n"
        f"SUSHY_EMULATOR_SSL_CERT = '{tls.cert}'\nSUSHY_EMULATOR_SSL_KEY = '{tls.key}'\n"
    )
    emulator = Path(sys.executable).parent / "sushy-emulator"
    return running([str(emulator), "--config", str(base / "emu.conf")], base)


def driver(kind: str, port: int) -> PowerDriver:
    os.environ["PBP_BENCH_PW"] = PASSWORD
    bmc = Bmc.model_validate(
        {"address": "127.0.0.1", "driver": kind, "port": port, "username": USER,
         "password_env": "PBP_BENCH_PW", "system_id": SYSTEM_ID, "verify_tls": False}
    )  # fmt: skip
    return driver_for(bmc, "bench")


async def per_call_ms(call: Callable[[], Awaitable[object]], ops: int) -> float:
    times = []
    for _ in range(ops):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def command(argv: list[str]) -> Callable[[], Awaitable[object]]:
    async def call() -> object:
        return await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True)

    return call


async def compare(
    name: str,
    ours: Callable[[], Awaitable[object]],
    peer: Callable[[], Awaitable[object]],
    runs: int,
    ops: int,
) -> None:
    await ours()
    await peer()
    our_ms = statistics.median([await per_call_ms(ours, ops) for _ in range(runs)])
    peer_ms = statistics.median([await per_call_ms(peer, ops) for _ in range(runs)])
    print(f"| {name} | {our_ms:.2f} | {peer_ms:.2f} | {our_ms / peer_ms:.3f} |")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ops", type=int, default=20)
    args = parser.parse_args()
    print("| case | plasmaboot ms/op | peer ms/op | ratio |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="pbp-bench-") as tmp:
        base = Path(tmp)
        if shutil.which("ipmi_sim") and shutil.which("ipmitool"):
            (base / "ipmi").mkdir()
            with ipmi_sim(base / "ipmi"):
                ipmitool = [
                    "ipmitool",
                    "-I",
                    "lanplus",
                    "-C",
                    "3",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(IPMI_PORT),
                    "-U",
                    USER,
                    "-E",
                    "chassis",
                    "power",
                    "status",
                ]
                os.environ["IPMI_PASSWORD"] = PASSWORD
                ours = driver("ipmi", IPMI_PORT)
                await compare(
                    "ipmi power_state (vs ipmitool)",
                    ours.power_state,
                    command(ipmitool),
                    args.runs,
                    args.ops,
                )
        (base / "redfish").mkdir()
        with sushy(base / "redfish"):
            curl = [
                "curl",
                "-sfk",
                "-u",
                f"{USER}:{PASSWORD}",
                f"https://127.0.0.1:{REDFISH_PORT}/redfish/v1/Systems/{SYSTEM_ID}",
            ]
            ours = driver("redfish", REDFISH_PORT)
            await compare(
                "redfish power_state (vs curl)",
                ours.power_state,
                command(curl),
                args.runs,
                args.ops,
            )
        lines = [sys.executable, "-c", "import sys\nsys.stdout.write('progress line\\n' * 200000)"]
        runner = InstallRunner(max_concurrent=1, timeout_s=60)
        await compare(
            "installer 200k lines (vs subprocess.run)",
            lambda: runner.run("bench", lines, {}, lambda _: None),
            command(lines),
            args.runs,
            max(3, args.ops // 5),
        )


if __name__ == "__main__":
    asyncio.run(main())
