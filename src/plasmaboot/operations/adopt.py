"""`plasmaboot node adopt MAC --name HOST --profile P`: a discovered machine becomes a node.

A machine the inventory does not describe is recorded as `discovered` when it asks to
boot (and, where its agent ran, with its hardware facts). Adopting it writes its entry
into cluster.yaml in place (`inventory.editing`: comments and order kept, validated by the
loader before the atomic rename; a refused entry changes nothing and names the field), then
imports the inventory, so the discovered record becomes the node, its events with it.

What the entry holds: the machine's MACs, the host name and profile given, the
provisioning address given (default: the first free one of the provisioning network,
outside the DHCP pool) and the install disk given, or else the one Ironic's agent picks by
default from the reported disks: the smallest non-removable disk of at least 4 GiB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml.comments import CommentedMap

from plasmaboot.inventory import InventoryError, load_inventory, normalize_mac
from plasmaboot.inventory.editing import InventoryFile, mac_list
from plasmaboot.inventory.validation import free_address
from plasmaboot.lifecycle import State
from plasmaboot.operations.nodes import ACTOR, OperationError, unknown_names
from plasmaboot.store import NodeRecord, Store

MIN_ROOT_DISK_BYTES = 4 * 2**30


@dataclass(frozen=True)
class Adoption:
    hostname: str
    discovered_as: str  # the discovered record's name, now the node's
    entry: dict[str, Any]  # what was written into the inventory
    state: str
    inventory: str  # the inventory file it was written into


class InventoryRefused(OperationError):
    """The edited inventory did not validate; nothing was written. Each problem names the
    file and the field."""

    def __init__(self, file: str, problems: list[str]) -> None:
        super().__init__(f"{file} unchanged: {'; '.join(problems)}")
        self.file, self.problems = file, problems


def install_disk(hardware: dict[str, Any] | None) -> str | None:
    """The smallest non-removable reported disk of at least 4 GiB, as /dev/NAME."""
    disks = [d for d in (hardware or {}).get("disks") or []
             if not d.get("removable") and (d.get("size_bytes") or 0) >= MIN_ROOT_DISK_BYTES
             and d.get("name")]  # fmt: skip
    if not disks:
        return None
    smallest = min(disks, key=lambda d: (d["size_bytes"], d["name"]))
    return f"/dev/{smallest['name']}"


def _discovered(store: Store, mac: str) -> NodeRecord:
    try:
        mac = normalize_mac(mac)
    except ValueError as exc:
        raise OperationError(f"MAC: {exc}") from None
    record = store.node_by_mac(mac)
    if record is not None and record.state is State.DISCOVERED:
        return record
    if record is not None:
        raise OperationError(
            f"{mac} is the MAC of {record.hostname} ({record.state.value}), not of a "
            "discovered machine: it is adopted already"
        )
    waiting = [m for r in store.list_nodes() if r.state is State.DISCOVERED for m in r.macs]
    described = unknown_names([mac], waiting)[0]
    raise OperationError(
        f"no discovered machine has MAC {described}; discovered: {', '.join(waiting) or 'none'}"
        " (`plasmaboot node list`). A machine is discovered when it netboots here unknown"
    )


def adopt(
    inventory_file: Path, store: Store, mac: str, hostname: str, profile: str,
    ip: str | None = None, production_ip: str | None = None, disk: str | None = None,
) -> Adoption:  # fmt: skip
    """Write the discovered machine with `mac` into the inventory as `hostname`, then
    import it. Raises OperationError (nothing done), InventoryRefused when the entry (or
    the file) is refused, every problem named by field, nothing written."""
    record = _discovered(store, mac)
    try:
        return _adopt(inventory_file, store, record, hostname, profile, ip, production_ip, disk)
    except InventoryError as exc:
        raise InventoryRefused(
            str(inventory_file), [p.render(exc.source) for p in exc.problems]
        ) from None


def _adopt(
    inventory_file: Path, store: Store, record: NodeRecord, hostname: str, profile: str,
    ip: str | None, production_ip: str | None, disk: str | None,
) -> Adoption:  # fmt: skip
    inv = load_inventory(inventory_file)
    if inv.node(hostname) is not None or store.get_node(hostname) is not None:
        raise OperationError(
            f"--name {hostname}: a node of that name exists already; pick another name"
        )
    if ip is None:
        free = free_address(inv, inv.provisioning)
        if free is None:
            raise OperationError(
                f"no free address in the provisioning network {inv.provisioning.subnet} "
                "outside its DHCP pool; pass --ip"
            )
        ip = str(free)
    entry = CommentedMap(
        [("hostname", hostname), ("macs", mac_list(list(record.macs))), ("profile", profile),
         ("provisioning_ip", ip)]
    )  # fmt: skip
    if production_ip is not None:
        entry["production_ip"] = production_ip
    chosen = disk or install_disk(record.hardware)
    if chosen is not None:
        entry["disk"] = chosen
    edit = InventoryFile(inventory_file)
    edit.nodes().append(entry)
    adopted = edit.save()
    store.import_inventory(adopted, actor=ACTOR)
    node = store.get_node(hostname)
    written = {k: (list(v) if k == "macs" else v) for k, v in entry.items()}
    state = node.state.value if node else "?"
    return Adoption(hostname, record.hostname, written, state, str(inventory_file))
