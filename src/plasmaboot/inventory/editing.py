"""Changes plasmaboot itself makes to cluster.yaml (`node adopt`, `node replace`).

The file is the operator's: it is edited in place, its comments, key order and quoting
kept (ruamel.yaml, round-trip mode), and only the lines the change touches differ. ruamel
rewrites a few things it reads (a flow list wrapped by hand becomes one line), so the
edited document is dumped twice, before and after the change, and only the lines that
differ between those two dumps replace lines of the file; when they cannot be placed
exactly, the whole dump is written (still the same comments and order).

Nothing is saved unchecked: the new text goes to a temporary file beside the inventory,
the inventory loader validates it (every problem named by field, against the real file's
name), and only then does an atomic rename put it in place. A refused change leaves the
file as it was.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from plasmaboot.files import fsync_dir
from plasmaboot.inventory.loader import InventoryError, load_inventory
from plasmaboot.inventory.models import Inventory
from plasmaboot.inventory.validation import Problem


def _yaml() -> YAML:
    rt = YAML()  # round trip
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)  # the examples' style: "  - name: ..."
    rt.width = 4096  # never fold a long line the operator wrote on one
    return rt


def _dump(rt: YAML, data: Any) -> str:
    out = io.StringIO()
    rt.dump(data, out)
    return out.getvalue()


def mac_list(macs: list[str]) -> CommentedSeq:
    """MACs as the inventory writes them, `["52:54:00:12:34:56"]`: quoted, because YAML
    1.1 readers (PyYAML, the loader) take six digit pairs for a base-60 number."""
    seq = CommentedSeq(DoubleQuotedScalarString(mac) for mac in macs)
    seq.fa.set_flow_style()
    return seq


def _merge(original: str, before: str, after: str) -> str:
    """`after`, with every line the change left alone taken from `original` as written."""
    orig, base, new = (text.splitlines(keepends=True) for text in (original, before, after))
    place: dict[int, int] = {}  # line of `base` -> the same line in `orig`
    for tag, i1, i2, j1, _ in SequenceMatcher(None, base, orig, autojunk=False).get_opcodes():
        if tag == "equal":
            place.update((i1 + k, j1 + k) for k in range(i2 - i1))
    hunks = [op for op in SequenceMatcher(None, base, new, autojunk=False).get_opcodes()
             if op[0] != "equal"]  # fmt: skip
    merged = list(orig)
    for _, i1, i2, j1, j2 in reversed(hunks):
        if i2 > i1:  # lines replaced or deleted: all of them must be where base has them
            start = place.get(i1)
            if start is None or any(place.get(i) != start + i - i1 for i in range(i1, i2)):
                return after
            end = start + i2 - i1
        elif i1 == len(base):
            start = end = len(orig)
        elif i1 in place:
            start = end = place[i1]
        else:
            return after
        merged[start:end] = new[j1:j2]
    text = "".join(merged)
    return text if yaml.safe_load(text) == yaml.safe_load(after) else after


@dataclass
class StagedInventory:
    """The edited inventory, validated, in a temporary file beside the real one."""

    path: Path
    temp: Path
    inventory: Inventory

    def commit(self) -> None:
        os.replace(self.temp, self.path)
        fsync_dir(self.path.parent)

    def discard(self) -> None:
        self.temp.unlink(missing_ok=True)


class InventoryFile:
    """cluster.yaml opened for one change: edit `data` (ruamel's round-trip document),
    then `stage()` to validate it and `commit()` the result."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.original = path.read_text()
        except OSError as exc:
            raise InventoryError(
                str(path),
                [Problem("(file)", str(path), exc.strerror or str(exc), "check the path")],
            ) from None
        self.yaml = _yaml()
        try:
            self.data = self.yaml.load(self.original)
        except YAMLError as exc:
            raise InventoryError(
                str(path),
                [Problem("(file)", None, f"not valid YAML: {exc}", "fix the YAML syntax")],
            ) from None
        if not isinstance(self.data, CommentedMap):
            raise InventoryError(
                str(path), [Problem("(top level)", None, "not a mapping", "start with cluster:")]
            )
        self.unchanged = _dump(self.yaml, self.data)

    def nodes(self) -> CommentedSeq:
        """The `nodes:` list (made, at the end, when the file has none)."""
        nodes = self.data.get("nodes")
        if not isinstance(nodes, CommentedSeq):
            nodes = self.data["nodes"] = CommentedSeq(nodes or ())
        return nodes

    def node(self, hostname: str) -> CommentedMap | None:
        return next((n for n in self.nodes() if n.get("hostname") == hostname), None)

    def text(self) -> str:
        return _merge(self.original, self.unchanged, _dump(self.yaml, self.data))

    def stage(self) -> StagedInventory:
        """Write the edited text beside the file and validate it with the loader; raises
        InventoryError (every problem, named against this file) and leaves nothing."""
        mode = self.path.stat().st_mode & 0o777
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        temp = Path(name)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w") as handle:
                handle.write(self.text())
                handle.flush()
                os.fsync(handle.fileno())
            inventory = load_inventory(temp, source=str(self.path))
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return StagedInventory(self.path, temp, inventory)

    def save(self) -> Inventory:
        """Validate and put the edited file in place at once."""
        staged = self.stage()
        staged.commit()
        return staged.inventory
