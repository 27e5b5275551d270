"""The storm's clients: N simulated PXE machines in one asyncio process in the client netns.

Each client walks the real boot sequence and times every step: DHCP as PXE firmware
(option 93: BIOS or UEFI), TFTP of the iPXE binary it was offered, DHCP again as iPXE
(user-class "iPXE" + option 175), the HTTP entry and node scripts, kernel + initrd, and the
agent lookup + report. Every step has a timeout and a failed client is counted, never
retried forever. Run it inside the client namespace:

    python bench/storm/client.py PLAN.json RESULT.json
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sys
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wire import (
    ACK,
    DISCOVER,
    NAK,
    OFFER,
    REQUEST,
    DhcpPort,
    DhcpReply,
    dhcp_packet,
    http_request,
    open_dhcp_port,
    tftp_get,
)

STEP_TIMEOUT_S = {"dhcp": 30.0, "tftp": 60.0, "dhcp_ipxe": 30.0, "script": 30.0, "agent": 30.0}
IPXE_OPTION_175 = bytes([19, 1, 1, 17, 1, 1])  # iPXE feature flags: HTTP, PXE extensions


@dataclass
class ClientSpec:
    mac: str
    uefi: bool
    windowsize: int | None  # None: the firmware does not ask for RFC 7440


@dataclass
class ClientResult:
    mac: str
    uefi: bool
    steps: dict[str, float] = field(default_factory=dict)
    bytes: int = 0
    booted_at: float | None = None
    error: str | None = None
    served_by: str | None = None  # the server whose DHCP answered iPXE (its scripts, images)


class AddressBatcher:
    """Gives the client veth each leased address, many per `ip -batch` call: 1,000 `ip`
    processes would cost the machine more than the storm itself."""

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.pending: list[tuple[str, asyncio.Future[None]]] = []
        self.flush_task: asyncio.Task[None] | None = None

    async def add(self, ip: str) -> None:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((ip, future))
        if self.flush_task is None:
            self.flush_task = asyncio.create_task(self._flush())
        await future

    async def _flush(self) -> None:
        await asyncio.sleep(0.02)
        batch, self.pending, self.flush_task = self.pending, [], None
        script = "".join(f"address add {ip}/32 dev {self.interface}\n" for ip, _ in batch)
        proc = await asyncio.create_subprocess_exec(
            "ip", "-force", "-batch", "-", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await proc.communicate(script.encode())
        for _, future in batch:
            future.set_result(None)


async def dhcp_exchange(
    port: DhcpPort, mac: str, options: dict[int, bytes], expect_bootfiles: Collection[str]
) -> tuple[str, str, str]:
    """DISCOVER -> OFFER -> REQUEST -> ACK with the first server that offers; returns
    (address, next-server, boot file). Re-sends every 2 s (shorter than RFC 2131's 4 s so
    a lost packet costs little in a timed storm)."""
    hw = bytes.fromhex(mac.replace(":", ""))
    xid = random.getrandbits(32)
    queue: asyncio.Queue[DhcpReply] = asyncio.Queue()
    port.waiters[xid] = queue
    try:
        offer = await _ask(port, queue, xid, (DISCOVER, hw, options), OFFER)
        request = {**options, 50: _ip(offer.yiaddr), 54: _ip(offer.server_id)}
        ack = await _ask(port, queue, xid, (REQUEST, hw, request), ACK)
    finally:
        del port.waiters[xid]
    if ack.bootfile not in expect_bootfiles:
        raise ValueError(f"DHCP offered boot file {ack.bootfile!r}, expected {expect_bootfiles}")
    return ack.yiaddr, ack.siaddr or ack.server_id, ack.bootfile


def _ip(text: str) -> bytes:
    return bytes(int(part) for part in text.split("."))


async def _ask(
    port: DhcpPort,
    queue: asyncio.Queue[DhcpReply],
    xid: int,
    message: tuple[int, bytes, dict[int, bytes]],
    want: int,
) -> DhcpReply:
    kind, hw, options = message
    while True:
        port.send(dhcp_packet(kind, xid, hw, options))
        try:
            while True:
                reply = await asyncio.wait_for(queue.get(), 2.0)
                if reply.kind == want:
                    return reply
                if reply.kind == NAK:
                    raise ValueError("DHCP NAK")
        except TimeoutError:
            continue


def pxe_options(spec: ClientSpec) -> dict[int, bytes]:
    arch = 7 if spec.uefi else 0
    return {
        93: arch.to_bytes(2, "big"),
        94: bytes([1, 3, 10]),
        60: f"PXEClient:Arch:{arch:05d}:UNDI:003016".encode(),
        55: bytes([1, 3, 6, 43, 60, 66, 67, 128, 129, 175]),
    }


def ipxe_options(spec: ClientSpec) -> dict[int, bytes]:
    return {**pxe_options(spec), 77: b"iPXE", 175: IPXE_OPTION_175}


async def boot_one(
    spec: ClientSpec, plan: dict[str, Any], port: DhcpPort, addresses: AddressBatcher, t0: float
) -> ClientResult:
    result = ClientResult(spec.mac, spec.uefi)
    step = "start"

    async def timed(name: str, coro: Any) -> Any:
        nonlocal step
        step = name
        started = time.monotonic()
        value = await asyncio.wait_for(coro, STEP_TIMEOUT_S.get(name, plan["transfer_timeout_s"]))
        result.steps[name] = time.monotonic() - started
        return value

    try:
        bootfile = "ipxe.efi" if spec.uefi else "undionly.kpxe"
        pxe = dhcp_exchange(port, spec.mac, pxe_options(spec), {bootfile})
        ip, server, _ = await timed("dhcp", pxe)
        await addresses.add(ip)
        result.bytes += await timed(
            "tftp", tftp_get(ip, server, bootfile, blksize=1468, windowsize=spec.windowsize)
        )
        ipxe = dhcp_exchange(port, spec.mac, ipxe_options(spec), plan["entry_urls"])
        _, _, entry = await timed("dhcp_ipxe", ipxe)
        result.served_by = host_port(entry)[0]
        script = await timed("script", fetch_scripts(ip, entry, spec.mac))
        result.bytes += await timed("kernel", fetch_file(ip, script["kernel"]))
        result.bytes += await timed("initrd", fetch_file(ip, script["initrd"]))
        if plan["agent"]:
            await timed("agent", agent_report(ip, entry, spec.mac, script["token"]))
        else:
            result.steps["agent"] = 0.0  # the baseline has no agent API
        result.booted_at = time.monotonic() - t0
    except Exception as exc:  # counted, not raised: one client never stops the storm
        reason = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        result.error = f"{step}: {reason}"
    return result


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 80


async def fetch_scripts(ip: str, entry_url: str, mac: str) -> dict[str, str]:
    """From the server whose DHCP answered iPXE (its entry URL)."""
    host, port = host_port(entry_url)
    entry = await http_request(ip, host, port, "/boot/ipxe/boot.ipxe")
    if entry.status != 200 or b"#!ipxe" not in entry.body:
        raise ValueError(f"boot.ipxe answered {entry.status}")
    node = await http_request(ip, host, port, f"/boot/ipxe/node/{mac}.ipxe")
    text = node.body.decode()
    kernel = re.search(r"set kernel-url (\S+)", text)
    initrd = re.search(r"set initrd-url (\S+)", text)
    token = re.search(r"plasmaboot\.token=(\S+)", text)
    if node.status != 200 or not (kernel and initrd and token):
        raise ValueError(f"node script ({node.status}) lacks kernel, initrd or token")
    return {"kernel": kernel[1], "initrd": initrd[1], "token": token[1]}


async def fetch_file(ip: str, url: str) -> int:
    path = "/" + url.split("/", 3)[3]
    reply = await http_request(ip, *host_port(url), path, keep_body=False)
    if reply.status != 200:
        raise ValueError(f"{path} answered {reply.status}")
    return reply.length


async def agent_report(ip: str, entry_url: str, mac: str, boot_token: str) -> None:
    host, port = host_port(entry_url)
    json_type = {"Content-Type": "application/json"}
    lookup = await http_request(
        ip, host, port, "/api/v1/agent/lookup", method="POST",
        body=json.dumps({"mac": mac}).encode(),
        headers={**json_type, "Authorization": f"Bearer {boot_token}"},
    )  # fmt: skip
    if lookup.status != 200:
        raise ValueError(f"agent lookup answered {lookup.status}: {lookup.body[:200]!r}")
    session = json.loads(lookup.body)["token"]
    report = await http_request(
        ip, host, port, "/api/v1/agent/report", method="POST",
        body=json.dumps({"stage": "installer-booted"}).encode(),
        headers={**json_type, "Authorization": f"Bearer {session}"},
    )  # fmt: skip
    if report.status != 200:
        raise ValueError(f"agent report answered {report.status}: {report.body[:200]!r}")


async def run_storm(plan: dict[str, Any]) -> dict[str, Any]:
    """Every client powers on within `spread_s` of the shared wall-clock `start_at` (so
    several client processes share one time axis), bounded by `deadline_s`."""
    port = await open_dhcp_port(plan["interface"])
    addresses = AddressBatcher(plan["interface"])
    specs = [ClientSpec(**c) for c in plan["clients"]]
    await asyncio.sleep(max(0.0, plan["start_at"] - time.time()))
    t0 = time.monotonic() - (time.time() - plan["start_at"])

    async def delayed(spec: ClientSpec, delay: float) -> ClientResult:
        await asyncio.sleep(delay)
        return await boot_one(spec, plan, port, addresses, t0)

    rng = random.Random(plan.get("seed", 1))
    tasks = [asyncio.create_task(delayed(s, rng.uniform(0, plan["spread_s"]))) for s in specs]
    done, pending = await asyncio.wait(tasks, timeout=plan["deadline_s"])
    for task in pending:
        task.cancel()
    results = [t.result() for t in done]
    finished = {r.mac for r in results}
    results += [
        ClientResult(s.mac, s.uefi, error="global deadline") for s in specs if s.mac not in finished
    ]
    return {"clients": [asdict(r) for r in results]}


async def measure_bandwidth(plan: dict[str, Any]) -> dict[str, Any]:
    """`readers` parallel GETs of one big file through the same client code and veth: what
    the wire (plus this client's copy into user space) can move, the storm's physical limit."""
    path, ip = plan["path"], plan["local_ip"]

    async def read() -> int:
        reply = await http_request(ip, plan["server"], plan["http_port"], path, keep_body=False)
        return reply.length

    await asyncio.sleep(max(0.0, plan["start_at"] - time.time()))
    sizes = await asyncio.gather(*(read() for _ in range(plan["readers"])))
    return {"bytes": sum(sizes), "start": plan["start_at"], "end": time.time()}


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    job = measure_bandwidth if plan.get("mode") == "bandwidth" else run_storm
    Path(sys.argv[2]).write_text(json.dumps(asyncio.run(job(plan))))


if __name__ == "__main__":
    main()
