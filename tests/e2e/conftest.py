"""Shared by the QEMU lab tests: the lab netboot image, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from plasmaboot.lab.image import build_lab_image

    out = tmp_path_factory.mktemp("lab-assets")
    build_lab_image(out, work_dir=Path.home() / ".cache" / "plasmaboot" / "lab-image")
    return out
