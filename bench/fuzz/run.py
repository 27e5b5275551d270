"""Fuzz a running `plasmaboot serve`: mutated DHCP and TFTP packets, then schemathesis over
the OpenAPI documents of both listeners; afterwards real clients must still be served.

`plasmaboot serve` runs in a network namespace of its own, the fuzzer (bench/fuzz/mutate.py)
in another, joined by a veth pair. Per protocol the run checks that the server read every
packet the kernel delivered (sent - the namespace's UDP RcvbufErrors <= read <= sent; the
drops may include a health probe sent while the socket was full) and, for TFTP, that each
one is in /metrics (refused by reason, or a transfer). Then schemathesis
(boot port over HTTP; admin listener over TLS with a write token), then udhcpc gets a
lease, tftp-hpa a file, /health is 200 on both listeners, and the log holds no error and
no traceback. Bounded: COUNT packets or --max-seconds per protocol, whichever comes first.

    sudo .venv/bin/python bench/fuzz/run.py --dhcp 1000000 --tftp 1000000 --examples 100

Prints one JSON document (the figures and each check); exit 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
TAG = f"{os.getpid() % 10000:04d}"
SERVER_NS, CLIENT_NS = f"pbfzs{TAG}", f"pbfzc{TAG}"
SERVER_IF, CLIENT_IF = f"pbfzsv{TAG}", f"pbfzcv{TAG}"
SERVER_IP, CLIENT_IP = "10.233.0.1", "10.233.0.2"
HTTP, ADMIN = 8080, 8443
IPXE = bytes(range(256)) * 256  # 64 KiB


def sh(*cmd: str, check: bool = True, timeout: float = 60) -> str:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout).stdout


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


@contextmanager
def veth_pair() -> Iterator[None]:
    try:
        for ns in (SERVER_NS, CLIENT_NS):
            sh("ip", "netns", "add", ns)
            sh(*in_ns(ns, "ip", "link", "set", "lo", "up"))
        sh("ip", "link", "add", SERVER_IF, "type", "veth", "peer", "name", CLIENT_IF)
        for ns, ifname, address in ((SERVER_NS, SERVER_IF, SERVER_IP),
                                    (CLIENT_NS, CLIENT_IF, CLIENT_IP)):  # fmt: skip
            sh("ip", "link", "set", ifname, "netns", ns)
            sh(*in_ns(ns, "ip", "addr", "add", f"{address}/16", "brd", "+", "dev", ifname))
            sh(*in_ns(ns, "ip", "link", "set", ifname, "up"))
        yield
    finally:
        for ns in (SERVER_NS, CLIENT_NS):
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)


def inventory(work: Path) -> Path:
    nodes = "".join(
        f"  - {{hostname: cp{i}, macs: ['52:54:00:cc:00:0{i}'], profile: cp, "
        f"provisioning_ip: 10.233.0.1{i}, bootstrap: true}}\n"
        for i in (1, 2, 3)
    )
    path = work / "cluster.yaml"
    path.write_text(
        "cluster: {name: fuzz, domain: fuzz.internal}\n"
        "networks:\n"
        "  - name: provisioning\n    vlan: 100\n    subnet: 10.233.0.0/16\n"
        f"    dhcp: {{mode: full, lease_time: 600, interface: {SERVER_IF},\n"
        "           pool: {start: 10.233.1.0, end: 10.233.255.254}}\n"
        f"server: {{provisioning_ip: {SERVER_IP}, http_port: {HTTP}, admin: {{port: {ADMIN}}}}}\n"
        "profiles: {cp: {role: control-plane, services: [chainfire], image: img}}\n"
        "images: {img: {kernel: k, initrd: i}}\n"
        f"nodes:\n{nodes}"
    )
    return path


def metrics(ns: str = CLIENT_NS) -> dict[str, float]:
    """/metrics of the boot port, as {'name{labels}': value}."""
    text = sh(*in_ns(ns, "curl", "-sf", "-m", "10", f"http://{SERVER_IP}:{HTTP}/metrics"))
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def total(values: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in values.items() if k.startswith(prefix))


def rcvbuf_errors(pid: int) -> int:
    sys.path.insert(0, str(HERE))
    from mutate import rcvbuf_errors as read  # the one parser of the counter

    return read(pid)


def fuzz(kind: str, count: int, pid: int, args: argparse.Namespace) -> dict[str, object]:
    before, drops = metrics(), rcvbuf_errors(pid)
    out = sh(
        *in_ns(CLIENT_NS, sys.executable, str(HERE / "mutate.py"), kind, str(count),
               "--target", SERVER_IP, "--source", CLIENT_IP, "--server-pid", str(pid),
               "--max-seconds", str(args.max_seconds), "--seed", str(args.seed),
               # a TFTP request may start a transfer: a gentler start
               "--rate", "5000" if kind == "dhcp" else "1000"),
        timeout=args.max_seconds + 120,
    )  # fmt: skip
    sent = json.loads(out)
    if kind == "tftp":  # transfers the fuzz started end by their timeouts
        deadline = time.monotonic() + 60
        while metrics().get("plasmaboot_tftp_active_transfers", 0) and time.monotonic() < deadline:
            time.sleep(1)
    time.sleep(2)
    after, dropped = metrics(), rcvbuf_errors(pid) - drops
    delivered = sent["sent"] - dropped
    result: dict[str, object] = {**sent, "kernel_drops": dropped}
    if kind == "dhcp":
        events = 'plasmaboot_dhcp_events_total{event="'
        delta = {
            k[len(events) : -2]: int(after[k] - before.get(k, 0))
            for k in after
            if k.startswith(events) and after[k] != before.get(k, 0)
        }
        result.update(read=delta.get("received", 0), counted=delta)
        # the namespace's drops may include a health probe or two sent while the socket
        # was full: the server read at least what was delivered, and no more than was sent
        read = delta.get("received", 0)
        result["ok"] = delivered <= read <= sent["sent"] and not delta.get("handler_errors")
    else:
        refused = 'plasmaboot_tftp_requests_refused_total{reason="'
        delta = {
            k[len(refused) : -2]: int(after[k] - before.get(k, 0))
            for k in after
            if k.startswith(refused) and after[k] != before.get(k, 0)
        }
        transfers = int(
            total(after, "plasmaboot_tftp_transfers_total")
            - total(before, "plasmaboot_tftp_transfers_total")
        )
        result.update(refused=delta, transfers=transfers, counted=sum(delta.values()) + transfers)
        result["ok"] = delivered <= result["counted"] <= sent["sent"]
    return result


def schemathesis(state: Path, examples: int) -> dict[str, object]:
    st = shutil.which("st") or str(Path(sys.prefix, "bin/st"))
    token = sh(sys.executable, "-m", "plasmaboot", "admin", "token", "create", "--name", "fuzz",
               "--scope", "write", "--state-dir", str(state)).strip()  # fmt: skip
    runs = {
        "boot": (CLIENT_NS, f"http://{SERVER_IP}:{HTTP}", []),
        "admin": (SERVER_NS, f"https://127.0.0.1:{ADMIN}",
                  ["--tls-verify", str(state / "pki/ca.crt")]),
    }  # fmt: skip
    results: dict[str, object] = {}
    for name, (ns, base, tls) in runs.items():
        done = subprocess.run(
            in_ns(ns, st, "run", f"{base}/api/openapi.json", "--checks", "not_a_server_error",
                  "--header", f"Authorization: Bearer {token}", "--max-examples", str(examples),
                  "--no-color", "--suppress-health-check", "all", *tls,
                  "--exclude-path", "/api/v1/events/stream"),
            capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        calls = re.findall(r"(\d+) generated", done.stdout)
        results[name] = {"ok": done.returncode == 0, "generated": int(calls[-1]) if calls else None}
        if done.returncode:
            results[name] = {**results[name], "output": done.stdout[-3000:]}  # type: ignore[dict-item]
    return results


def real_clients(work: Path) -> dict[str, bool]:
    lease = subprocess.run(
        in_ns(CLIENT_NS, "udhcpc", "-i", CLIENT_IF, "-n", "-q", "-f", "-t", "5", "-s", "/bin/true"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    got = work / "got.efi"
    subprocess.run(
        in_ns(CLIENT_NS, "tftp", "-m", "binary", SERVER_IP, "-c", "get", "ipxe.efi", str(got)),
        capture_output=True, timeout=60,
    )  # fmt: skip
    health = health_code(CLIENT_NS, f"http://{SERVER_IP}:{HTTP}/health")
    ca = ("--cacert", str(work / "state/pki/ca.crt"))
    admin = health_code(SERVER_NS, f"https://127.0.0.1:{ADMIN}/health", *ca)
    return {
        "udhcpc_lease": "obtained" in lease.stdout + lease.stderr,
        "tftp_hpa_file": got.exists() and got.read_bytes() == IPXE,
        "health_boot_port_200": health == "200",
        "health_admin_listener_200": admin == "200",
    }


def health_code(ns: str, url: str, *curl: str) -> str:
    """The HTTP status of GET `url` from namespace `ns` ('000': no answer)."""
    argv = ["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", *curl, url]
    return sh(*in_ns(ns, *argv), check=False)


def log_problems(log: Path) -> list[str]:
    """Lines that report an error: level error/critical, or a traceback."""
    bad = re.compile(r'"level": "(error|critical)"|Traceback|"exception"')
    return [line[:300] for line in log.read_text(errors="replace").splitlines() if bad.search(line)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dhcp", type=int, default=1_000_000, help="mutated DHCP packets")
    parser.add_argument("--tftp", type=int, default=1_000_000, help="mutated TFTP packets")
    parser.add_argument("--examples", type=int, default=100, help="schemathesis per operation")
    parser.add_argument("--max-seconds", type=float, default=1800, help="per protocol")
    parser.add_argument("--seed", type=int, default=15)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    work = Path(tempfile.mkdtemp(prefix="pb-fuzz-"))
    (work / "tftp").mkdir()
    (work / "tftp/ipxe.efi").write_bytes(IPXE)
    (work / "tftp/undionly.kpxe").write_bytes(IPXE[:4096])
    log = work / "serve.log"
    report: dict[str, object] = {"work": str(work)}
    started = time.monotonic()
    with veth_pair(), log.open("w") as out:
        env = {**os.environ, "PLASMABOOT_LOG_LEVEL": "WARNING"}
        serve = subprocess.Popen(
            in_ns(SERVER_NS, sys.executable, "-m", "plasmaboot", "serve", "-c",
                  str(inventory(work)), "--state-dir", str(work / "state"), "--interface",
                  SERVER_IF, "--tftp-root", str(work / "tftp"), "--log-format", "json"),
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            for _ in range(60):
                if health_code(CLIENT_NS, f"http://{SERVER_IP}:{HTTP}/health") == "200":
                    break
                time.sleep(0.5)
            else:
                raise SystemExit(f"serve did not become healthy: {log.read_text()[-2000:]}")
            report["dhcp"] = fuzz("dhcp", args.dhcp, serve.pid, args)
            report["tftp"] = fuzz("tftp", args.tftp, serve.pid, args)
            report["schemathesis"] = schemathesis(work / "state", args.examples)
            report["real_clients"] = real_clients(work)
            report["serve_alive"] = serve.poll() is None
        finally:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                serve.kill()
    problems = log_problems(log)
    report.update(log_errors=len(problems), log_error_lines=problems[:20])
    report["seconds"] = round(time.monotonic() - started)
    checks = [
        report["dhcp"]["ok"],  # type: ignore[index]
        report["tftp"]["ok"],  # type: ignore[index]
        all(r["ok"] for r in report["schemathesis"].values()),  # type: ignore[attr-defined]
        all(report["real_clients"].values()),  # type: ignore[attr-defined]
        report["serve_alive"],
        not problems,
    ]
    report["ok"] = all(checks)
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
