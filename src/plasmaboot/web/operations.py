"""The admin API's node procedures, jobs, power and cluster verify: what `plasmaboot node
...`, `rollout` and `cluster verify` do, run on this server for a remote CLI
(operations/client.py).

Each calls the CLI's own code (operations/procedures.py, `power_nodes`,
`verify_inventory`) on this server's store, lifecycle service, inventory and BMC
credentials, so the lifecycle rules, the checks and the recorded events are the CLI's.
A refusal is the procedure's own words: 409 with `outcome` "refused", 422 with "failed"
when a step ran and failed (a drain command), and the lines it logged until then; an
inventory edit refused also names each `problems` line and the `file`. A job that edits
the inventory (adopt, replace) reloads it here as SIGHUP does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Literal, NoReturn

from aiohttp import web

from plasmaboot.cluster.membership import verify_inventory
from plasmaboot.cluster.verify import report_json
from plasmaboot.operations.adopt import InventoryRefused
from plasmaboot.operations.nodes import OperationError
from plasmaboot.operations.power import DEFAULT_PARALLEL, PowerCommand, power_nodes
from plasmaboot.operations.procedures import (
    JOBS,
    PROCEDURES,
    REFUSALS,
    outcome,
    run_procedure,
    server_operations,
    server_site,
    to_json,
)
from plasmaboot.provision.nodefiles import pki_dir
from plasmaboot.web.api import StrictBody, error, json_response, parse_body
from plasmaboot.web.boot import PROVISIONER, RELOAD


class ProcedureRequest(StrictBody):
    keep_member: bool = False  # reprovision, decommission: leave the membership alone
    force: bool = False  # ... or remove the node even when that breaks quorum


class PowerRequest(StrictBody):
    action: Literal["on", "off", "cycle"]
    nodes: list[str]
    pxe_once: bool = False
    parallel: int = DEFAULT_PARALLEL


async def node_procedure(request: web.Request) -> web.Response:
    """Run a node procedure by name, as `plasmaboot node NAME HOSTNAME` does; its log."""
    hostname, name = request.match_info["hostname"], request.match_info["procedure"]
    procedure = PROCEDURES.get(name)
    if procedure is None:
        raise error(404, f"no procedure named {name!r}; there are {', '.join(PROCEDURES)}")
    body = await parse_body(request, ProcedureRequest)
    provisioner = request.app[PROVISIONER]
    lines: list[str] = []
    ops = server_operations(
        provisioner, lines.append, leaves_cluster=procedure.leaves_cluster,
        keep_member=body.keep_member, force=body.force,
    )  # fmt: skip
    try:
        await run_procedure(ops, name, hostname)
    except REFUSALS as exc:
        refusal(exc, lines)
    record = provisioner.store.get_node(hostname)
    state = record.state.value if record else None
    return json_response({"node": hostname, "procedure": name, "state": state, "log": lines})


def refusal(exc: BaseException, lines: list[str]) -> NoReturn:
    """Answer a procedure's refusal in its own words, with what it logged until then."""
    said = outcome(exc)
    extra = {}
    if isinstance(exc, InventoryRefused):
        extra = {"file": exc.file, "problems": exc.problems}
    raise error(422 if said == "failed" else 409, str(exc), outcome=said, log=lines,
                **extra) from None  # fmt: skip


def job_handler(name: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """`POST /api/v1/procedures/{name}`: the job with the body as its options, as its CLI
    command runs it; `{"procedure", "result", "log"}`. Options that would run what the
    caller gives on this server are refused (400) before anything is done."""
    job = JOBS[name]

    async def run_job(request: web.Request) -> web.Response:
        options = await parse_body(request, job.options)
        refused = job.remote_refusal(options)
        if refused is not None:
            raise error(400, refused, outcome="refused")
        lines: list[str] = []
        site = server_site(
            request.app[PROVISIONER], lines.append, request.app[RELOAD],
            leaves_cluster=job.leaves_cluster, keep_member=getattr(options, "keep_member", False),
            force=getattr(options, "force", False),
        )  # fmt: skip
        try:
            result = await job.run(site, options)
        except REFUSALS as exc:
            refusal(exc, lines)
        return json_response({"procedure": name, "result": to_json(result), "log": lines})

    return run_job


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() in ("1", "true", "yes")


async def power_status(request: web.Request) -> web.Response:
    """`node power status`: ?node= (repeatable; default: every inventory node)."""
    provisioner = request.app[PROVISIONER]
    nodes = request.query.getall("node", []) or [n.hostname for n in provisioner.inventory.nodes]
    try:
        parallel = int(request.query.get("parallel", DEFAULT_PARALLEL))
    except ValueError:
        raise error(400, "parallel must be an integer", field="parallel") from None
    return await _power(request, PowerCommand.STATUS, nodes, _flag(request, "pxe_once"), parallel)


async def power_action(request: web.Request) -> web.Response:
    """`node power on|off|cycle`: every node's BMC, `parallel` at a time; recorded."""
    body = await parse_body(request, PowerRequest)
    action = PowerCommand(body.action)
    return await _power(request, action, body.nodes, body.pxe_once, body.parallel)


async def _power(
    request: web.Request, action: PowerCommand, nodes: list[str], pxe_once: bool, parallel: int
) -> web.Response:
    ops = server_operations(request.app[PROVISIONER], lambda line: None)
    try:
        results = await power_nodes(ops, action, nodes, pxe_once=pxe_once, parallel=parallel)
    except OperationError as exc:
        raise error(409, str(exc), outcome="refused") from None
    return json_response([r.as_json() for r in results])


async def cluster_verify(request: web.Request) -> web.Response:
    """`cluster verify` through the inventory's store URLs and this server's operator
    certificate (?service= repeatable, ?expect_members=, ?min_cert_days=)."""
    provisioner = request.app[PROVISIONER]
    try:
        expect = request.query.get("expect_members")
        expect_members = int(expect) if expect else None
        min_cert_days = float(request.query.get("min_cert_days", "30"))
    except ValueError:
        raise error(400, "expect_members must be an integer, min_cert_days a number") from None
    reports = await asyncio.to_thread(  # the store clients block: not on this loop
        verify_inventory, provisioner.inventory, pki_dir(provisioner.settings.state_dir),
        request.query.getall("service", []), expect_members, min_cert_days,
    )  # fmt: skip
    return json_response([report_json(r) for r in reports])
