"""The plasmaboot package inside the rendered flake: nix/plasmaboot.nix and what it builds.

The operator renders into the directory that becomes the flake nixos-anywhere installs
from, so the flake must evaluate there without edits. It therefore carries a copy of the
plasmaboot that rendered it (`plasmaboot/`: pyproject.toml, nix/plasmaboot.nix,
src/plasmaboot) rather than a source URL nobody can fill in: the installed agents then
speak the API of the server that provisions them, and nothing is fetched but nixpkgs.
"""

from __future__ import annotations

from pathlib import Path

from plasmaboot.render.common import Files, RenderError

PACKAGE_DIR = "plasmaboot"
EXPRESSION = f"{PACKAGE_DIR}/nix/plasmaboot.nix"
SOURCE_ROOT = Path(__file__).resolve().parents[3]  # src/plasmaboot/render/ -> the checkout


def package_files(root: Path = SOURCE_ROOT) -> Files:
    """plasmaboot/{pyproject.toml,nix/plasmaboot.nix,src/plasmaboot/...}, bytes as on disk."""
    expression = root / "nix" / "plasmaboot.nix"
    if not expression.is_file() or not (root / "pyproject.toml").is_file():
        raise RenderError(
            f"the nixos target copies plasmaboot's source into the flake, but {root} is not a "
            "plasmaboot source checkout (no nix/plasmaboot.nix or pyproject.toml); run "
            "plasmaboot from a checkout (pip install -e .)"
        )
    files: Files = {
        f"{PACKAGE_DIR}/pyproject.toml": (root / "pyproject.toml").read_bytes(),
        EXPRESSION: expression.read_bytes(),
    }
    for path in sorted((root / "src" / "plasmaboot").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files[f"{PACKAGE_DIR}/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    return files
