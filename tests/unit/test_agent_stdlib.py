"""The installer agent needs python3 and nothing else: the installer image copies only
`plasmaboot/__init__.py` and `plasmaboot/agent/` into its initrd."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import plasmaboot
import plasmaboot.agent

# The interpreter the venv was made from: it has none of the venv's packages.
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
AGENT_MODULES = sorted(
    f"plasmaboot.agent.{path.stem}"
    for path in Path(plasmaboot.agent.__file__).parent.glob("*.py")
    if path.stem not in ("__init__", "__main__")
)

# Imports every agent module, then lists what the imports loaded that is neither the
# standard library nor the copied plasmaboot files. Run with -I -S: no environment, no
# site-packages on the path, so a third-party import fails even where one is installed.
PROBE = """
import sys
before = set(sys.modules)
sys.path.insert(0, sys.argv[1])
import importlib
for name in sys.argv[2:]:
    importlib.import_module(name)
import plasmaboot
assert plasmaboot.__file__.startswith(sys.argv[1]), plasmaboot.__file__
foreign = sorted(
    name for name in set(sys.modules) - before
    if name.partition(".")[0] not in sys.stdlib_module_names | {"plasmaboot"}
)
print(" ".join(foreign) or "stdlib only")
"""


def image_copy(tmp_path: Path) -> Path:
    """What the installer image holds of plasmaboot."""
    source = Path(plasmaboot.__file__).parent
    (tmp_path / "plasmaboot").mkdir()
    shutil.copy(source / "__init__.py", tmp_path / "plasmaboot/__init__.py")
    shutil.copytree(
        source / "agent",
        tmp_path / "plasmaboot/agent",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return tmp_path


def test_every_agent_module_imports_from_the_image_copy_with_the_stdlib_only(
    tmp_path: Path,
) -> None:
    assert {
        "plasmaboot.agent.cmdline",
        "plasmaboot.agent.facts",
        "plasmaboot.agent.client",
        "plasmaboot.agent.cli",
    } <= set(AGENT_MODULES)
    result = subprocess.run(
        [str(BASE_PYTHON), "-I", "-S", "-c", PROBE, str(image_copy(tmp_path)), *AGENT_MODULES],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "stdlib only"


def test_the_image_copy_runs_as_a_module(tmp_path: Path) -> None:
    """`python3 -m plasmaboot.agent` from the copy alone: --print-facts reads this machine."""
    root = image_copy(tmp_path)
    result = subprocess.run(
        [str(BASE_PYTHON), "-S", "-m", "plasmaboot.agent", "--print-facts"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
    )
    assert result.returncode == 0, result.stderr
    assert '"memory_bytes"' in result.stdout and '"nics"' in result.stdout
