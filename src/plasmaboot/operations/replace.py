"""Runbook 7.2, a failed machine replaced by new hardware: `plasmaboot node replace OLD
--mac NEW...`.

The node keeps its identity (host name, addresses, certificate SANs, event history; all
keyed by the host name) and gets the new machine's MACs:

1. checks first, changing nothing: the node is known, no MAC given belongs to another
   node (inventory or store; a machine that only got `discovered` is the new hardware
   itself), the lifecycle allows it, the node has a BMC (unless `provision=False`), the
   edited inventory validates, and leaving the cluster would keep quorum (unless --force);
2. removes the old member from the cluster store (`NodeOperations` with its membership);
3. writes the new MACs into cluster.yaml in place (`inventory.editing`) and imports it, so
   the store's MACs follow; a discovered record of the new machine is folded into the
   node by the import (its events join the node's history) and its hardware facts, the
   new machine's, replace the old machine's;
4. reissues the node certificate with the same SANs and a new key (the old key was on the
   old machine's disk), when there is one;
   (a server reloads its inventory then, so DHCP leases the new MACs their address);
5. moves the node back to enrolled (reprovision, or recommission when it was
   decommissioned) and provisions it the way `node provision` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from plasmaboot.inventory import InventoryError, normalize_mac
from plasmaboot.inventory.editing import InventoryFile, StagedInventory, mac_list
from plasmaboot.lifecycle import TRANSITIONS, Event, IllegalTransition, State
from plasmaboot.operations.nodes import ACTOR, NodeOperations, OperationError
from plasmaboot.pki import PKIError, node_cert_paths, renew


@dataclass
class Replace:
    ops: NodeOperations
    inventory_file: Path
    pki: Path
    provision: bool = True  # False: move the identity only; `node provision` later
    # Called once the edited inventory is in place and imported, before the certificate
    # and the boot: a server reloads its inventory there (procedures.Site.edited).
    edited: Callable[[], None] = lambda: None

    def _macs(self, hostname: str, macs: Sequence[str]) -> list[str]:
        new: list[str] = []
        for mac in macs:
            try:
                new.append(normalize_mac(mac))
            except ValueError as exc:
                raise OperationError(f"--mac: {exc}") from None
        new = list(dict.fromkeys(new))
        if not new:
            raise OperationError("give the new machine's MAC with --mac (once per NIC)")
        if set(new) == set(self.ops._spec(hostname).macs):
            raise OperationError(
                f"{', '.join(new)} is already {hostname}'s: nothing to move; to reinstall the "
                f"same machine use `plasmaboot node reprovision {hostname}`"
            )
        for mac in new:
            spec = self.ops.inventory.node_by_mac(mac)
            record = self.ops.store.node_by_mac(mac)
            owner = spec.hostname if spec is not None else None
            if owner is None and record is not None and record.state is not State.DISCOVERED:
                owner = record.hostname if record.in_inventory else None
            if owner is not None and owner != hostname:
                raise OperationError(
                    f"--mac {mac} is already {owner}'s MAC; a MAC belongs to one node: check "
                    f"the new machine's label, or take it from {owner} first"
                )
        return new

    def _event(self, hostname: str) -> Event | None:
        """What brings the node back to enrolled, where provisioning starts."""
        state = self.ops._record(hostname).state
        if state in (State.ENROLLED, State.BOOT_FAILED, State.INSTALL_FAILED):
            return None  # `provision` retries a failed boot or install itself
        event = Event.RECOMMISSION if state is State.DECOMMISSIONED else Event.REPROVISION
        if (event, state) not in TRANSITIONS:
            raise IllegalTransition(hostname, state, Event.REPROVISION)
        return event

    def _stage(self, hostname: str, macs: list[str]) -> StagedInventory:
        """cluster.yaml with the node's new MACs, validated, not yet in place."""
        try:
            edit = InventoryFile(self.inventory_file)
            entry = edit.node(hostname)
            if entry is None:
                raise OperationError(f"{hostname} is not in {self.inventory_file}; add it first")
            entry["macs"] = mac_list(macs)
            return edit.stage()
        except InventoryError as exc:
            raise OperationError(
                f"the edited inventory was refused, nothing changed: {exc}"
            ) from None

    def _certificate(self, hostname: str) -> str:
        if not node_cert_paths(self.pki, hostname).cert.exists():
            return "none yet: issued at install"
        try:
            renew(self.pki, hostname, rotate_key=True)
        except PKIError as exc:
            raise OperationError(
                f"{hostname}: reissuing its certificate failed: {exc}. The MACs are moved "
                f"already: fix it, then `plasmaboot pki renew --pki-dir {self.pki} --hostname "
                f"{hostname} --rotate-key` and `plasmaboot node provision {hostname}`"
            ) from None
        return "reissued, same SANs, new key"

    async def run(self, hostname: str, macs: Sequence[str]) -> None:
        ops = self.ops
        record = ops._record(hostname)
        spec = ops._spec(hostname)
        new = self._macs(hostname, macs)
        event = self._event(hostname)
        if self.provision:
            ops.power(spec)  # no BMC: refused here, before anything changes
        member = record.state not in (State.ENROLLED, State.DISCOVERED)
        if member:
            await ops.check_leave(hostname)
        staged = self._stage(hostname, new)
        discovered = [r for r in map(ops.store.node_by_mac, new)
                      if r is not None and r.state is State.DISCOVERED]  # fmt: skip
        if member:
            try:
                await ops.leave_cluster(hostname)
            except BaseException:
                staged.discard()
                raise
        staged.commit()
        ops.inventory = staged.inventory
        ops.store.import_inventory(staged.inventory, actor=ACTOR)
        self.edited()
        facts = next((r.hardware for r in discovered if r.hardware), None)
        if facts is not None:  # the new machine's, reported while it was unknown
            ops.store.set_hardware(hostname, facts)
        certificate = self._certificate(hostname)
        ops.store.record(
            hostname, "replaced", ACTOR,
            {"old_macs": list(spec.macs), "new_macs": new, "certificate": certificate,
             "discovered_as": [r.hostname for r in discovered]},
        )  # fmt: skip
        ops.log(f"{hostname}: MACs {', '.join(spec.macs)} -> {', '.join(new)} "
                f"({self.inventory_file} and the store); certificate {certificate}")  # fmt: skip
        if event is not None:
            ops._fire(hostname, event, {"replace": True})
        if self.provision:
            await ops.provision(hostname)
