"""The package graph: no import cycle between modules, and every import between packages
points down the layers below (servers above the provisioner above the store; web never
imports serve). Read from the source with `ast`, lazy imports included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first: a package may import only packages listed before it.
LAYERS = (
    "logs", "files", "lifecycle", "inventory", "remote", "cli_common", "boot", "store", "pki",
    "agent", "firstboot", "render", "power", "provision", "install", "cluster", "operations",
    "dhcp", "tftp", "web", "lab", "dashboard", "watch", "serve", "cli", "__main__",
)  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "plasmaboot").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str | None] = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("plasmaboot"):
                module = node.module or ""
                targets = [resolve(f"{module}.{alias.name}") for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names if a.name.startswith("plasmaboot")]
            graph[name] |= {t for t in targets if t and t != name}
    return graph


def package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_package_is_placed_in_a_layer() -> None:
    assert {package(m) for m in modules()} - {""} <= set(LAYERS)


def test_imports_between_packages_only_point_down() -> None:
    upward = [
        f"{src} -> {dst}"
        for src, targets in import_graph().items()
        for dst in targets
        if package(src) and package(dst) and package(src) != package(dst)
        and LAYERS.index(package(dst)) > LAYERS.index(package(src))
    ]  # fmt: skip
    assert upward == []


def test_no_import_cycle_between_modules() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
