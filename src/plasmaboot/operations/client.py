"""The one seam between the CLI's node commands and where they act.

`LocalOperator` is the store and BMCs of this machine (`plasmaboot node ...` on the
server, as always); `RemoteOperator` is a server's admin API (`--server URL`), which runs
the same procedures and power calls on its own store, lifecycle service and BMC
credentials. Both return the same types (NodeRecord, EventRecord, PowerResult, a job's
result), give the procedure's log lines to the same `log`, and raise the same refusals
(OperationError, OperationFailed, InventoryRefused, UnknownNode), so the CLI prints one way
whichever it is given.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

from plasmaboot.operations.adopt import InventoryRefused
from plasmaboot.operations.nodes import NodeOperations, OperationError, OperationFailed
from plasmaboot.operations.power import PowerCommand, PowerResult, power_nodes
from plasmaboot.operations.procedures import JOBS, Options, Site, run_procedure
from plasmaboot.remote import AdminApi, Refused
from plasmaboot.store import EventRecord, NodeRecord, Store, UnknownNode


class OperatorClient(Protocol):
    def list_nodes(self) -> list[NodeRecord]: ...
    def node(self, hostname: str) -> NodeRecord: ...  # UnknownNode
    def events(self, hostname: str, limit: int | None = None) -> list[EventRecord]: ...
    def known(self) -> list[str]: ...  # every node name, for "no such node" checks
    def run(self, procedure: str, hostname: str) -> None: ...  # procedures.REFUSALS
    def job(self, name: str, options: Options) -> Any: ...  # its result; REFUSALS
    def power(
        self, action: PowerCommand, hostnames: list[str], *, pxe_once: bool, parallel: int
    ) -> list[PowerResult]: ...  # OperationError: refused before any BMC was asked
    def close(self) -> None: ...


class LocalOperator:
    """The store here (reads need nothing else); procedures, jobs and power also need the
    inventory and the rest of a Site, and log as they go."""

    def __init__(self, store: Store, site: Site | None = None) -> None:
        self.store, self.site = store, site
        self._ops = site.ops if site is not None else None

    @property
    def ops(self) -> NodeOperations:
        assert self._ops is not None, "procedures need the inventory: pass a Site"
        return self._ops

    def list_nodes(self) -> list[NodeRecord]:
        return self.store.list_nodes()

    def node(self, hostname: str) -> NodeRecord:
        record = self.store.get_node(hostname)
        if record is None:
            raise UnknownNode(hostname)
        return record

    def events(self, hostname: str, limit: int | None = None) -> list[EventRecord]:
        self.node(hostname)
        return self.store.events(hostname, limit=limit)

    def known(self) -> list[str]:
        inventory = [n.hostname for n in self._ops.inventory.nodes] if self._ops else []
        return [r.hostname for r in self.list_nodes()] + inventory

    def run(self, procedure: str, hostname: str) -> None:
        asyncio.run(run_procedure(self.ops, procedure, hostname))

    def job(self, name: str, options: Options) -> Any:
        assert self.site is not None, "jobs need the inventory: pass a Site"
        return asyncio.run(JOBS[name].run(self.site, options))

    def power(
        self, action: PowerCommand, hostnames: list[str], *, pxe_once: bool, parallel: int
    ) -> list[PowerResult]:
        return asyncio.run(
            power_nodes(self.ops, action, hostnames, pxe_once=pxe_once, parallel=parallel)
        )

    def close(self) -> None:
        self.store.close()


class RemoteOperator:
    """A server's admin API (routes in web/operations.py and web/api.py); a procedure's
    log lines arrive with its answer and go to `log` then."""

    def __init__(
        self, api: AdminApi, log: Callable[[str], None] = lambda line: None,
        *, keep_member: bool = False, force: bool = False,
    ) -> None:  # fmt: skip
        self.api, self.log = api, log
        self.options = {"keep_member": keep_member, "force": force}

    def list_nodes(self) -> list[NodeRecord]:
        return [NodeRecord.from_json(n) for n in self.api.get("/api/v1/nodes")]

    def _node_get(self, hostname: str, path: str = "", **params: Any) -> Any:
        try:
            return self.api.get(f"/api/v1/nodes/{quote(hostname, safe='')}{path}", params)
        except Refused as exc:
            if exc.status == 404:
                raise UnknownNode(hostname) from None
            raise

    def node(self, hostname: str) -> NodeRecord:
        return NodeRecord.from_json(self._node_get(hostname))

    def events(self, hostname: str, limit: int | None = None) -> list[EventRecord]:
        found = self._node_get(hostname, "/events", **({"limit": limit} if limit else {}))
        return [EventRecord(**e) for e in found]

    def known(self) -> list[str]:
        return [r.hostname for r in self.list_nodes()]

    def run(self, procedure: str, hostname: str) -> None:
        self._act(f"/api/v1/nodes/{quote(hostname, safe='')}/procedures/{procedure}",
                  self.options)  # fmt: skip

    def job(self, name: str, options: Options) -> Any:
        return JOBS[name].result(self._act(f"/api/v1/procedures/{name}", options.model_dump()))

    def _act(self, path: str, body: dict[str, Any]) -> Any:
        """Run a procedure or job there; its log lines, then its result. A refusal is the
        procedure's own (web/operations.py `refusal`), after the lines logged until then."""
        try:
            done = self.api.post(path, body)
        except Refused as exc:
            for line in exc.body.get("log", []):  # what was done before the refusal
                self.log(line)
            if "problems" in exc.body:
                raise InventoryRefused(exc.body["file"], exc.body["problems"]) from None
            if exc.body.get("outcome") == "failed":
                raise OperationFailed(str(exc)) from None
            fields = [f"{f['field']}: {f['problem']}" for f in exc.body.get("fields", [])]
            raise OperationError("; ".join([str(exc), *fields])) from None
        for line in done["log"]:
            self.log(line)
        return done.get("result")

    def power(
        self, action: PowerCommand, hostnames: list[str], *, pxe_once: bool, parallel: int
    ) -> list[PowerResult]:
        try:
            if action is PowerCommand.STATUS:  # a read: a read token may ask
                params = {"node": hostnames, "pxe_once": pxe_once, "parallel": parallel}
                found = self.api.get("/api/v1/power", params)
            else:
                body = {"action": action.value, "nodes": hostnames, "pxe_once": pxe_once,
                        "parallel": parallel}  # fmt: skip
                found = self.api.post("/api/v1/power", body)
        except Refused as exc:
            raise OperationError(str(exc)) from None
        return [PowerResult(**r) for r in found]

    def close(self) -> None:
        self.api.close()
