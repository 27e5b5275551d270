"""Load an inventory file, turning every schema and rule violation into one report."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from plasmaboot.inventory.models import Inventory
from plasmaboot.inventory.validation import Problem, check


class InventoryError(Exception):
    """The inventory cannot be used; `problems` lists every reason at once."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p.render(source)}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the inventory:\n{lines}")


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(top level)"


_FIXES = {
    "missing": "add this field",
    "extra_forbidden": "remove it or correct its spelling (unknown keys are refused)",
}


def _schema_problems(exc: ValidationError) -> list[Problem]:
    errors = exc.errors()
    locs = [tuple(e["loc"]) for e in errors]
    problems = []
    for err in errors:
        loc = tuple(err["loc"])
        # A container error that only echoes a failed child (a tuple left empty after its
        # one bad MAC was rejected) adds noise, not information: keep the child.
        if any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs):
            continue
        # Literal/enum errors carry the allowed values in their message already.
        fix = _FIXES.get(err["type"], "correct the value")
        message = err["msg"].removeprefix("Value error, ")
        problems.append(Problem(_loc_to_path(err["loc"]), err.get("input"), message, fix))
    return problems


def parse_inventory(data: object, source: str = "<inventory>") -> Inventory:
    """Validate already-parsed YAML; raise InventoryError with every problem found."""
    if not isinstance(data, dict):
        raise InventoryError(
            source,
            [Problem("(top level)", type(data).__name__, "not a mapping", "start with cluster:")],
        )
    try:
        inv = Inventory.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(source, _schema_problems(exc)) from None
    problems = check(inv)
    if problems:
        raise InventoryError(source, problems)
    return inv


def load_inventory(path: Path, source: str | None = None) -> Inventory:
    """`source` names the file in problems when `path` is a copy of it (a staged edit)."""
    source = source or str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InventoryError(
            source, [Problem("(file)", source, exc.strerror or str(exc), "check the path")]
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise InventoryError(
            source, [Problem(where, None, f"not valid YAML: {exc}", "fix the YAML syntax")]
        ) from None
    return parse_inventory(data, source)
